"""The leaderboard on a Redis with AUTH and TLS, its auth string and CA read from Secret Manager, as
Terraform sets up Memorystore: Debian's redis-server with a certificate of a CA made here, and a
local server speaking Secret Manager's REST ``access`` call (Google's cannot be reached from tests)."""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import subprocess

import pytest

from farmkit import leaderboard, secret_manager
from farmkit.errors import ConfigError
from tests.conftest import need
from tests.local_http import LocalHttp
from tests.local_process import LocalProcess
from tests.redis_server import find_redis_server

PASSWORD = "s3cret-auth-string-0123456789"
AUTH, CA = "projects/farm-test/secrets/farm-redis-auth", "projects/farm-test/secrets/farm-redis-ca"


def _certificates(folder):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.timezone.utc)

    def made(subject, issuer, key, sign_with, *, ca):
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
                   .not_valid_after(now + dt.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if not ca:
            builder = builder.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(
                "127.0.0.1"))]), critical=False)
        return builder.sign(sign_with, hashes.SHA256())

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "farm test CA")])
    ca = made(ca_name, ca_name, ca_key, ca_key, ca=True)
    server = made(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]), ca_name, key, ca_key, ca=False)
    pem = serialization.Encoding.PEM
    (folder / "ca.crt").write_bytes(ca.public_bytes(pem))
    (folder / "server.crt").write_bytes(server.public_bytes(pem))
    (folder / "server.key").write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                          serialization.NoEncryption()))
    return ca.public_bytes(pem)


class TlsRedis(LocalProcess):
    name = "redis-tls"

    def __init__(self, executable):
        self.executable = executable
        super().__init__()
        self.ca = _certificates(self.directory)

    def command(self):
        d = self.directory
        return [self.executable, "--port", "0", "--tls-port", str(self.port), "--bind", "127.0.0.1",
                "--tls-cert-file", str(d / "server.crt"), "--tls-key-file", str(d / "server.key"),
                "--tls-ca-cert-file", str(d / "ca.crt"), "--tls-auth-clients", "no", "--requirepass", PASSWORD,
                "--save", "", "--appendonly", "no", "--dir", str(d), "--daemonize", "no"]

    def ready(self):
        import redis
        return redis.Redis(host="127.0.0.1", port=self.port, password=PASSWORD, ssl=True,
                           ssl_ca_data=self.ca.decode(), socket_timeout=1).ping()


class SecretManager(LocalHttp):
    """``GET /v1/projects/P/secrets/S/versions/latest:access`` as Secret Manager answers it."""

    def __init__(self, secrets: dict[str, bytes]):
        self.secrets, self.asked = secrets, []
        super().__init__()
        self.url = self.base

    def respond(self, path: str):
        name = path.removeprefix("/v1/").removesuffix("/versions/latest:access")
        self.asked.append(name)
        if name not in self.secrets:
            return 404, {"error": {"code": 404, "message": "Secret not found"}}, {}
        return 200, {"name": f"{name}/versions/1",
                     "payload": {"data": base64.b64encode(self.secrets[name]).decode()}}, {}


@pytest.fixture(scope="module")
def tls_redis():
    executable, reason = find_redis_server()
    need(executable is not None, reason)
    tls = subprocess.run([executable, "--version"], capture_output=True, text=True).stdout
    server = TlsRedis(executable)
    try:
        server.start()
    except Exception as exc:   # a redis-server built without TLS refuses --tls-port
        need(False, f"{executable} ({tls.strip()}) cannot serve TLS: {exc}")
    try:
        yield server
    finally:
        server.stop()


def _url(server, manager, **extra):
    query = {"auth_secret": AUTH, "ca_secret": CA, "secret_manager": manager.url, **extra}
    return f"rediss://127.0.0.1:{server.port}/0?" + "&".join(f"{k}={v}" for k, v in query.items())


def test_the_leaderboard_reaches_a_tls_redis_with_auth_from_secret_manager(tls_redis, farm_home):
    with SecretManager({AUTH: PASSWORD.encode() + b"\n", CA: tls_redis.ca}) as manager:
        settings = farm_home.replace(redis=_url(tls_redis, manager))
        client = leaderboard.connect(settings)
        assert client.ping() and sorted(manager.asked) == sorted([AUTH, CA])
        assert leaderboard.publish(client, {"run_id": "r1", "agent_id": "tls-agent", "strategy": "S", "mode": "backtest",
                                            "status": "done", "metrics": {"sharpe": 1.0, "dsr": 0.99, "days": 400,
                                                                          "min_track_record_days": 20}})
        assert client.exists("farm:run:r1")


def test_without_the_auth_string_or_the_ca_it_says_so_and_never_shows_the_secret(tls_redis, farm_home):
    with SecretManager({AUTH: b"wrong-" + PASSWORD.encode(), CA: tls_redis.ca}) as manager:
        with pytest.raises(ConfigError) as caught:
            leaderboard.connect(farm_home.replace(redis=_url(tls_redis, manager)))
        assert "cannot reach the leaderboard Redis" in str(caught.value) and PASSWORD not in str(caught.value)
    with SecretManager({CA: tls_redis.ca}) as manager:
        with pytest.raises(ConfigError, match=r"Secret Manager refused .*farm-redis-auth/versions/latest \(404"):
            leaderboard.connect(farm_home.replace(redis=_url(tls_redis, manager)))
    with SecretManager({AUTH: PASSWORD.encode()}) as manager:   # TLS without the instance's CA: not trusted
        url = f"rediss://127.0.0.1:{tls_redis.port}/0?auth_secret={AUTH}&secret_manager={manager.url}"
        with pytest.raises(ConfigError, match="cannot reach the leaderboard Redis") as caught:
            leaderboard.connect(farm_home.replace(redis=url))
        assert PASSWORD not in str(caught.value)


def test_secret_names_are_checked():
    with pytest.raises(ConfigError, match="not a Secret Manager secret"):
        secret_manager.access("farm-redis-auth")
    assert secret_manager.redis_options("redis://h:6379/0?socket_timeout=3") == ("redis://h:6379/0?socket_timeout=3", {})
