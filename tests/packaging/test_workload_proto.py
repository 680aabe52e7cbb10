"""kubespiffe's compiled SPIFFE Workload API: spec wire names, and one process with py-spiffe's copy.

Both copies define the spec's top-level symbols; protobuf's default pool refuses the second ("duplicate
symbol"), so kubespiffe's copy lives in its own pool. Each import order runs in a fresh interpreter,
because within this test process whichever module came first would decide the order."""

from __future__ import annotations

import subprocess
import sys

import pytest
from google.protobuf import json_format

from kubespiffe.proto import workload_pb2, workload_pb2_grpc, workload_pool

BOTH = """
import importlib, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
from kubespiffe.proto import workload_pb2 as ours
from spiffe._proto import workload_pb2 as theirs
from spiffe import WorkloadApiClient  # py-spiffe's public client, which loads its stubs
svid = ours.X509SVID(spiffe_id="spiffe://example.org/web", x509_svid=b"der", hint="web")
sent = ours.X509SVIDResponse(svids=[svid], federated_bundles={"spiffe://peer.test": b"ca"})
got = theirs.X509SVIDResponse.FromString(sent.SerializeToString())
assert got.svids[0].hint == "web" and dict(got.federated_bundles) == {"spiffe://peer.test": b"ca"}
back = ours.X509SVIDResponse.FromString(got.SerializeToString())
assert back == sent
print("ok")
"""


@pytest.mark.parametrize(
    "order",
    [
        ("kubespiffe.proto.workload_pb2_grpc", "spiffe._proto.workload_pb2_grpc"),
        ("spiffe._proto.workload_pb2_grpc", "kubespiffe.proto.workload_pb2_grpc"),
    ],
)
def test_imports_beside_py_spiffe_in_either_order(order: tuple[str, str]) -> None:
    result = subprocess.run(
        [sys.executable, "-c", BOTH, *order], capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_wire_names_are_the_specs() -> None:
    """No proto package: the service is `SpiffeWorkloadAPI`, which makes the paths clients call."""
    service = workload_pb2.DESCRIPTOR.services_by_name["SpiffeWorkloadAPI"]
    assert workload_pb2.DESCRIPTOR.package == ""
    assert service.full_name == "SpiffeWorkloadAPI"
    assert [m.name for m in service.methods] == [
        "FetchX509SVID",
        "FetchX509Bundles",
        "FetchJWTSVID",
        "FetchJWTBundles",
        "ValidateJWTSVID",
    ]
    assert workload_pb2.DESCRIPTOR.name == "kubespiffe/proto/workload.proto"
    assert workload_pb2_grpc.SpiffeWorkloadAPIServicer.__name__ == "SpiffeWorkloadAPIServicer"


def test_private_pool_resolves_other_files_from_the_default_pool() -> None:
    """So the pool can back server reflection for every service on the agent's socket."""
    # The agent's health service (grpclib's copy of health.proto) lives in the default pool.
    from grpclib.health.v1 import health_pb2  # noqa: F401

    ours = workload_pool.POOL.FindFileContainingSymbol("SpiffeWorkloadAPI")
    assert ours.name == workload_pb2.DESCRIPTOR.name
    health = workload_pool.POOL.FindFileContainingSymbol("grpc.health.v1.Health")
    assert health.name == "grpclib/health/v1/health.proto"
    claims = workload_pb2.ValidateJWTSVIDResponse(spiffe_id="spiffe://example.org/web").claims
    claims.update({"aud": ["vault"]})
    assert json_format.MessageToDict(claims) == {"aud": ["vault"]}
