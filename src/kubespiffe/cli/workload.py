"""CLI calls against a SPIFFE Workload API socket (the agent's, or any conforming one).

Uses the py-spiffe generated stubs directly: one call, one answer, clear errors, no background threads.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kubespiffe.agent.files import write_x509_svids
from kubespiffe.errors import KubespiffeError
from kubespiffe.proto import workload_pb2, workload_pb2_grpc
from kubespiffe.spiffe.bundle import parse_der_certificates
from kubespiffe.spiffe.spiffeid import SpiffeId
from kubespiffe.spiffe.x509svid import X509Svid

HEADER = (("workload.spiffe.io", "true"),)
ENV_SOCKET = "SPIFFE_ENDPOINT_SOCKET"

EXIT_NO_IDENTITY = 3
EXIT_UNREACHABLE = 5
EXIT_REFUSED = 7
EXIT_INVALID = 8


class WorkloadError(KubespiffeError):
    """A Workload API call from the CLI failed; `exit_code` says how (see the CLI's exit codes)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def endpoint(socket: str | None) -> str:
    """gRPC target for --socket or $SPIFFE_ENDPOINT_SOCKET (`unix:///abs/path` or `tcp://IP:PORT`)."""
    value = socket or os.environ.get(ENV_SOCKET)
    if not value:
        raise WorkloadError(f"no Workload API socket: pass --socket or set {ENV_SOCKET}", 2)
    if value.startswith("unix://"):
        path = value[len("unix://") :]
        if not path.startswith("/"):
            raise WorkloadError(f"{value!r}: a unix socket address must be unix:///absolute/path", 2)
        return f"unix://{path}"
    if value.startswith("tcp://"):
        return value[len("tcp://") :]
    if value.startswith("/"):
        return f"unix://{value}"
    raise WorkloadError(f"{value!r} is neither unix:///path nor tcp://IP:PORT", 2)


def _error(exc: grpc.RpcError) -> WorkloadError:
    code, detail = exc.code(), exc.details()
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return WorkloadError(f"no identity: {detail}", EXIT_NO_IDENTITY)
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return WorkloadError(f"Workload API unavailable: {detail}", EXIT_UNREACHABLE)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return WorkloadError(str(detail), EXIT_INVALID)
    return WorkloadError(f"Workload API refused ({code.name}): {detail}", EXIT_REFUSED)


def fetch_x509(target: str, write: Path | None, timeout: float) -> list[str]:
    with grpc.insecure_channel(target) as channel:
        stub = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)
        try:
            stream = stub.FetchX509SVID(workload_pb2.X509SVIDRequest(), metadata=HEADER, timeout=timeout)
            response = next(iter(stream))
            stream.cancel()  # type: ignore[no-untyped-call]  # grpc-stubs leaves Call.cancel untyped
        except grpc.RpcError as exc:
            raise _error(exc) from None
    svids = [
        X509Svid.from_der(SpiffeId.parse(s.spiffe_id), s.x509_svid, s.x509_svid_key, s.hint)
        for s in response.svids
    ]
    if write and svids:
        write_x509_svids(write, svids, parse_der_certificates(response.svids[0].bundle))
    return [
        f"{index}\t{svid.spiffe_id}\texpires {svid.expires_at.isoformat()}"
        + (f"\thint {svid.hint}" if svid.hint else "")
        for index, svid in enumerate(svids)
    ]


def _unary(target: str, rpc: str, request: Any, timeout: float) -> Any:
    """One unary Workload API call with the security header; gRPC errors become WorkloadError."""
    with grpc.insecure_channel(target) as channel:
        stub = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)
        try:
            return getattr(stub, rpc)(request, metadata=HEADER, timeout=timeout)
        except grpc.RpcError as exc:
            raise _error(exc) from None


def fetch_jwt(target: str, audience: list[str], spiffe_id: str, timeout: float) -> list[dict[str, object]]:
    request = workload_pb2.JWTSVIDRequest(audience=audience, spiffe_id=spiffe_id)
    response = _unary(target, "FetchJWTSVID", request, timeout)
    result = []
    for svid in response.svids:
        claims = json.loads(base64.urlsafe_b64decode(svid.svid.split(".")[1] + "=="))
        result.append({"spiffe_id": svid.spiffe_id, "token": svid.svid, "claims": claims, "hint": svid.hint})
    return result


def validate_jwt(target: str, audience: str, token: str, timeout: float) -> dict[str, object]:
    request = workload_pb2.ValidateJWTSVIDRequest(audience=audience, svid=token)
    response = _unary(target, "ValidateJWTSVID", request, timeout)
    return {"spiffe_id": response.spiffe_id, "claims": MessageToDict(response.claims)}


def probe(target: str, service: str, timeout: float) -> int:
    """The agent's gRPC health service: "" = SVID in hand, kubespiffe.upstream = kubespiffed reachable."""
    with grpc.insecure_channel(target) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.RpcError as exc:
            raise _error(exc) from None
    if response.status != health_pb2.HealthCheckResponse.SERVING:
        raise WorkloadError(
            f"not ready ({health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)})", 1
        )
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        target = endpoint(args.socket)
        if args.command == "probe":
            return probe(target, "kubespiffe.upstream" if args.upstream else "", args.timeout)
        if args.command == "validate":
            print(json.dumps(validate_jwt(target, args.audience, args.token, args.timeout), indent=2))
        elif args.kind == "x509":
            for line in fetch_x509(target, Path(args.write) if args.write else None, args.timeout):
                print(line)
        else:
            for svid in fetch_jwt(target, args.audience, args.spiffe_id or "", args.timeout):
                print(svid["token"])
                print(json.dumps(svid["claims"], indent=2))
    except WorkloadError as exc:
        print(f"kubespiffe: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0
