"""OIDC discovery documents (federation/oidc.py), the flags that configure them (server/config.py), the
bundle ConfigMap's key, and the routes on a real loopback HTTPS server (server/oidc.py)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import ssl
import urllib.error
import urllib.request

import jwt
import pytest
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from kubespiffe.authority.keys import KeyType, generate_key
from kubespiffe.federation.oidc import (
    OidcIssuer,
    OidcIssuerError,
    discovery_document,
    jwks_document,
    signing_algorithm,
)
from kubespiffe.server.bundle_configmaps import check_pem_key
from kubespiffe.server.config import parse_args
from kubespiffe.server.https import StaticTls, serve
from kubespiffe.server.oidc import oidc_routes
from kubespiffe.spiffe import jwtsvid
from kubespiffe.spiffe.bundle import Bundle, BundleSet
from kubespiffe.spiffe.spiffeid import SpiffeId, TrustDomain
from kubespiffe.versioned import Versioned
from tests.unit.certs import DAY, build, name

TD = TrustDomain("example.org")


@pytest.mark.parametrize(
    ("url", "discovery", "jwks_uri"),
    [
        ("https://oidc.example.com", "/.well-known/openid-configuration", "https://oidc.example.com/keys"),
        ("https://oidc.example.com/", "/.well-known/openid-configuration", "https://oidc.example.com/keys"),
        (
            "https://localhost:8447/t/1",
            "/t/1/.well-known/openid-configuration",
            "https://localhost:8447/t/1/keys",
        ),
    ],
)
def test_issuer_paths(url: str, discovery: str, jwks_uri: str) -> None:
    issuer = OidcIssuer.parse(url)
    assert issuer.url == url  # kept byte for byte: it is the iss claim
    assert issuer.discovery_path == discovery
    assert issuer.jwks_uri == jwks_uri
    assert issuer.jwks_path == discovery.removesuffix("/.well-known/openid-configuration") + "/keys"


@pytest.mark.parametrize(
    ("url", "rule"),
    [
        ("http://oidc.example.com", "https://"),
        ("oidc.example.com", "https://"),
        ("https://", "no host"),
        ("https://user@oidc.example.com", "userinfo"),
        ("https://oidc.example.com?tenant=1", "query"),
        ("https://oidc.example.com/#x", "query or fragment"),
        ("https://oidc.example.com?", "query"),
        ("https://oidc.example.com ", "whitespace"),
        ("https://oidc.exämple.com", "ASCII"),
        ("https://oidc.example.com:99999", "malformed"),
        ("https://oidc.example.com/" + "a" * 250, "longer than 255"),
    ],
)
def test_issuer_refused(url: str, rule: str) -> None:
    with pytest.raises(OidcIssuerError, match=rule):
        OidcIssuer.parse(url)


def _bundle(*key_types: KeyType) -> tuple[Bundle, dict[str, object]]:
    keys = {f"kid-{i}": generate_key(k) for i, k in enumerate(key_types)}
    public = {kid: key.public_key() for kid, key in keys.items()}
    return Bundle(TD, (), public, sequence=3, refresh_hint=300), dict(keys)


def test_jwks_has_every_key_with_use_and_alg_and_verifies_what_kubespiffe_signs() -> None:
    bundle, private = _bundle(KeyType.EC_P256, KeyType.RSA_2048, KeyType.EC_P384)
    document = json.loads(jwks_document(bundle))
    by_kid = {k["kid"]: k for k in document["keys"]}
    assert set(by_kid) == {"kid-0", "kid-1", "kid-2"}
    assert [by_kid[k]["alg"] for k in sorted(by_kid)] == ["ES256", "RS256", "ES384"]
    assert all(k["use"] == "sig" for k in by_kid.values())
    assert set(by_kid["kid-1"]) == {"kty", "n", "e", "kid", "use", "alg"}
    assert set(by_kid["kid-0"]) == {"kty", "crv", "x", "y", "kid", "use", "alg"}
    # Each published JWK verifies a JWT-SVID kubespiffe signs with the matching private key.
    now = dt.datetime.now(dt.UTC)
    spiffe_id = SpiffeId.parse("spiffe://example.org/w")
    for kid, key in private.items():
        token = jwtsvid.mint(key, kid, spiffe_id, ["aud"], dt.timedelta(minutes=5), now, "https://i")  # type: ignore[arg-type]
        jwk = jwt.PyJWK(by_kid[kid])
        claims = jwt.decode(
            token, jwk.key, algorithms=[by_kid[kid]["alg"]], audience="aud", issuer="https://i"
        )
        assert claims["sub"] == str(spiffe_id)


def test_discovery_document() -> None:
    bundle, _ = _bundle(KeyType.EC_P256, KeyType.RSA_2048)
    issuer = OidcIssuer.parse("https://oidc.example.com/prod")
    document = json.loads(discovery_document(issuer, bundle))
    assert document == {
        "issuer": "https://oidc.example.com/prod",
        "jwks_uri": "https://oidc.example.com/prod/keys",
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["ES256", "RS256"],
        "claims_supported": ["sub", "aud", "exp", "iat", "iss"],
    }


def test_signing_algorithm_refuses_keys_kubespiffe_never_signs_with() -> None:
    from cryptography.hazmat.primitives.asymmetric import ed25519

    with pytest.raises(OidcIssuerError, match="no JOSE algorithm"):
        signing_algorithm(ed25519.Ed25519PrivateKey.generate().public_key())


BASE = ["--trust-domain=example.org", "--namespace=ks"]


def test_flags_oidc_issuer_is_the_jwt_svid_issuer() -> None:
    config = parse_args([*BASE, "--oidc-issuer=https://oidc.example.com"])
    assert config.jwt_svid_issuer == "https://oidc.example.com" and config.oidc_port == 0
    # The older flag alone still sets iss (no discovery); both set must agree.
    assert parse_args([*BASE, "--jwt-issuer=anything"]).jwt_svid_issuer == "anything"
    same = ["--jwt-issuer=https://oidc.example.com", "--oidc-issuer=https://oidc.example.com"]
    assert parse_args([*BASE, *same]).jwt_svid_issuer == "https://oidc.example.com"
    served = parse_args(
        [*BASE, "--oidc-port=8447", "--oidc-issuer=https://o.example", "--oidc-tls-secret=oidc-tls"]
    )
    assert served.oidc() == OidcIssuer("https://o.example")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--oidc-port=8447"], "--oidc-port needs --oidc-issuer"),
        (["--oidc-port=8447", "--oidc-issuer=https://o.example"], "--oidc-port needs --oidc-tls-secret"),
        (["--oidc-issuer=http://o.example"], "--oidc-issuer 'http://o.example': the issuer URL must start"),
        (["--oidc-issuer=https://a.example", "--jwt-issuer=https://b.example"], "--jwt-issuer differs"),
        (["--oidc-port=70000"], "must be between 0 and 65535"),
        (["--bundle-configmap-key=bundle.spiffe.json"], "taken by the SPIFFE bundle"),
        (["--bundle-configmap-key=a/b"], "is not a ConfigMap key"),
    ],
)
def test_flags_refused(flags: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args([*BASE, *flags])
    assert message in capsys.readouterr().err


def test_bundle_configmap_key() -> None:
    assert check_pem_key("trust-bundle.pem") == "trust-bundle.pem"
    for bad in ("", ".", "..", "a b", "x" * 254):
        with pytest.raises(ValueError, match="not a ConfigMap key"):
            check_pem_key(bad)
    config = parse_args([*BASE, "--bundle-configmap-key=trust-bundle.pem", "--agent-image=x"])
    assert config.injection().bundle_key == "trust-bundle.pem"  # the injected agent mounts that key


async def test_routes_on_a_real_https_server_follow_the_bundle() -> None:
    now = dt.datetime.now(dt.UTC)
    issued = build(name("localhost"), None, not_before=now - DAY, not_after=now + DAY)
    key_pem = issued.key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    tls = StaticTls(issued.cert.public_bytes(Encoding.PEM), key_pem)
    bundle, _ = _bundle(KeyType.EC_P256)
    trust = Versioned(BundleSet(bundle))
    issuer = OidcIssuer.parse("https://localhost/x")
    server = await serve("127.0.0.1", 0, tls, oidc_routes(issuer, trust))
    port = server.sockets[0].getsockname()[1]
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE

    def get(path: str, method: str = "GET") -> tuple[int, bytes, str | None]:
        request = urllib.request.Request(f"https://127.0.0.1:{port}{path}", method=method)
        try:
            with urllib.request.urlopen(request, timeout=5, context=context) as resp:  # noqa: S310
                return resp.status, resp.read(), resp.headers["Cache-Control"]
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read(), None

    try:
        status, body, cache = await asyncio.to_thread(get, "/x/keys")
        assert (status, cache) == (200, "public, max-age=300")
        assert {k["kid"] for k in json.loads(body)["keys"]} == {"kid-0"}
        # A prepared key published in the bundle set is served on the next request.
        prepared, _ = _bundle(KeyType.EC_P256, KeyType.RSA_2048)
        await trust.publish(BundleSet(prepared))
        status, body, _ = await asyncio.to_thread(get, "/x/keys")
        assert {k["kid"] for k in json.loads(body)["keys"]} == {"kid-0", "kid-1"}
        status, body, _ = await asyncio.to_thread(get, "/x/.well-known/openid-configuration")
        assert json.loads(body)["id_token_signing_alg_values_supported"] == ["ES256", "RS256"]
        assert await asyncio.to_thread(get, "/keys") == (404, b"404: Not Found", None)
        assert await asyncio.to_thread(get, "/x/keys", "POST") == (405, b"405: Method Not Allowed", None)
    finally:
        await server.wait_closed()
