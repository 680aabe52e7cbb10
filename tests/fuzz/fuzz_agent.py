"""Fuzz target for the agent's SDS request handling: a DiscoveryRequest's bytes in, Envoy's response out.

gRPC decodes the request with Envoy's generated message before the handler runs (an undecodable one
never reaches kubespiffe), so inputs that are not a DiscoveryRequest are skipped; everything the handler
then reads (resource names, node metadata, nonce and version) is the fuzzer's.
"""

from __future__ import annotations

from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf.message import DecodeError

from kubespiffe.agent.sds import _spiffe_validator as spiffe_validator
from kubespiffe.agent.sds import response
from kubespiffe.agent.sdsresources import SdsRequestError, select
from kubespiffe.agent.sdsstream import StreamBook
from kubespiffe.agent.state import Snapshot
from kubespiffe.spiffe.bundle import Bundle, BundleSet
from kubespiffe.spiffe.spiffeid import SpiffeId, TrustDomain
from kubespiffe.spiffe.x509svid import X509Svid
from tests.fuzz.common import Target
from tests.unit.certs import make_ca, make_leaf

OWN, FED = TrustDomain("example.org"), TrustDomain("fed.test")
_OWN_CA, _FED_CA = make_ca("own"), make_ca("fed", trust_domain="fed.test")
IDS = ("spiffe://example.org/ns/a/sa/web", "spiffe://example.org/ns/a/sa/admin")


def _svid(spiffe_id: str) -> X509Svid:
    leaf = make_leaf(_OWN_CA, spiffe_id)
    return X509Svid(SpiffeId.parse(spiffe_id), (leaf.cert,), leaf.key)


SNAPSHOT = Snapshot(
    BundleSet(Bundle(OWN, (_OWN_CA.cert,)), {FED: Bundle(FED, (_FED_CA.cert,))}),
    tuple(_svid(i) for i in IDS),
)


def sds_request(data: bytes) -> None:
    """Only SdsRequestError may escape; what is served is what was asked for (everything when nothing
    was named), and the response serializes."""
    try:
        request = discovery_pb2.DiscoveryRequest.FromString(data)
    except DecodeError:
        return
    names = tuple(request.resource_names)
    spiffe = spiffe_validator(request, True)
    StreamBook().receive(
        request.version_info, request.response_nonce, names, request.HasField("error_detail")
    )
    try:
        resources = select(SNAPSHOT, names, spiffe)
    except SdsRequestError:
        return
    served = [r.name for r in resources]
    assert len(served) == len(set(served))
    assert set(served) <= set(names) if any(names) else len(served) == len(IDS) + 2
    response(resources, "1", "nonce").SerializeToString()


TARGETS = (
    Target(
        "sds",
        sds_request,
        max_len=2048,
        dictionary=(
            b"default",
            b"ROOTCA",
            b"ALL",
            b"disable_spiffe_cert_validation",
            *(i.encode() for i in IDS),
        ),
    ),
)
