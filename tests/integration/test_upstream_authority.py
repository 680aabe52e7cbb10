"""kubespiffed under an operator's CA (--upstream-ca-secret): real processes, the chart's RBAC for the Secret.

SVIDs chain to the upstream root through kubespiffed's intermediate, the bundle (authority Secret, issuer
API, bundle endpoint) holds the root alone, rotation makes a new intermediate under the same root, and
every unusable upstream Secret stops kubespiffed before it creates or serves anything.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import ssl
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.resources.core_v1 import Secret

from kubespiffe.agent.issuer_client import X509Result, fetch_x509
from kubespiffe.constants import SERVER_ID_PATH
from kubespiffe.devenv.controlplane import ControlPlane
from kubespiffe.devenv.stack import NAMESPACE, Kubespiffed, authority_bundle_pem, service_account_token
from kubespiffe.spiffe.bundle import parse_pem_certificates
from kubespiffe.spiffe.spiffeid import SpiffeId, TrustDomain
from kubespiffe.spiffe.x509svid import verify_chain

from .kubespiffed import Running, allow_secret, pod_with_token, register
from .upstream import CorpCa, authority_state, corp_ca, create_secret, grant_as_the_chart_does, rotate

pytestmark = pytest.mark.integration

TD = TrustDomain("example.org")
SERVER_ID = SpiffeId(TD, SERVER_ID_PATH)


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def upstream_daemon(
    control_plane: ControlPlane, kube: AsyncClient, kubespiffed: Running
) -> AsyncIterator[Callable[[str, str], Kubespiffed]]:
    """kubespiffed processes with their own authority Secret and the given upstream Secret; stopped after."""
    started: list[Kubespiffed] = []

    def make(authority: str, upstream: str) -> Kubespiffed:
        daemon = Kubespiffed(
            control_plane,
            extra_args=(
                f"--authority-secret={authority}",
                "--bundle-configmap=",  # the session's bundle ConfigMaps stay the session's
                f"--upstream-ca-secret={upstream}" if upstream else "--upstream-ca-secret=",
                "--bundle-refresh-hint=1s",  # a prepared slot activates 3 s after it is published
            ),
        )
        started.append(daemon)
        return daemon

    yield make
    for daemon in started:
        daemon.stop()


async def _prepare(kube: AsyncClient, ca: CorpCa | None = None) -> tuple[str, str]:
    """A fresh authority Secret name and an upstream Secret (holding `ca`) kubespiffed may read."""
    authority, upstream = _name("up-authority"), _name("corp-ca")
    await allow_secret(kube, authority)
    await grant_as_the_chart_does(kube, f"kubespiffe:{upstream}", f"upstreamAuthority.secret={upstream}")
    if ca is not None:
        await create_secret(kube, upstream, ca.secret_data())
    return authority, upstream


async def _fetch(daemon: Kubespiffed, token: str, root: x509.Certificate) -> X509Result:
    return await fetch_x509(daemon.address, token, [root], server_id=SERVER_ID)


def _bundle_endpoint_x5c(daemon: Kubespiffed, root: x509.Certificate) -> list[bytes]:
    """The X.509 authorities the bundle endpoint serves (https_spiffe: its TLS chains to the root too)."""
    context = ssl.create_default_context(cadata=root.public_bytes(Encoding.PEM).decode())
    context.check_hostname = False
    url = f"https://127.0.0.1:{daemon.bundle_port}/"
    with urllib.request.urlopen(url, timeout=5, context=context) as response:
        document = json.loads(response.read())
    return [base64.b64decode(k["x5c"][0]) for k in document["keys"] if k.get("use") == "x509-svid"]


async def test_svids_chain_to_the_upstream_root_and_rotation_keeps_it(
    kube: AsyncClient, namespace: str, upstream_daemon: Callable[[str, str], Kubespiffed]
) -> None:
    corp = corp_ca()
    root = corp.certificate
    authority, upstream = await _prepare(kube, corp)
    daemon = upstream_daemon(authority, upstream)
    daemon.start(await service_account_token(kube))
    bundle_pem = await authority_bundle_pem(kube, secret=authority)
    assert parse_pem_certificates(bundle_pem) == [root]  # the root only, never the intermediate
    await asyncio.to_thread(daemon.wait_ready, bundle_pem)  # its own TLS chain verifies against the root

    await register(kube, "upstream", {"serviceAccountNames": ["upstream"]}, namespace)
    _, token = await pod_with_token(kube, namespace, "upstream", "upstream")
    expected = SpiffeId(TD, f"/ns/{namespace}/sa/upstream")
    first = await _fetch(daemon, token, root)
    svid = first.svids[0]
    intermediate = (await authority_state(kube, authority)).active_x509().certificate
    assert svid.chain == (svid.leaf, intermediate)
    assert intermediate.issuer == root.subject
    assert verify_chain(list(svid.chain), {TD: [root]}, dt.datetime.now(dt.UTC)) == expected
    assert first.bundle == (root,)
    assert _bundle_endpoint_x5c(daemon, root) == [root.public_bytes(Encoding.DER)]

    # Rotation: a new intermediate under the same root; old and new SVIDs verify with the same bundle.
    after = await rotate(kube, authority)
    assert after.trust_bundle() == [root]
    new_intermediate = after.active_x509().certificate
    assert new_intermediate != intermediate and new_intermediate.issuer == root.subject
    deadline = time.monotonic() + 15
    while (second := await _fetch(daemon, token, root)).svids[0].chain[1] != new_intermediate:
        assert time.monotonic() < deadline, "kubespiffed kept signing with the old intermediate"
        await asyncio.sleep(0.3)
    now = dt.datetime.now(dt.UTC)
    for chain in (second.svids[0].chain, svid.chain):
        assert verify_chain(list(chain), {TD: list(second.bundle)}, now) == expected
    assert second.bundle == (root,)
    assert parse_pem_certificates(await authority_bundle_pem(kube, secret=authority)) == [root]


async def test_a_self_signed_authority_moves_under_the_upstream(
    kube: AsyncClient, namespace: str, upstream_daemon: Callable[[str, str], Kubespiffed]
) -> None:
    """Turning the upstream on for an existing authority: the next slot is an intermediate, at once; the old
    self-signed CA stays published until it is retired and dropped."""
    corp = corp_ca()
    authority, upstream = await _prepare(kube, corp)
    token = await service_account_token(kube)
    plain = upstream_daemon(authority, "")
    plain.start(token)
    old_pem = await authority_bundle_pem(kube, secret=authority)
    await asyncio.to_thread(plain.wait_ready, old_pem)
    plain.stop()
    (self_signed,) = parse_pem_certificates(old_pem)

    daemon = upstream_daemon(authority, upstream)
    daemon.start(token)
    await asyncio.to_thread(daemon.wait_ready, old_pem)
    deadline = time.monotonic() + 30
    while not (state := await authority_state(kube, authority)).active_x509().above:
        assert time.monotonic() < deadline, "the upstream's intermediate never became active"
        await asyncio.sleep(0.5)
    assert state.trust_bundle() == [self_signed, corp.certificate]
    await register(kube, "moved", {"serviceAccountNames": ["moved"]}, namespace)
    _, pod_token = await pod_with_token(kube, namespace, "moved", "moved")
    deadline = time.monotonic() + 15
    while len((result := await _fetch(daemon, pod_token, corp.certificate)).svids[0].chain) != 2:
        assert time.monotonic() < deadline, "kubespiffed kept signing with the self-signed CA"
        await asyncio.sleep(0.3)
    assert set(result.bundle) == {self_signed, corp.certificate}
    assert verify_chain(list(result.svids[0].chain), {TD: [corp.certificate]}, dt.datetime.now(dt.UTC))


def _bad_upstreams() -> dict[str, tuple[dict[str, str] | None, str]]:
    good = corp_ca()
    leaf = corp_ca("Corp Server", ca=False).secret_data()
    expired = corp_ca(start=dt.timedelta(days=-30), lifetime=dt.timedelta(days=1)).secret_data()
    mismatched = {**good.secret_data(), "tls.key": corp_ca().secret_data()["tls.key"]}
    elsewhere = x509.NameConstraints(
        permitted_subtrees=[x509.UniformResourceIdentifier("other.org")], excluded_subtrees=None
    )
    constrained = corp_ca(extra=[(elsewhere, True)]).secret_data()
    return {
        "not a CA": (
            leaf,
            "tls.crt is not a CA that can sign intermediates: "
            "issuer CN=Corp Server,O=Corp is not a CA (cA=true missing)",
        ),
        "expired": (expired, "CN=Corp Root CA,O=Corp expired at"),
        "key does not match": (mismatched, "tls.key does not match the first certificate of tls.crt"),
        "no tls.key": ({"tls.crt": good.secret_data()["tls.crt"]}, "has no tls.key"),
        "no Secret": (None, "cannot be read: 404"),
        "name constraints": (constrained, "is outside the name constraints of CN=Corp Root CA,O=Corp"),
    }


BAD = _bad_upstreams()


@pytest.mark.parametrize("case", list(BAD))
async def test_an_unusable_upstream_secret_stops_kubespiffed(
    kube: AsyncClient, upstream_daemon: Callable[[str, str], Kubespiffed], case: str
) -> None:
    data, reason = BAD[case]
    authority, upstream = await _prepare(kube)
    if data is not None:
        await create_secret(kube, upstream, data)
    daemon = upstream_daemon(authority, upstream)
    daemon.start(await service_account_token(kube))
    assert daemon.process is not None
    code = await asyncio.to_thread(daemon.process.wait, 30)
    assert code != 0
    text = daemon.log.read_text()
    line = next((x for x in text.splitlines() if "refusing to start" in x), "")
    assert f"ERROR kubespiffed refusing to start: upstream Secret {NAMESPACE}/{upstream}" in line, text[
        -3000:
    ]
    assert reason in line, line
    # Never a half-working CA: no authority was created, nothing was served.
    with pytest.raises(ApiError) as missing:
        await kube.get(Secret, authority, namespace=NAMESPACE)
    assert missing.value.status.code == 404
    assert "kubespiffed ready" not in text
