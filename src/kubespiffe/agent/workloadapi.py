"""The SPIFFE Workload API (`SpiffeWorkloadAPI`, no proto package) served inside the pod.

It serves one pod only, so every caller on the socket is that pod: there is no caller attestation here.
The generated messages and servicer are kubespiffe's own (`kubespiffe.proto.workload_pb2`, compiled from
the spec's workload.proto into a private descriptor pool so py-spiffe's copy can live in the same
process) with grpclib's servicer (`workload_pb2_grpclib`). Streams send the complete current state first
and after every change;
PermissionDenied ends them when the pod loses its identity, Unavailable ends FetchX509SVID when its
SVIDs expire without renewal (a new call waits for the next ones, as before the first).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from google.protobuf import struct_pb2
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.server import Stream

from kubespiffe.agent.issuer_client import JWTSVID, IssuerError, NoIdentity, RequestInvalid, TokenRefused
from kubespiffe.agent.state import AgentState, Snapshot
from kubespiffe.constants import JWT_AUDIENCE_MAX_COUNT, JWT_AUDIENCE_MAX_LENGTH
from kubespiffe.proto import workload_pb2
from kubespiffe.proto.workload_pb2_grpclib import SpiffeWorkloadAPIBase
from kubespiffe.spiffe.bundle import certificates_to_der, jwks_json
from kubespiffe.spiffe.jwtsvid import JwtSvidError, validate
from kubespiffe.spiffe.spiffeid import SpiffeId, SpiffeIdError, TrustDomain

log = logging.getLogger("kubespiffe.agent")

HEADER = "workload.spiffe.io"


# Mints JWT-SVIDs for (audience, spiffe_id or "" for all); raises the issuer client's errors.
JwtMinter = Callable[[Sequence[str], str], Awaitable[Sequence[JWTSVID]]]


def bundle_key(trust_domain: TrustDomain) -> str:
    return str(trust_domain.id)


def audience_problem(audience: Sequence[str]) -> str | None:
    """Why these audiences cannot go into a JWT-SVID, or None: kubespiffed's bounds, checked before any
    cache or mint so that an absurd request costs nothing (constants.JWT_AUDIENCE_MAX_*)."""
    if not audience:
        return "audience must be specified"
    if len(audience) > JWT_AUDIENCE_MAX_COUNT:
        return f"at most {JWT_AUDIENCE_MAX_COUNT} audiences, not {len(audience)}"
    for value in audience:
        if not value:
            return "audience must be specified (an audience is empty)"
        if len(value) > JWT_AUDIENCE_MAX_LENGTH:
            return f"an audience is longer than {JWT_AUDIENCE_MAX_LENGTH} characters"
        if not (value.isascii() and value.isprintable()):
            return f"audience {value[:64]!r} is not printable ASCII"
    return None


async def _request(stream: Stream[Any, Any]) -> Any:
    """The call's request, once its `workload.spiffe.io: true` header is checked (InvalidArgument if not)."""
    if "true" not in stream.metadata.getall(HEADER, ()):  # type: ignore[union-attr]
        raise GRPCError(Status.INVALID_ARGUMENT, f"security header missing from request: {HEADER}")
    return await stream.recv_message()


