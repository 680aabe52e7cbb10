"""A federated peer that misbehaves: bad answers are refused with a clear status; the last good bundle stays.

The peer is a TLS server in this test (a real socket on 127.0.0.1) with its own CA; kubespiffed (the
session cluster's) fetches from it as the Lease holder.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.models.meta_v1 import ObjectMeta

from kubespiffe.agent.issuer_client import new_csr
from kubespiffe.authority.keys import KeyType, key_to_pem
from kubespiffe.authority.x509ca import create_self_signed_ca, load_csr, sign_x509_svid
from kubespiffe.kube.client import FederatedTrustDomain
from kubespiffe.server.https import server_context
from kubespiffe.spiffe.bundle import Bundle, bundle_to_json
from kubespiffe.spiffe.spiffeid import SpiffeId, TrustDomain
from tests.integration.kubespiffed import Running

pytestmark = pytest.mark.e2e

TD = TrustDomain("peer.test")
NOW = dt.datetime.now(dt.UTC)
CA = create_self_signed_ca(TD, KeyType.EC_P256, dt.timedelta(days=1), NOW)


def _serving(spiffe_id: str) -> tuple[bytes, bytes]:
    key, csr = new_csr()
    leaf = sign_x509_svid(
        CA, load_csr(csr), SpiffeId.parse(spiffe_id), ("localhost",), dt.timedelta(hours=1), NOW
    )
    return leaf.public_bytes(Encoding.PEM), key_to_pem(key).encode()


class Peer:
    """Answers GET with whatever `body` is set to, over TLS with the SVID `identity`."""

    def __init__(self) -> None:
        self.body = b""
        self.good = bundle_to_json(Bundle(TD, (CA.certificate,), {}, sequence=7, refresh_hint=1))
        self.server: asyncio.Server | None = None
        self.identity = "spiffe://peer.test/kubespiffe/endpoint"

    async def start(self, port: int = 0) -> int:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(self.body)}\r\n\r\n"
            writer.write(head.encode() + self.body)
            await writer.drain()
            writer.close()

        chain, key = _serving(self.identity)
        self.server = await asyncio.start_server(
            handle, "127.0.0.1", port, ssl=server_context(chain, key), reuse_address=True
        )
        bound: int = self.server.sockets[0].getsockname()[1]
        return bound

    async def reidentify(self, spiffe_id: str) -> int:
        assert self.server is not None
        port: int = self.server.sockets[0].getsockname()[1]
        self.server.close()
        await self.server.wait_closed()
        self.identity = spiffe_id
        return await self.start(port)


@pytest.fixture
async def peer(kube: AsyncClient, kubespiffed: Running) -> AsyncIterator[tuple[Peer, int]]:
    peer = Peer()
    peer.body = peer.good
    port = await peer.start()
    yield peer, port
    if peer.server:
        peer.server.close()
    with contextlib.suppress(ApiError):
        await kube.delete(FederatedTrustDomain, "peer")


async def _status(kube: AsyncClient) -> dict[str, Any]:
    status: dict[str, Any] = (await kube.get(FederatedTrustDomain, "peer")).to_dict().get("status") or {}
    return status


async def _until(kube: AsyncClient, reason: str, after: str = "", timeout: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        status = await _status(kube)
        ready: dict[str, Any] = next((c for c in status.get("conditions") or [] if c["type"] == "Ready"), {})
        if ready.get("reason") == reason and status.get("lastRefreshTime", "") > after:
            return status
        assert time.monotonic() < deadline, f"never {reason}: {status}"
        await asyncio.sleep(0.2)


async def test_bad_answers_are_refused_and_the_last_good_bundle_stays(
    kube: AsyncClient, peer: tuple[Peer, int]
) -> None:
    server, port = peer
    await kube.create(
        FederatedTrustDomain(
            metadata=ObjectMeta(name="peer"),
            spec={
                "trustDomain": "peer.test",
                "bundleEndpointURL": f"https://127.0.0.1:{port}/",
                "bundleEndpointProfile": {"type": "https_spiffe", "endpointSPIFFEID": server.identity},
                "trustDomainBundle": bundle_to_json(Bundle(TD, (CA.certificate,))).decode(),
            },
        )
    )
    good = await _until(kube, "Fetched")
    assert good["sequence"] == 7 and json.loads(good["bundle"])["keys"]
    ca_jwk = json.loads(server.good)["keys"][0]
    cases = {
        "malformed": (b"{not json", "not valid JSON"),
        "oversized": (b'{"keys": [], "pad": "' + b"x" * (1 << 20) + b'"}', "larger than"),
        "duplicate kid": (
            json.dumps(
                {
                    "keys": [
                        {**ca_jwk, "use": "jwt-svid", "kid": "k"},
                        {**ca_jwk, "use": "jwt-svid", "kid": "k"},
                    ]
                }
            )
            .replace('"x5c"', '"x5c_"')
            .encode(),
            "duplicate kid",
        ),
        "x5c with two certificates": (
            json.dumps({"keys": [{**ca_jwk, "x5c": ca_jwk["x5c"] * 2}]}).encode(),
            "exactly one certificate",
        ),
    }
    for case, (body, message) in cases.items():
        server.body = body
        failed = await _until(kube, "FetchFailed", after=good["lastRefreshTime"])
        ready = next(c for c in failed["conditions"] if c["type"] == "Ready")
        assert message in ready["message"], (case, ready["message"])
        assert failed["bundle"] == good["bundle"], f"{case}: the last good bundle must stay"
        server.body = server.good
        good = await _until(kube, "Fetched", after=failed["lastRefreshTime"])

    await server.reidentify("spiffe://peer.test/someone/else")  # same port, wrong SPIFFE ID
    failed = await _until(kube, "FetchFailed", after=good["lastRefreshTime"])
    ready = next(c for c in failed["conditions"] if c["type"] == "Ready")
    assert "spiffe://peer.test/someone/else" in ready["message"]
    assert failed["bundle"] == good["bundle"]


async def test_https_web_endpoint_with_an_untrusted_certificate_is_refused(
    kube: AsyncClient, peer: tuple[Peer, int]
) -> None:
    _, port = peer  # its certificate chains to the peer's own CA, which no web PKI trusts
    await kube.create(
        FederatedTrustDomain(
            metadata=ObjectMeta(name="peer"),
            spec={
                "trustDomain": "peer.test",
                "bundleEndpointURL": f"https://localhost:{port}/",
                "bundleEndpointProfile": {"type": "https_web"},
            },
        )
    )
    failed = await _until(kube, "FetchFailed")
    ready = next(c for c in failed["conditions"] if c["type"] == "Ready")
    assert "certificate" in ready["message"].lower() or "tls" in ready["message"].lower(), ready["message"]
    assert "bundle" not in failed
