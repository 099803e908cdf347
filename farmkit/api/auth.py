"""Who is calling: Firebase ID tokens in the cloud, a token printed at start on a laptop.

Firebase ID tokens are RS256 JWTs signed with Google's rotating keys, published as a JWKS (or as x509
certificates). :class:`SigningKeys` caches them for as long as Google's ``Cache-Control`` says and
fetches them again when a token names a key it does not know (keys rotate every few hours).

    auth = FirebaseAuth("my-farm", SigningKeys(FIREBASE_JWKS))
    user = auth.authenticate(id_token)          # User(uid=..., admin=False) or AuthError (401)
"""

from __future__ import annotations

import hmac
import json
import re
import secrets
import threading
import time
import urllib.request
from dataclasses import dataclass

import jwt
from cryptography.x509 import load_pem_x509_certificate


@dataclass(frozen=True)
class User:
    """A signed-in user. ``admin`` (the local token's user) sees and controls every agent and run."""

    uid: str
    admin: bool = False
    email: str | None = None

    def owns(self, owner: str | None) -> bool:
        return self.admin or (owner is not None and owner == self.uid)


class AuthError(Exception):
    """The request is not authenticated; the message says what to send instead."""

    def __init__(self, message: str, code: str = "unauthenticated"):
        super().__init__(message)
        self.message, self.code = message, code


def bearer(authorization: str | None) -> str:
    if not authorization:
        raise AuthError("no credentials: send the header 'Authorization: Bearer TOKEN'", "missing_token")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError("the Authorization header must be 'Bearer TOKEN'", "malformed_token")
    return token.strip()


class LocalTokenAuth:
    """One random token, generated at start and printed with the URL (as Jupyter does)."""

    def __init__(self, token: str | None = None):
        self.token = token or secrets.token_urlsafe(32)
        self.user = User(uid="local", admin=True)

    def verifies_offline(self, token: str) -> bool:
        return True

    def authenticate(self, token: str) -> User:
        if not hmac.compare_digest(token.encode(), self.token.encode()):
            raise AuthError("wrong token: use the one `farm serve` printed at start", "invalid_token")
        return self.user


def _max_age(cache_control: str | None) -> float:
    match = re.search(r"max-age=(\d+)", cache_control or "")
    return float(match.group(1)) if match else 300.0


class SigningKeys:
    """Public keys by ``kid`` from a JWKS URL (``{"keys": [...]}``) or an x509 one (``{kid: PEM}``).

    ``min_refresh`` bounds how often an unknown ``kid`` may trigger a fetch, so forged tokens cannot
    make the API hammer Google."""

    def __init__(self, url: str, *, timeout: float = 5.0, min_refresh: float = 10.0, clock=time.monotonic):
        self.url, self.timeout, self.min_refresh, self.clock = url, timeout, min_refresh, clock
        self._keys: dict[str, object] = {}
        self._expires = 0.0
        self._fetched = float("-inf")
        self._lock = threading.Lock()
        self.fetches = 0

    def _fetch(self) -> None:
        with urllib.request.urlopen(self.url, timeout=self.timeout) as reply:
            body = json.loads(reply.read())
            max_age = _max_age(reply.headers.get("Cache-Control"))
        keys = {}
        if isinstance(body, dict) and isinstance(body.get("keys"), list):
            for jwk in body["keys"]:
                if jwk.get("kid") and jwk.get("kty") == "RSA":
                    keys[jwk["kid"]] = jwt.PyJWK(jwk, algorithm="RS256").key
        elif isinstance(body, dict):
            for kid, pem in body.items():
                keys[kid] = load_pem_x509_certificate(pem.encode()).public_key()
        self._keys, self._expires, self._fetched = keys, self.clock() + max_age, self.clock()
        self.fetches += 1

    def _must_fetch(self, kid: str, now: float) -> bool:
        stale = now >= self._expires
        unknown = kid not in self._keys and now - self._fetched >= self.min_refresh
        return stale or unknown

    def cached(self, kid: str) -> bool:
        """Whether :meth:`key` answers ``kid`` from the cache, without a fetch."""
        return not self._must_fetch(kid, self.clock())

    def key(self, kid: str):
        with self._lock:
            if self._must_fetch(kid, self.clock()):
                try:
                    self._fetch()
                except Exception as exc:   # noqa: BLE001 - the caller gets a 503-worthy message
                    if not self._keys:
                        raise KeyFetchError(f"cannot fetch the token signing keys from {self.url}: {exc}") from exc
            return self._keys.get(kid)


class KeyFetchError(Exception):
    """The signing keys could not be fetched (and none are cached)."""


