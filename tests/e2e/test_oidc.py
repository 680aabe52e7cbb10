"""OIDC discovery served by kubespiffed, checked by verifiers kubespiffe did not write: go-oidc (the Go
library behind many relying parties) and PyJWT's PyJWKClient. Each discovers from the issuer URL over
TLS (trusting the CA that `kubespiffe dev up` would write as oidc-ca.pem), fetches the JWKS and verifies a
JWT-SVID a workload fetched through the Workload API; again across `kubespiffe ca rotate`."""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from lightkube import AsyncClient
from spiffe._proto import workload_pb2, workload_pb2_grpc

from kubespiffe.devenv.controlplane import ControlPlane, free_port
from kubespiffe.devenv.oidc import OidcSetup, enable_oidc, ensure_oidcverify
from kubespiffe.devenv.stack import Kubespiffed, authority_bundle_pem, service_account_token
from tests.e2e.conftest import AgentFactory, AgentProcess
from tests.integration.kubespiffed import allow_secret, register

pytestmark = pytest.mark.e2e

HEADER = (("workload.spiffe.io", "true"),)


@dataclass
class OidcDaemon:
    daemon: Kubespiffed
    bundle_pem: bytes
    oidc: OidcSetup
    secret: str
    ca_file: Path

    @property
    def tls(self) -> ssl.SSLContext:
        return ssl.create_default_context(cadata=self.oidc.ca_pem.decode())

    def get(self, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
        url = f"https://localhost:{self.oidc.port}{path}"
        request = urllib.request.Request(url, method=method)
        try:
            with urllib.request.urlopen(request, timeout=5, context=self.tls) as resp:  # noqa: S310
                return resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()

    def kids(self, jwks_path: str) -> set[str]:
        status, _, body = self.get(jwks_path)
        assert status == 200
        return {key["kid"] for key in json.loads(body)["keys"]}


@pytest.fixture(scope="session")
def oidcverify() -> Path:
    return ensure_oidcverify()


async def _start(
    control_plane: ControlPlane, kube: AsyncClient, tmp_path: Path, *extra: str, path: str = ""
) -> OidcDaemon:
    secret = f"oidc-{uuid.uuid4().hex[:8]}"
    await allow_secret(kube, secret)
    oidc = await enable_oidc(kube, free_port(), secret=f"{secret}-tls", path=path)
    oidc.write(tmp_path)
    daemon = Kubespiffed(
        control_plane,
        extra_args=(
            f"--authority-secret={secret}",
            "--bundle-refresh-hint=2s",
            "--bundle-configmap=",  # another authority: leave the session's bundle ConfigMaps alone
            *oidc.args(),
            *extra,
        ),
    )
    daemon.start(await service_account_token(kube))
    bundle = await authority_bundle_pem(kube, secret=secret)
    await asyncio.to_thread(daemon.wait_ready, bundle)
    assert (tmp_path / "oidc-issuer").read_text() == oidc.issuer + "\n"
    return OidcDaemon(daemon, bundle, oidc, secret, tmp_path / "oidc-ca.pem")


@pytest.fixture
def started() -> Iterator[list[OidcDaemon]]:
    """The kubespiffeds a test started, stopped after it whatever happened."""
    daemons: list[OidcDaemon] = []
    yield daemons
    for d in daemons:
        d.daemon.stop()


def _fetch_jwt(agent: AgentProcess, audience: str) -> str:
    with grpc.insecure_channel(agent.address) as channel:
        stub = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)
        request = workload_pb2.JWTSVIDRequest(audience=[audience])
        token: str = stub.FetchJWTSVID(request, metadata=HEADER, timeout=10).svids[0].svid
        return token


