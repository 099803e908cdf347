"""A local stand-in for Google's published Firebase signing keys: an HTTP server in a thread serving
RSA public keys as a JWKS (or as x509 certificates), and a signer of test ID tokens with the private keys.

    with JwksServer() as keys:
        token = keys.token("uid-1", project="farm-test")
        auth = FirebaseAuth("farm-test", SigningKeys(keys.url))
"""

from __future__ import annotations

import datetime
import json
import threading
import time
import uuid

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from tests.local_http import LocalHttp


def new_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _certificate(key) -> str:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "securetoken.system.gserviceaccount.com")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM).decode()


class JwksServer(LocalHttp):
    """Serves ``/jwks`` (JWKS) and ``/x509`` (kid -> PEM certificate); ``url`` is the JWKS one."""

    def __init__(self, max_age: int = 3600):
        self.keys: dict[str, object] = {}
        self.max_age = max_age
        self.requests = 0
        self.asked = threading.Event()     # set at each request for the keys
        self.answer = threading.Event()    # clear it to hold the answers back (a slow Google)
        self.answer.set()
        self.rotate()
        super().__init__()

    def respond(self, path: str):
        self.requests += 1
        self.asked.set()
        self.answer.wait(30)
        if path == "/jwks":
            body = {"keys": [{**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(k.public_key())),
                              "kid": kid, "alg": "RS256", "use": "sig"} for kid, k in self.keys.items()]}
        elif path == "/x509":
            body = {kid: _certificate(k) for kid, k in self.keys.items()}
        else:
            return None
        return 200, body, {"Cache-Control": f"public, max-age={self.max_age}, must-revalidate"}

    @property
    def url(self) -> str:
        return f"{self.base}/jwks"

    @property
    def x509_url(self) -> str:
        return f"{self.base}/x509"

    def rotate(self) -> str:
        """Publish a new key (Google keeps the old one for a while too); returns its kid."""
        kid = uuid.uuid4().hex
        self.keys[kid] = new_key()
        self.current = kid
        return kid

    def token(self, uid: str, *, project: str, kid: str | None = None, key=None, issuer: str | None = None,
              audience: str | None = None, expires_in: float = 3600, issued_ago: float = 10, **claims) -> str:
        """A Firebase-shaped ID token for ``uid``, signed with the current key (or ``key``); signed in
        with Google unless ``firebase`` says otherwise (``firebase=None``: no such claim)."""
        now = time.time()
        claims.setdefault("firebase", {"sign_in_provider": "google.com"})
        if claims["firebase"] is None:
            del claims["firebase"]
        payload = {"iss": issuer or f"https://securetoken.google.com/{project}", "aud": audience or project,
                   "sub": uid, "user_id": uid, "iat": int(now - issued_ago), "auth_time": int(now - issued_ago),
                   "exp": int(now + expires_in), **claims}
        kid = kid or self.current
        return jwt.encode(payload, key or self.keys[kid], algorithm="RS256", headers={"kid": kid})
