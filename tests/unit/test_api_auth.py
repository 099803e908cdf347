"""Firebase ID-token verification against signing keys served from a local JWKS server (Google's
endpoint cannot be reached from tests; the server speaks the same JWKS and x509 formats), the local
token, the API settings, and the Kubernetes manifests helper."""

import pytest

from farmkit.api.auth import AuthError, FirebaseAuth, LocalTokenAuth, SigningKeys, bearer
from farmkit.api.settings import ApiSettings
from farmkit.errors import ConfigError
from farmkit.ops.orchestrators import manifests
from tests.jwks_server import JwksServer, new_key

PROJECT = "farm-test"


@pytest.fixture(scope="module")
def keys():
    with JwksServer() as server:
        yield server


def auth_for(url, **kwargs):
    return FirebaseAuth(PROJECT, SigningKeys(url, **kwargs))


def test_a_valid_token_gives_its_user(keys):
    user = auth_for(keys.url).authenticate(keys.token("uid-1", project=PROJECT, email="a@example.com"))
    assert (user.uid, user.email, user.admin) == ("uid-1", "a@example.com", False)


def test_x509_certificates_are_accepted_too(keys):
    assert auth_for(keys.x509_url).authenticate(keys.token("uid-2", project=PROJECT)).uid == "uid-2"


@pytest.mark.parametrize("change, code, message", [
    ({"expires_in": -60}, "expired_token", "expired"),
    ({"audience": "another-project"}, "invalid_token", "another Firebase project"),
    ({"issuer": "https://securetoken.google.com/another-project"}, "invalid_token", "not issued by"),
    ({"issuer": "https://accounts.google.com"}, "invalid_token", "not issued by"),
    ({"sub": ""}, "invalid_token", "subject"),
])
def test_bad_claims_are_refused_with_a_reason(keys, change, code, message):
    uid = change.pop("sub", "uid-1")
    with pytest.raises(AuthError, match=message) as caught:
        auth_for(keys.url).authenticate(keys.token(uid, project=PROJECT, **change))
    assert caught.value.code == code


def test_a_token_signed_by_another_key_fails_its_signature(keys):
    forged = keys.token("uid-1", project=PROJECT, key=new_key())     # a known kid, the wrong private key
    with pytest.raises(AuthError, match="signature does not verify"):
        auth_for(keys.url).authenticate(forged)


@pytest.mark.parametrize("token", ["not-a-jwt", "a.b.c", ""])
def test_malformed_tokens_are_refused(keys, token):
    with pytest.raises(AuthError) as caught:
        auth_for(keys.url).authenticate(token)
    assert caught.value.code == "malformed_token"


def test_an_hs256_token_is_not_accepted(keys):
    import jwt
    token = jwt.encode({"sub": "x", "aud": PROJECT}, "a-shared-secret-of-at-least-32-bytes", algorithm="HS256", headers={"kid": keys.current})
    with pytest.raises(AuthError, match="RS256"):
        auth_for(keys.url).authenticate(token)


def test_keys_are_cached_and_fetched_again_for_an_unknown_kid():
    with JwksServer() as server:
        signing = SigningKeys(server.url, min_refresh=0)
        auth = FirebaseAuth(PROJECT, signing)
        for _ in range(3):
            auth.authenticate(server.token("uid-1", project=PROJECT))
        assert signing.fetches == 1                     # cached (max-age 3600)
        server.rotate()                                 # Google published a new key
        assert auth.authenticate(server.token("uid-1", project=PROJECT)).uid == "uid-1"
        assert signing.fetches == 2


def test_unknown_kids_do_not_refetch_more_often_than_allowed():
    with JwksServer() as server:
        now = [1000.0]
        signing = SigningKeys(server.url, min_refresh=10, clock=lambda: now[0])
        auth = FirebaseAuth(PROJECT, signing)
        auth.authenticate(server.token("uid-1", project=PROJECT))
        for _ in range(5):
            with pytest.raises(AuthError, match="unknown key"):
                auth.authenticate(server.token("uid-1", project=PROJECT, kid="forged", key=new_key()))
        assert signing.fetches == 1
        now[0] += 11
        with pytest.raises(AuthError, match="unknown key"):
            auth.authenticate(server.token("uid-1", project=PROJECT, kid="forged", key=new_key()))
        assert signing.fetches == 2


def test_expired_cache_is_refreshed():
    with JwksServer(max_age=60) as server:
        now = [0.0]
        signing = SigningKeys(server.url, clock=lambda: now[0])
        FirebaseAuth(PROJECT, signing).authenticate(server.token("u", project=PROJECT))
        now[0] = 61
        FirebaseAuth(PROJECT, signing).authenticate(server.token("u", project=PROJECT))
        assert signing.fetches == 2


def _signed_in(keys, provider, **claims):
    return keys.token("uid-9", project=PROJECT, firebase={"sign_in_provider": provider}, **claims)


