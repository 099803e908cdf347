"""The REST API's own settings (``FARM_API_*``), read once at the edge like :class:`farmkit.settings.Settings`."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace

from farmkit.errors import ConfigError

# Google's published signing keys of Firebase ID tokens (JWKS); the x509 form is accepted too:
# https://www.googleapis.com/robot/v1/metadata/x509/securetoken@system.gserviceaccount.com
FIREBASE_JWKS = "https://www.googleapis.com/service_accounts/v1/jwk/securetoken@system.gserviceaccount.com"

_VARIABLES: dict[str, tuple[str, str | None]] = {
    "FARM_API_AUTH": ("auth", "local"),             # local (a token printed at start) | firebase
    "FARM_API_PROJECT": ("project", None),          # the Firebase project: tokens' audience and issuer
    "FARM_API_CERTS_URL": ("certs_url", FIREBASE_JWKS),
    "FARM_API_TOKEN": ("token", None),              # local mode: this token instead of a random one
    "FARM_API_AGENTS": ("agents", "agents"),        # a folder, or gs://BUCKET[/PREFIX]
    "FARM_API_ORCHESTRATOR": ("orchestrator", "local"),   # local | kubernetes://NAMESPACE
    "FARM_API_RUNNER_IMAGE": ("runner_image", None),      # kubernetes: the runner image of agents' pods
    "FARM_API_RATE": ("rate", "20"),                # requests per second per user, sustained
    "FARM_API_BURST": ("burst", "40"),              # requests a user may make at once
    "FARM_API_MAX_BODY": ("max_body", str(5 * 1024 * 1024)),   # bytes of one request body
    # firebase: who may sign in. Providers as Firebase names them (google.com, password, github.com,
    # microsoft.com, anonymous, ...); email domains, when set, also need a verified address in one.
    "FARM_API_SIGN_IN_PROVIDERS": ("sign_in_providers", "google.com,password"),
    "FARM_API_EMAIL_DOMAINS": ("email_domains", ""),
    # Where uploaded notebooks are checked: local (a sandboxed child process) | kubernetes[://NAMESPACE]
    # (a Job on gVisor in that namespace, default farm-sandbox); its time limit, memory and how many at once.
    "FARM_API_SANDBOX": ("sandbox", "local"),
    "FARM_API_SANDBOX_TIMEOUT": ("sandbox_timeout", "900"),     # seconds of wall clock per check
    "FARM_API_SANDBOX_MEMORY": ("sandbox_memory", "6144"),      # MiB: a pod's limit, a process's address space
    "FARM_API_SANDBOX_WORKERS": ("sandbox_workers", "2"),       # checks run at once; the others wait
}


@dataclass(frozen=True)
class ApiSettings:
    """How the API authenticates, where agents live, who runs paper sessions, how much a user may ask.

    >>> ApiSettings.from_env({"FARM_API_AUTH": "firebase", "FARM_API_PROJECT": "my-farm"}).project
    'my-farm'
    """

    auth: str = "local"
    project: str | None = None
    certs_url: str = FIREBASE_JWKS
    token: str | None = None
    agents: str = "agents"
    orchestrator: str = "local"
    runner_image: str | None = None
    rate: float = 20.0
    burst: float = 40.0
    max_body: int = 5 * 1024 * 1024
    sign_in_providers: tuple[str, ...] = ("google.com", "password")
    email_domains: tuple[str, ...] = ()
    sandbox: str = "local"
    sandbox_timeout: float = 900.0
    sandbox_memory: int = 6144
    sandbox_workers: int = 2

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "ApiSettings":
        environ = os.environ if environ is None else environ
        unknown = sorted(k for k in environ if k.startswith("FARM_API_") and k not in _VARIABLES)
        if unknown:
            raise ConfigError(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(_VARIABLES))}")
        values = {name: environ.get(var) or default for var, (name, default) in _VARIABLES.items()}
        for name in ("sign_in_providers", "email_domains"):
            values[name] = tuple(part.strip() for part in values[name].split(",") if part.strip())
        for var, name, kind in (("FARM_API_RATE", "rate", float), ("FARM_API_BURST", "burst", float),
                                ("FARM_API_MAX_BODY", "max_body", int),
                                ("FARM_API_SANDBOX_TIMEOUT", "sandbox_timeout", float),
                                ("FARM_API_SANDBOX_MEMORY", "sandbox_memory", int),
                                ("FARM_API_SANDBOX_WORKERS", "sandbox_workers", int)):
            try:
                values[name] = kind(values[name])
                if not values[name] > 0:
                    raise ValueError
            except ValueError:
                raise ConfigError(f"{var} must be a number > 0, got {values[name]!r}") from None
        return cls(**values).checked()

    def checked(self) -> "ApiSettings":
        if self.auth not in ("local", "firebase"):
            raise ConfigError(f"FARM_API_AUTH must be local or firebase, got {self.auth!r}")
        if self.auth == "firebase" and not self.sign_in_providers:
            raise ConfigError("FARM_API_SIGN_IN_PROVIDERS is empty: nobody could sign in; name the providers "
                              "to allow, e.g. google.com,password")
        if self.sandbox != "local" and not (self.sandbox == "kubernetes" or self.sandbox.startswith("kubernetes://")):
            raise ConfigError(f"FARM_API_SANDBOX must be local or kubernetes://NAMESPACE, got {self.sandbox!r}")
        if not (self.sandbox_timeout > 0 and self.sandbox_memory > 0 and self.sandbox_workers > 0):
            raise ConfigError("FARM_API_SANDBOX_TIMEOUT, FARM_API_SANDBOX_MEMORY and FARM_API_SANDBOX_WORKERS "
                              "must be numbers > 0")
        if self.auth == "firebase" and not self.project:
            raise ConfigError("FARM_API_AUTH=firebase needs FARM_API_PROJECT, the Firebase project id "
                              "(the audience of its ID tokens)")
        return self

    def replace(self, **changes) -> "ApiSettings":
        bad = sorted(set(changes) - {f.name for f in fields(self)})
        if bad:
            raise ConfigError(f"unknown API setting(s) {', '.join(bad)}")
        return replace(self, **changes).checked()
