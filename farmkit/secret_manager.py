"""Secrets from Google Secret Manager, read over its REST API with the process's own credentials.

Memorystore with AUTH and in-transit encryption needs an auth string and the instance's CA
certificate; Terraform keeps both in Secret Manager (``terraform output redis_url``) and the
leaderboard's ``FARM_REDIS`` names them instead of carrying them::

    FARM_REDIS=rediss://10.30.0.3:6378/0?auth_secret=projects/P/secrets/farm-redis-auth&ca_secret=projects/P/secrets/farm-redis-ca

:func:`redis_options` turns such a URL into the URL redis-py gets (without those parameters) and
its password and CA; neither is ever put in a URL, a log line or an error message. On GKE the
credentials are the pod's Workload Identity; ``secret_manager=http://HOST:PORT`` in the query points
at another server speaking the same API (plain HTTP: no credentials are sent).

>>> secret_manager.access("projects/my-farm/secrets/farm-redis-auth")
b'...'
"""

from __future__ import annotations

import base64
import json
import re
import urllib.error
import urllib.request
from urllib.parse import parse_qsl, urlencode, urlparse, urlunparse

from farmkit.errors import ConfigError

ENDPOINT = "https://secretmanager.googleapis.com"
_NAME = re.compile(r"^projects/[^/]+/secrets/[^/]+(/versions/[^/]+)?$")
_TIMEOUT = 10.0


def access(name: str, *, endpoint: str = ENDPOINT) -> bytes:
    """The value of secret ``name`` (``projects/P/secrets/S``: its latest version, or
    ``.../versions/N``)."""
    if not _NAME.match(name):
        raise ConfigError(f"{name!r} is not a Secret Manager secret: expected projects/PROJECT/secrets/NAME")
    version = name if "/versions/" in name else f"{name}/versions/latest"
    request = urllib.request.Request(f"{endpoint.rstrip('/')}/v1/{version}:access")
    if not endpoint.startswith("http://"):
        request.add_header("Authorization", f"Bearer {_token()}")
    try:
        with urllib.request.urlopen(request, timeout=_TIMEOUT) as response:
            body = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        hint = {403: "grant this service account roles/secretmanager.secretAccessor on it",
                404: "check the name, or run terraform apply"}.get(exc.code, "")
        raise ConfigError(f"Secret Manager refused {version} ({exc.code} {exc.reason})"
                          + (f": {hint}" if hint else "")) from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {version} from Secret Manager at {endpoint}: {exc}") from None
    try:
        return base64.b64decode(body["payload"]["data"])
    except (KeyError, TypeError, ValueError):
        raise ConfigError(f"Secret Manager's answer for {version} has no payload") from None


def _token() -> str:
    try:
        import google.auth
        import google.auth.transport.requests
    except ImportError:
        raise ConfigError("reading Secret Manager needs google-auth: pip install 'thefarm[cloud]'") from None
    credentials, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
    credentials.refresh(google.auth.transport.requests.Request())
    return credentials.token


def redis_options(url: str) -> tuple[str, dict]:
    """``(url, options)`` for redis-py: ``auth_secret`` becomes the password and ``ca_secret`` the CA
    (``ssl_ca_data``), both read from Secret Manager; other query parameters stay in the URL."""
    parsed = urlparse(url)
    query = parse_qsl(parsed.query, keep_blank_values=True)
    ours = {k: v for k, v in query if k in ("auth_secret", "ca_secret", "secret_manager")}
    if not ours.keys() & {"auth_secret", "ca_secret"}:
        return url, {}
    endpoint = ours.get("secret_manager") or ENDPOINT
    options = {}
    if "auth_secret" in ours:
        options["password"] = access(ours["auth_secret"], endpoint=endpoint).decode("utf-8").strip()
    if "ca_secret" in ours:
        if parsed.scheme != "rediss":
            raise ConfigError("ca_secret is a TLS certificate: use rediss:// (Memorystore's TLS port is 6378)")
        options["ssl_ca_data"] = access(ours["ca_secret"], endpoint=endpoint).decode("ascii")
    rest = [(k, v) for k, v in query if k not in ours]
    return urlunparse(parsed._replace(query=urlencode(rest))), options