def test_anonymous_sign_ins_are_refused_by_default(keys):
    with pytest.raises(AuthError, match=r"signed in anonymously.*FARM_API_SIGN_IN_PROVIDERS") as caught:
        auth_for(keys.url).authenticate(_signed_in(keys, "anonymous"))
    assert caught.value.code == "forbidden_provider"
    assert auth_for(keys.url).authenticate(_signed_in(keys, "google.com")).uid == "uid-9"
    assert auth_for(keys.url).authenticate(_signed_in(keys, "password")).uid == "uid-9"


def test_only_the_allowed_sign_in_providers_get_in(keys):
    auth = FirebaseAuth(PROJECT, SigningKeys(keys.url), providers=("github.com",))
    assert auth.authenticate(_signed_in(keys, "github.com")).uid == "uid-9"
    with pytest.raises(AuthError, match=r"'google.com'.*allows github.com"):
        auth.authenticate(_signed_in(keys, "google.com"))
    with pytest.raises(AuthError, match="names no sign-in provider"):
        auth.authenticate(keys.token("uid-9", project=PROJECT, firebase=None))


def test_email_domains_when_set_need_a_verified_address_there(keys):
    auth = FirebaseAuth(PROJECT, SigningKeys(keys.url), email_domains=("fund.example",))
    ok = _signed_in(keys, "google.com", email="Quant@Fund.Example", email_verified=True)
    assert auth.authenticate(ok).email == "Quant@Fund.Example"
    for claims, message in (({"email": "q@elsewhere.example", "email_verified": True}, "not in fund.example"),
                            ({"email": "q@fund.example", "email_verified": False}, "not verified"),
                            ({"email": "q@evil-fund.example", "email_verified": True}, "not in fund.example"),
                            ({}, "no email")):
        with pytest.raises(AuthError, match=message) as caught:
            auth.authenticate(_signed_in(keys, "google.com", **claims))
        assert caught.value.code == "forbidden_email"


def test_api_settings_name_providers_and_domains():
    s = ApiSettings.from_env({"FARM_API_SIGN_IN_PROVIDERS": "google.com, password",
                              "FARM_API_EMAIL_DOMAINS": "fund.example"})
    assert s.sign_in_providers == ("google.com", "password") and s.email_domains == ("fund.example",)
    assert ApiSettings.from_env({}).sign_in_providers == ("google.com", "password")
    assert ApiSettings.from_env({}).email_domains == ()


def test_local_token():
    auth = LocalTokenAuth()
    assert len(auth.token) >= 40 and LocalTokenAuth().token != auth.token
    assert auth.authenticate(auth.token).admin
    with pytest.raises(AuthError, match="wrong token"):
        auth.authenticate(auth.token + "x")


@pytest.mark.parametrize("header, code", [(None, "missing_token"), ("Basic abc", "malformed_token"),
                                          ("Bearer ", "malformed_token")])
def test_the_authorization_header_must_be_a_bearer_token(header, code):
    with pytest.raises(AuthError) as caught:
        bearer(header)
    assert caught.value.code == code


def test_api_settings():
    s = ApiSettings.from_env({"FARM_API_AUTH": "firebase", "FARM_API_PROJECT": "p", "FARM_API_RATE": "5"})
    assert (s.auth, s.project, s.rate, s.burst) == ("firebase", "p", 5.0, 40.0)
    with pytest.raises(ConfigError, match="FARM_API_PROJECT"):
        ApiSettings.from_env({"FARM_API_AUTH": "firebase"})
    with pytest.raises(ConfigError, match="unknown setting.*FARM_API_NOPE"):
        ApiSettings.from_env({"FARM_API_NOPE": "1"})
    with pytest.raises(ConfigError, match="FARM_API_MAX_BODY must be a number > 0"):
        ApiSettings.from_env({"FARM_API_MAX_BODY": "lots"})


def test_farm_settings_leave_farm_api_variables_to_the_api():
    from farmkit.settings import Settings
    Settings.from_env({"FARM_API_AUTH": "local"})       # not an unknown FARM_* setting


def test_manifests_accepts_objects_lists_and_yaml():
    sts = {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "a"}}
    assert manifests(sts) == [sts]
    assert manifests([sts, sts]) == [sts, sts]
    assert manifests({"kind": "List", "items": [sts]}) == [sts]
    assert manifests("kind: StatefulSet\nmetadata: {name: a}\n---\nkind: Service\n")[1]["kind"] == "Service"
    with pytest.raises(ConfigError, match="not a Kubernetes object"):
        manifests(["nope"])


def test_ttl_cache_expires_and_evicts_least_recently_used():
    from farmkit.api.cache import TtlCache
    now = [0.0]
    cache = TtlCache(2, ttl=1.0, clock=lambda: now[0])
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1
    cache.put("c", 3)                       # evicts b, the least recently used
    assert cache.get("b") is None and cache.get("c") == 3
    now[0] = 1.5
    assert cache.get("a") is None and (cache.hits, cache.misses) == (2, 2)
