"""CLI calls against a SPIFFE Workload API socket (the agent's, or any conforming one).

One call, one answer, clear errors. grpclib, as in the agent: `kubespiffe probe` runs as the injected
sidecar's startup and readiness probe, a new process every few seconds in every pod, so it loads neither
grpcio nor a second copy of the gRPC health protocol (the agent serves grpclib's).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from google.protobuf.json_format import MessageToDict
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError, ProtocolError, StreamTerminatedError
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse

from kubespiffe.errors import KubespiffeError
from kubespiffe.proto import workload_pb2
from kubespiffe.proto.workload_pb2_grpclib import SpiffeWorkloadAPIStub

HEADER = {"workload.spiffe.io": "true"}
ENV_SOCKET = "SPIFFE_ENDPOINT_SOCKET"

EXIT_NO_IDENTITY = 3
EXIT_UNREACHABLE = 5
EXIT_REFUSED = 7
EXIT_INVALID = 8
WAIT_INTERVAL = 0.05  # seconds between a waiting probe's questions (a local socket: cheap)

T = TypeVar("T")


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


def _channel(target: str) -> Channel:
    if target.startswith("unix://"):
        return Channel(path=target[len("unix://") :])
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise WorkloadError(f"{target!r} is not IP:PORT", 2)
    return Channel(host.strip("[]"), int(port))


def _error(exc: GRPCError) -> WorkloadError:
    code, detail = exc.status, exc.message or ""
    if code == Status.PERMISSION_DENIED:
        return WorkloadError(f"no identity: {detail}", EXIT_NO_IDENTITY)
    if code in (Status.UNAVAILABLE, Status.DEADLINE_EXCEEDED):
        return WorkloadError(f"Workload API unavailable: {detail}", EXIT_UNREACHABLE)
    if code == Status.INVALID_ARGUMENT:
        return WorkloadError(detail, EXIT_INVALID)
    return WorkloadError(f"Workload API refused ({code.name}): {detail}", EXIT_REFUSED)


def _call(target: str, timeout: float, call: Callable[[Channel], Awaitable[T]]) -> T:
    """Run one call on a fresh channel; gRPC and connection failures become WorkloadError."""

    async def once() -> T:
        channel = _channel(target)
        try:
            async with asyncio.timeout(timeout):
                return await call(channel)
        finally:
            channel.close()

    try:
        return asyncio.run(once())
    except GRPCError as exc:
        raise _error(exc) from None
    except (OSError, TimeoutError, StreamTerminatedError, ProtocolError) as exc:
        raise WorkloadError(
            f"Workload API unavailable at {target}: {exc or type(exc).__name__}", EXIT_UNREACHABLE
        ) from None


def fetch_x509(target: str, write: Path | None, timeout: float) -> list[str]:
    # Here, not at the top: they bring cryptography, which `probe` (every pod's postStart hook) never needs.
    from kubespiffe.agent.files import write_x509_svids
    from kubespiffe.spiffe.bundle import parse_der_certificates
    from kubespiffe.spiffe.spiffeid import SpiffeId
    from kubespiffe.spiffe.x509svid import X509Svid

    async def first(channel: Channel) -> workload_pb2.X509SVIDResponse:
        async with SpiffeWorkloadAPIStub(channel).FetchX509SVID.open(metadata=HEADER) as stream:
            await stream.send_message(workload_pb2.X509SVIDRequest(), end=True)
            message = await stream.recv_message()
            await stream.cancel()
        if message is None:
            raise WorkloadError("the Workload API closed the stream without an answer", EXIT_UNREACHABLE)
        return message

    response = _call(target, timeout, first)
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


def fetch_jwt(target: str, audience: list[str], spiffe_id: str, timeout: float) -> list[dict[str, object]]:
    request = workload_pb2.JWTSVIDRequest(audience=audience, spiffe_id=spiffe_id)
    response = _call(
        target, timeout, lambda c: SpiffeWorkloadAPIStub(c).FetchJWTSVID(request, metadata=HEADER)
    )
    result = []
    for svid in response.svids:
        claims = json.loads(base64.urlsafe_b64decode(svid.svid.split(".")[1] + "=="))
        result.append({"spiffe_id": svid.spiffe_id, "token": svid.svid, "claims": claims, "hint": svid.hint})
    return result


def validate_jwt(target: str, audience: str, token: str, timeout: float) -> dict[str, object]:
    request = workload_pb2.ValidateJWTSVIDRequest(audience=audience, svid=token)
    response = _call(
        target, timeout, lambda c: SpiffeWorkloadAPIStub(c).ValidateJWTSVID(request, metadata=HEADER)
    )
    return {"spiffe_id": response.spiffe_id, "claims": MessageToDict(response.claims)}


def probe(target: str, service: str, timeout: float, wait: float = 0.0) -> int:
    """The agent's gRPC health service: "" = SVID in hand, kubespiffe.upstream = kubespiffed reachable.

    `wait` > 0: ask again every WAIT_INTERVAL until it is so or `wait` seconds have passed (the sidecar's
    postStart hook: the app containers start the moment the agent holds an SVID, not at a probe's next
    period), and fail with the last answer.
    """
    request = HealthCheckRequest(service=service)
    deadline = time.monotonic() + wait
    while True:
        try:
            response: Any = _call(target, timeout, lambda c: HealthStub(c).Check(request))
            if response.status == HealthCheckResponse.SERVING:
                return 0
            name = HealthCheckResponse.ServingStatus.Name(response.status)
            failure = WorkloadError(f"not ready ({name})", 1)
        except WorkloadError as exc:
            failure = exc
        if time.monotonic() + WAIT_INTERVAL > deadline:
            raise failure
        time.sleep(WAIT_INTERVAL)


def run(args: argparse.Namespace) -> int:
    try:
        target = endpoint(args.socket)
        if args.command == "probe":
            return probe(target, "kubespiffe.upstream" if args.upstream else "", args.timeout, args.wait)
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