def _go_oidc(binary: Path, served: OidcDaemon, audience: str, token: str) -> dict[str, Any]:
    """go-oidc: discovery, JWKS, signature, iss, aud, exp. AssertionError with its reason on refusal."""
    done = subprocess.run(
        [str(binary), "-issuer", served.oidc.issuer, "-ca", str(served.ca_file), "-audience", audience],
        input=token,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if done.returncode != 0:
        raise AssertionError(f"go-oidc refused the token: {done.stderr.strip()}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def _pyjwt(served: OidcDaemon, audience: str, token: str) -> dict[str, Any]:
    """PyJWT: discovery by hand (it has no discovery client), then PyJWKClient on the jwks_uri."""
    issuer = served.oidc.issuer
    url = issuer.rstrip("/") + "/.well-known/openid-configuration"
    with urllib.request.urlopen(url, timeout=5, context=served.tls) as resp:  # noqa: S310 (https, loopback)
        discovery = json.loads(resp.read())
    assert discovery["issuer"] == issuer
    keys = jwt.PyJWKClient(discovery["jwks_uri"], cache_jwk_set=False, ssl_context=served.tls)
    claims: dict[str, Any] = jwt.decode(
        token,
        keys.get_signing_key_from_jwt(token).key,
        algorithms=discovery["id_token_signing_alg_values_supported"],
        audience=audience,
        issuer=issuer,
    )
    return claims


def _cli(admin_kubeconfig: Path, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "kubespiffe.cli.main", *args, "--kubeconfig", str(admin_kubeconfig)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return done.stdout


async def test_go_oidc_and_pyjwt_verify_jwt_svids_across_rotation(
    control_plane: ControlPlane,
    kube: AsyncClient,
    admin_kubeconfig: Path,
    namespace: str,
    start_agent: AgentFactory,
    oidcverify: Path,
    started: list[OidcDaemon],
    tmp_path: Path,
) -> None:
    served = await _start(control_plane, kube, tmp_path)
    started.append(served)
    issuer = served.oidc.issuer
    await register(kube, "oidc", {"serviceAccountNames": ["oidc"]}, namespace)
    agent = await start_agent("oidc-1", "oidc", server=served.daemon.address, bundle_pem=served.bundle_pem)

    old = await asyncio.to_thread(_fetch_jwt, agent, "sts.amazonaws.com")
    old_kid = jwt.get_unverified_header(old)["kid"]
    verified = await asyncio.to_thread(_go_oidc, oidcverify, served, "sts.amazonaws.com", old)
    assert verified["claims"]["iss"] == issuer  # byte for byte: go-oidc compared it too
    assert verified["claims"]["sub"] == f"spiffe://example.org/ns/{namespace}/sa/oidc"
    discovery = verified["discovery"]
    assert discovery["jwks_uri"] == f"{issuer}/keys"
    assert discovery["id_token_signing_alg_values_supported"] == ["ES256"]
    assert (await asyncio.to_thread(_pyjwt, served, "sts.amazonaws.com", old))["iss"] == issuer
    assert await asyncio.to_thread(served.kids, "/keys") == {old_kid}

    await asyncio.to_thread(_cli, admin_kubeconfig, "ca", "rotate", "--secret", served.secret)
    # Published before use: the new key is in the JWKS while fresh tokens are still signed by the old one.
    deadline = time.monotonic() + 20
    while len(kids := await asyncio.to_thread(served.kids, "/keys")) < 2:
        assert time.monotonic() < deadline, "the prepared key never reached the JWKS"
        await asyncio.sleep(0.2)
    new_kid = next(iter(kids - {old_kid}))
    fresh = await asyncio.to_thread(_fetch_jwt, agent, "published-ahead")
    assert jwt.get_unverified_header(fresh)["kid"] == old_kid, "a key signed before the grace period"

    # After the grace period (3 x 2 s) the new key signs; relying parties verify with it at once.
    deadline = time.monotonic() + 30
    attempt = 0
    while True:
        attempt += 1
        audience = f"after-rotation-{attempt}"  # a new audience: the agent caches tokens per audience
        new = await asyncio.to_thread(_fetch_jwt, agent, audience)
        if jwt.get_unverified_header(new)["kid"] == new_kid:
            break
        assert time.monotonic() < deadline, "JWT-SVIDs never moved to the new key"
        await asyncio.sleep(1)
    assert (await asyncio.to_thread(_go_oidc, oidcverify, served, audience, new))["claims"]["iss"] == issuer
    assert (await asyncio.to_thread(_pyjwt, served, audience, new))["sub"].endswith("/sa/oidc")

    # The old token is still within its lifetime: its key stays published (retired) and still verifies.
    assert "retired" in await asyncio.to_thread(
        _cli, admin_kubeconfig, "ca", "show", "--secret", served.secret
    )
    assert await asyncio.to_thread(served.kids, "/keys") == {old_kid, new_kid}
    await asyncio.to_thread(_go_oidc, oidcverify, served, "sts.amazonaws.com", old)
    await asyncio.to_thread(_pyjwt, served, "sts.amazonaws.com", old)
    # A token for another audience is refused (the verifier is real, not a rubber stamp).
    with pytest.raises(AssertionError, match="expected audience"):
        await asyncio.to_thread(_go_oidc, oidcverify, served, "someone-else", old)


async def test_rs256_issuer_with_a_path_and_bad_requests(
    control_plane: ControlPlane,
    kube: AsyncClient,
    namespace: str,
    start_agent: AgentFactory,
    oidcverify: Path,
    started: list[OidcDaemon],
    tmp_path: Path,
) -> None:
    served = await _start(control_plane, kube, tmp_path, "--jwt-key-type=rsa-2048", path="/cluster-1")
    started.append(served)
    await register(kube, "oidc-rsa", {"serviceAccountNames": ["oidc-rsa"]}, namespace)
    agent = await start_agent(
        "oidc-rsa-1", "oidc-rsa", server=served.daemon.address, bundle_pem=served.bundle_pem
    )
    token = await asyncio.to_thread(_fetch_jwt, agent, "api://AzureADTokenExchange")
    assert jwt.get_unverified_header(token)["alg"] == "RS256"
    verified = await asyncio.to_thread(_go_oidc, oidcverify, served, "api://AzureADTokenExchange", token)
    assert verified["claims"]["iss"] == served.oidc.issuer
    assert verified["discovery"]["id_token_signing_alg_values_supported"] == ["RS256"]
    await asyncio.to_thread(_pyjwt, served, "api://AzureADTokenExchange", token)

    status, headers, body = await asyncio.to_thread(served.get, "/cluster-1/keys")
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert headers["Cache-Control"] == "public, max-age=2"
    [key] = json.loads(body)["keys"]
    assert (key["kty"], key["use"], key["alg"]) == ("RSA", "sig", "RS256")
    assert set(key) == {"kty", "n", "e", "kid", "use", "alg"}  # public members only

    # Anything else: 404 or 405 with nothing but the status line's words.
    for path in ("/", "/keys", "/.well-known/openid-configuration", "/cluster-1/keys/x", "/cluster-1/../x"):
        status, headers, body = await asyncio.to_thread(served.get, path)
        assert (status, body) == (404, b"404: Not Found"), path
        assert headers["Server"] == "kubespiffe"
    for method in ("POST", "PUT", "DELETE"):
        status, headers, body = await asyncio.to_thread(
            served.get, "/cluster-1/.well-known/openid-configuration", method
        )
        assert (status, body) == (405, b"405: Method Not Allowed"), method
    status, _, body = await asyncio.to_thread(served.get, "/cluster-1/keys", "HEAD")
    assert (status, body) == (200, b"")