class WorkloadAPI(SpiffeWorkloadAPIBase):
    def __init__(self, state: AgentState, mint_jwt: JwtMinter) -> None:
        self._state = state
        self._mint_jwt = mint_jwt

    async def _snapshots(self) -> AsyncIterator[Snapshot]:
        """The first snapshot as soon as there is one, then every newer one; ends the call when identity is
        lost (PermissionDenied)."""
        seen = 0
        while True:
            seen, snapshot = await self._state.wait_newer(seen)
            if snapshot is None:
                continue
            if snapshot.denied:
                raise GRPCError(Status.PERMISSION_DENIED, snapshot.denied)
            yield snapshot

    async def FetchX509SVID(
        self, stream: Stream[workload_pb2.X509SVIDRequest, workload_pb2.X509SVIDResponse]
    ) -> None:
        await _request(stream)
        sent = False
        async for snapshot in self._snapshots():
            if not snapshot.svids:
                # Expired before kubespiffed could renew them; a response needs at least one SVID.
                if sent:
                    raise GRPCError(
                        Status.UNAVAILABLE, "the X.509-SVIDs expired and could not be renewed; retry"
                    )
                continue
            await stream.send_message(x509_svid_response(snapshot))
            sent = True

    async def FetchX509Bundles(
        self, stream: Stream[workload_pb2.X509BundlesRequest, workload_pb2.X509BundlesResponse]
    ) -> None:
        await _request(stream)
        async for snapshot in self._snapshots():
            await stream.send_message(
                workload_pb2.X509BundlesResponse(
                    bundles={
                        bundle_key(td): certificates_to_der(list(c))
                        for td, c in snapshot.x509_bundles.items()
                    }
                )
            )

    async def FetchJWTBundles(
        self, stream: Stream[workload_pb2.JWTBundlesRequest, workload_pb2.JWTBundlesResponse]
    ) -> None:
        await _request(stream)
        async for snapshot in self._snapshots():
            domains = set(snapshot.x509_bundles) | set(snapshot.jwt_bundles)
            await stream.send_message(
                workload_pb2.JWTBundlesResponse(
                    bundles={bundle_key(td): jwks_json(snapshot.jwt_bundles.get(td, {})) for td in domains}
                )
            )

    async def FetchJWTSVID(
        self, stream: Stream[workload_pb2.JWTSVIDRequest, workload_pb2.JWTSVIDResponse]
    ) -> None:
        request: workload_pb2.JWTSVIDRequest = await _request(stream)
        audience = list(request.audience)
        problem = audience_problem(audience)
        if problem is not None:
            raise GRPCError(Status.INVALID_ARGUMENT, problem)
        if request.spiffe_id:
            try:
                SpiffeId.parse(request.spiffe_id)
            except SpiffeIdError as exc:
                raise GRPCError(Status.INVALID_ARGUMENT, f"spiffe_id: {exc}") from None
        snapshot = self._state.current
        if snapshot is None:
            raise GRPCError(Status.UNAVAILABLE, "the agent has no identity yet; retry")
        if snapshot.denied:
            raise GRPCError(Status.PERMISSION_DENIED, snapshot.denied)
        try:
            issued = await self._mint_jwt(audience, request.spiffe_id)
        except (NoIdentity, TokenRefused) as exc:
            # A refused token is the pod failing to prove who it is: no identity, as on the streams.
            raise GRPCError(Status.PERMISSION_DENIED, str(exc)) from None
        except RequestInvalid as exc:
            raise GRPCError(Status.INVALID_ARGUMENT, str(exc)) from None
        except IssuerError as exc:
            # Unreachable, an impostor, any other refusal, a malformed answer: kubespiffed's side, may clear.
            raise GRPCError(Status.UNAVAILABLE, str(exc)) from None
        except OSError as exc:
            raise GRPCError(Status.UNAVAILABLE, f"cannot read the pod's token: {exc}") from None
        await stream.send_message(
            workload_pb2.JWTSVIDResponse(
                svids=[
                    workload_pb2.JWTSVID(spiffe_id=str(s.spiffe_id), svid=s.token, hint=s.hint)
                    for s in issued
                ]
            )
        )

    async def ValidateJWTSVID(
        self, stream: Stream[workload_pb2.ValidateJWTSVIDRequest, workload_pb2.ValidateJWTSVIDResponse]
    ) -> None:
        request: workload_pb2.ValidateJWTSVIDRequest = await _request(stream)
        if not request.audience:
            raise GRPCError(Status.INVALID_ARGUMENT, "audience must be specified")
        if not request.svid:
            raise GRPCError(Status.INVALID_ARGUMENT, "svid must be specified")
        snapshot = self._state.current
        if snapshot is None:
            raise GRPCError(Status.UNAVAILABLE, "the agent has no bundles yet; retry")
        try:
            result = validate(request.svid, request.audience, snapshot.jwt_bundles, dt.datetime.now(dt.UTC))
        except JwtSvidError as exc:
            raise GRPCError(Status.INVALID_ARGUMENT, str(exc)) from None
        claims = struct_pb2.Struct()
        claims.update(json.loads(json.dumps(dict(result.claims))))
        await stream.send_message(
            workload_pb2.ValidateJWTSVIDResponse(spiffe_id=str(result.spiffe_id), claims=claims)
        )


def x509_svid_response(snapshot: Snapshot) -> workload_pb2.X509SVIDResponse:
    own = certificates_to_der(list(snapshot.x509_bundles.get(snapshot.trust_domain, ())))
    return workload_pb2.X509SVIDResponse(
        svids=[
            workload_pb2.X509SVID(
                spiffe_id=str(svid.spiffe_id),
                x509_svid=svid.chain_der(),
                x509_svid_key=svid.key_der(),
                bundle=own,
                hint=svid.hint,
            )
            for svid in snapshot.svids
        ],
        federated_bundles={
            bundle_key(td): certificates_to_der(list(certs)) for td, certs in snapshot.federated_x509.items()
        },
    )