PROVIDERS = ("google.com", "password")   # sign-in providers allowed unless FARM_API_SIGN_IN_PROVIDERS says


class FirebaseAuth:
    """Verifies Firebase ID tokens: RS256 signature by a published key, issuer
    ``https://securetoken.google.com/PROJECT``, audience ``PROJECT``, expiry, a subject (the uid), and
    who may sign in: the token's ``firebase.sign_in_provider`` must be one of ``providers`` (anonymous
    sign-ins are not, unless listed), and with ``email_domains`` its email must be verified and in one
    of them. Anyone can get a valid ID token for a project from its public web config; these checks
    are what keep strangers out."""

    def __init__(self, project: str, keys: SigningKeys, *, leeway: float = 5.0,
                 providers: tuple[str, ...] = PROVIDERS, email_domains: tuple[str, ...] = ()):
        self.project, self.keys, self.leeway = project, keys, leeway
        self.issuer = f"https://securetoken.google.com/{project}"
        self.providers = tuple(providers)
        self.email_domains = tuple(d.lower().lstrip("@") for d in email_domains)

    def verifies_offline(self, token: str) -> bool:
        """Whether checking ``token`` needs no fetch of the signing keys (it does when they have
        expired or the token names a key not seen yet): the API checks other tokens on its event loop."""
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError:
            return True     # refused without looking at a key
        return not isinstance(kid, str) or self.keys.cached(kid)

    def authenticate(self, token: str) -> User:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthError("the bearer token is not a JWT; send a Firebase ID token "
                            "(user.getIdToken() in the web SDK)", "malformed_token") from None
        if header.get("alg") != "RS256" or not header.get("kid"):
            raise AuthError("the token is not a Firebase ID token (expected alg RS256 and a kid)", "invalid_token")
        key = self.keys.key(header["kid"])
        if key is None:
            raise AuthError("the token is signed with an unknown key; get a fresh ID token", "invalid_token")
        try:
            claims = jwt.decode(token, key, algorithms=["RS256"], audience=self.project, issuer=self.issuer,
                                leeway=self.leeway, options={"require": ["exp", "iat", "iss", "aud", "sub"]})
        except jwt.ExpiredSignatureError:
            raise AuthError("the ID token has expired; get a fresh one (user.getIdToken(true))",
                            "expired_token") from None
        except jwt.InvalidAudienceError:
            raise AuthError(f"the ID token is for another Firebase project; this API accepts project "
                            f"{self.project!r}", "invalid_token") from None
        except jwt.InvalidIssuerError:
            raise AuthError(f"the ID token was not issued by {self.issuer}", "invalid_token") from None
        except jwt.InvalidSignatureError:
            raise AuthError("the ID token's signature does not verify", "invalid_token") from None
        except jwt.PyJWTError as exc:
            raise AuthError(f"the ID token is not valid: {exc}", "invalid_token") from None
        uid = claims.get("sub")
        if not isinstance(uid, str) or not 0 < len(uid) <= 128:
            raise AuthError("the ID token has no valid subject (user id)", "invalid_token")
        auth_time = claims.get("auth_time")
        if isinstance(auth_time, (int, float)) and auth_time > time.time() + self.leeway:
            raise AuthError("the ID token's auth_time is in the future", "invalid_token")
        self._allowed(claims)
        return User(uid=uid, email=claims.get("email"))

    def _allowed(self, claims: dict) -> None:
        firebase = claims.get("firebase")
        provider = firebase.get("sign_in_provider") if isinstance(firebase, dict) else None
        allowed = ", ".join(self.providers)
        if not isinstance(provider, str):
            raise AuthError("the ID token names no sign-in provider (firebase.sign_in_provider)", "forbidden_provider")
        if provider not in self.providers:
            how = "signed in anonymously" if provider == "anonymous" else f"signed in with {provider!r}"
            raise AuthError(f"the user {how}; this API allows {allowed} (FARM_API_SIGN_IN_PROVIDERS)",
                            "forbidden_provider")
        if not self.email_domains:
            return
        email = claims.get("email")
        domains = ", ".join(self.email_domains)
        if not isinstance(email, str) or "@" not in email:
            raise AuthError(f"the ID token has no email; this API allows addresses in {domains}", "forbidden_email")
        if claims.get("email_verified") is not True:
            raise AuthError(f"the email {email} is not verified; verify it, then get a fresh ID token",
                            "forbidden_email")
        if email.rsplit("@", 1)[1].lower() not in self.email_domains:
            raise AuthError(f"the email {email} is not in {domains} (FARM_API_EMAIL_DOMAINS)", "forbidden_email")
