"""Credentials out of every text farmkit renders: the API's answers and log lines, a sandbox's error, and
the errors a run records in FMEL and the registry.

A :class:`Redactor` knows the secrets of an environment (the values of variables named like secrets:
``APCA_API_SECRET_KEY``, ``APCA_API_KEY_ID``, ``*_TOKEN``, ``*PASSWORD*``, ``FIREBASE_API_KEY``...;
passwords in URLs such as ``FARM_REDIS``; what the files ``GOOGLE_APPLICATION_CREDENTIALS`` and
``KUBECONFIG`` name hold; the pod's Kubernetes token) and replaces each with ``***``. Whatever the
environment, it also masks what looks like a credential: bearer tokens, JWTs, private-key blocks,
Google API keys and the password of any ``scheme://user:password@host``.

    redact = Redactor.from_env()                # os.environ, read once
    redact.text(f"Alpaca refused {key}")        # 'Alpaca refused ***'
    logging.getLogger("farmkit.api").addFilter(RedactingFilter(redact))
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

import yaml

MASK = "***"
MIN_LENGTH = 8      # shorter values ("1", "on", a test's "t") are no secret worth mangling every text for

# Variables whose value is a secret. FARM_API_AUTH (local | firebase) and the like are not.
_SECRET_NAME = re.compile(r"SECRET|TOKEN|PASSWORD|PASSWD|PASSPHRASE|PRIVATE|API_?KEY|ACCESS_KEY|_KEY$|_KEY_ID$"
                          r"|CREDENTIAL|COOKIE|SIGNATURE|^AWS_SESSION|^FIREBASE_.*KEY", re.IGNORECASE)
# Variables naming a file of credentials, read for the secrets in it.
_CREDENTIAL_FILES = ("GOOGLE_APPLICATION_CREDENTIALS", "KUBECONFIG", "CLOUDSDK_AUTH_CREDENTIAL_FILE_OVERRIDE")
SERVICE_ACCOUNT_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
_FILE_KEYS = re.compile(r"private_key|secret|token|password|client-key-data|client_key|refresh|access", re.IGNORECASE)
_MAX_FILE = 1 << 20

_PATTERNS = [
    (re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(-----END [A-Z0-9 ]*PRIVATE KEY-----|$)", re.DOTALL), MASK),
    (re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]{8,}"), rf"\1{MASK}"),
    (re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"), MASK),
    (re.compile(r"\bAIza[0-9A-Za-z_-]{30,}"), MASK),
    (re.compile(r"\b([a-z][a-z0-9+.-]*://[^:/@\s'\"]*):([^@/\s'\"]+)@"), rf"\1:{MASK}@"),
    (re.compile(r"(?i)\b((?:password|passwd|pwd|token|access_token|api_?key|client_secret|secret_key)=)[^&\s'\"]+"),
     rf"\1{MASK}"),
]


def secret_name(name: str) -> bool:
    """Whether a variable of this name holds a secret (``APCA_API_SECRET_KEY``: yes; ``FARM_HOME``: no)."""
    return bool(_SECRET_NAME.search(name))


def _url_password(value: str) -> str | None:
    if "://" not in value or "@" not in value:
        return None
    try:
        password = urlsplit(value).password
    except ValueError:
        return None
    return unquote(password) if password else None


def _file_secrets(path: Path) -> set[str]:
    try:
        if not path.is_file() or path.stat().st_size > _MAX_FILE:
            return set()
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return set()
    try:
        data = yaml.safe_load(text)      # JSON (a service-account key) is YAML too; so is a kubeconfig
    except yaml.YAMLError:
        data = None
    found: set[str] = set()

    def walk(value, key: str = ""):
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, str(k))
        elif isinstance(value, list):
            for v in value:
                walk(v, key)
        elif isinstance(value, str) and _FILE_KEYS.search(key):
            found.add(value)
    walk(data)
    if data is None or isinstance(data, str):
        found.add(text.strip())
    return found


def _pieces(value: str) -> set[str]:
    """A secret and the parts of it that may turn up alone: each line of a private key's body."""
    parts = {value.strip()}
    if "PRIVATE KEY" in value:
        parts |= {line.strip() for line in value.replace("\\n", "\n").splitlines()
                  if line.strip() and not line.startswith("-----")}
    return {p for p in parts if len(p) >= MIN_LENGTH}


def secret_values(environ: Mapping[str, str] | None = None, *, token_file: Path = SERVICE_ACCOUNT_TOKEN) -> set[str]:
    """The secrets of an environment: what :class:`Redactor` hides."""
    environ = os.environ if environ is None else environ
    found: set[str] = set()
    for name, value in environ.items():
        if not isinstance(value, str) or not value:
            continue
        if name in _CREDENTIAL_FILES:
            found |= _file_secrets(Path(value))
            continue
        if secret_name(name):
            found.add(value)
        password = _url_password(value)
        if password:
            found.add(password)
    if token_file.is_file():
        found |= _file_secrets(token_file)
    return {piece for value in found for piece in _pieces(value)}


class Redactor:
    """Replaces known secrets and credential-shaped text with ``***``.

    >>> Redactor(["s3cret-value"]).text("key s3cret-value refused")
    'key *** refused'
    """

    def __init__(self, secrets: Iterable[str] = ()):
        self.values = frozenset(s for s in secrets if isinstance(s, str) and len(s) >= MIN_LENGTH)
        forms: set[str] = set()
        for secret in self.values:
            # as written, URL-quoted, and escaped inside a JSON or Python string
            forms |= {secret, quote(secret, safe=""), json.dumps(secret)[1:-1], repr(secret)[1:-1]}
        self.secrets = tuple(sorted((f for f in forms if len(f) >= MIN_LENGTH), key=len, reverse=True))
        self._bytes = tuple(s.encode() for s in self.secrets)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, extra: Iterable[str | None] = ()) -> "Redactor":
        """The secrets of ``environ`` (default ``os.environ``) and ``extra`` ones: a token, or a URL
        (of which the password is the secret)."""
        values = secret_values(environ)
        for value in extra:
            if value and "://" in value:
                values |= {p for p in [_url_password(value)] if p}
            elif value:
                values |= _pieces(value)
        return cls(values)

    def union(self, other: "Redactor") -> "Redactor":
        return Redactor(self.values | other.values)

    def text(self, text: str) -> str:
        if not text:
            return text
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        for pattern, replacement in _PATTERNS:
            text = pattern.sub(replacement, text)
        return text

    __call__ = text

    def known(self, body: bytes) -> bytes:
        """Only the known secrets, in bytes, each replaced by as many ``*``: lengths stay as they were."""
        for secret in self._bytes:
            if secret in body:
                body = body.replace(secret, b"*" * len(secret))
        return body

    def value(self, value):
        """``value`` with every string in it redacted (dicts and lists are walked)."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {k: self.value(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.value(v) for v in value]
        return value


def redact(text: str, environ: Mapping[str, str] | None = None) -> str:
    """``text`` without the secrets of ``environ`` (default ``os.environ``) or anything shaped like one."""
    return Redactor.from_env(environ).text(text)


class RedactingFilter(logging.Filter):
    """A logging filter that redacts each record's message, traceback and stack before any handler sees it."""

    def __init__(self, redactor: Redactor):
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:   # noqa: BLE001 - a record whose arguments do not format stays as it is
            return True
        record.msg, record.args = self.redactor.text(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redactor.text(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redactor.text(record.stack_info)
        return True
