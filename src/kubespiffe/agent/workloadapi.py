"""The SPIFFE Workload API (`SpiffeWorkloadAPI`, no proto package) served inside the pod.

It serves one pod only, so every caller on the socket is that pod: there is no caller attestation here.
The generated messages and servicer are kubespiffe's own (`kubespiffe.proto.workload_pb2`, compiled from
the spec's workload.proto into a private descriptor pool so py-spiffe's copy can live in the same
process). Streams send the complete current state first and after every change;
PermissionDenied ends them when the pod loses its identity, Unavailable ends FetchX509SVID when its
SVIDs expire without renewal (a new call waits for the next ones, as before the first).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import grpc
from google.protobuf import struct_pb2

from kubespiffe.agent.issuer_client import JWTSVID, IssuerError, NoIdentity, RequestInvalid, TokenRefused
from kubespiffe.agent.state import AgentState, Snapshot
from kubespiffe.constants import JWT_AUDIENCE_MAX_COUNT, JWT_AUDIENCE_MAX_LENGTH
from kubespiffe.proto import workload_pb2, workload_pb2_grpc
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


async def _require_header(context: grpc.aio.ServicerContext) -> None:  # type: ignore[type-arg]
    for key, value in context.invocation_metadata() or ():
        if key == HEADER and value == "true":
            return
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"security header missing from request: {HEADER}")


class WorkloadAPI(workload_pb2_grpc.SpiffeWorkloadAPIServicer):
    def __init__(self, state: AgentState, mint_jwt: JwtMinter) -> None:
        self._state = state
        self._mint_jwt = mint_jwt

    async def _snapshots(self, context: grpc.aio.ServicerContext) -> AsyncIterator[Snapshot]:  # type: ignore[type-arg]
        """The first snapshot as soon as there is one, then every newer one; aborts when identity is lost."""
        seen = 0
        while True:
            seen, snapshot = await self._state.wait_newer(seen)
            if snapshot is None:
                continue
            if snapshot.denied:
                await context.abort(grpc.StatusCode.PERMISSION_DENIED, snapshot.denied)
            yield snapshot

    async def FetchX509SVID(
        self,
        request: workload_pb2.X509SVIDRequest,
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> AsyncIterator[workload_pb2.X509SVIDResponse]:
        await _require_header(context)
        sent = False
        async for snapshot in self._snapshots(context):
            if not snapshot.svids:
                # Expired before kubespiffed could renew them; a response needs at least one SVID.
                if sent:
                    await context.abort(
                        grpc.StatusCode.UNAVAILABLE, "the X.509-SVIDs expired and could not be renewed; retry"
                    )
                continue
            yield x509_svid_response(snapshot)
            sent = True

    async def FetchX509Bundles(
        self,
        request: workload_pb2.X509BundlesRequest,
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> AsyncIterator[workload_pb2.X509BundlesResponse]:
        await _require_header(context)
        async for snapshot in self._snapshots(context):
            yield workload_pb2.X509BundlesResponse(
                bundles={
                    bundle_key(td): certificates_to_der(list(c)) for td, c in snapshot.x509_bundles.items()
                }
            )

    async def FetchJWTBundles(
        self,
        request: workload_pb2.JWTBundlesRequest,
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> AsyncIterator[workload_pb2.JWTBundlesResponse]:
        await _require_header(context)
        async for snapshot in self._snapshots(context):
            domains = set(snapshot.x509_bundles) | set(snapshot.jwt_bundles)
            yield workload_pb2.JWTBundlesResponse(
                bundles={bundle_key(td): jwks_json(snapshot.jwt_bundles.get(td, {})) for td in domains}
            )

    async def FetchJWTSVID(
        self,
        request: workload_pb2.JWTSVIDRequest,
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> workload_pb2.JWTSVIDResponse:
        await _require_header(context)
        audience = list(request.audience)
        problem = audience_problem(audience)
        if problem is not None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        if request.spiffe_id:
            try:
                SpiffeId.parse(request.spiffe_id)
            except SpiffeIdError as exc:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"spiffe_id: {exc}")
        snapshot = self._state.current
        if snapshot is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the agent has no identity yet; retry")
        assert snapshot is not None
        if snapshot.denied:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, snapshot.denied)
        try:
            issued = await self._mint_jwt(audience, request.spiffe_id)
        except (NoIdentity, TokenRefused) as exc:
            # A refused token is the pod failing to prove who it is: no identity, as on the streams.
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
        except RequestInvalid as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except IssuerError as exc:
            # Unreachable, an impostor, any other refusal, a malformed answer: kubespiffed's side, may clear.
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        except OSError as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"cannot read the pod's token: {exc}")
        return workload_pb2.JWTSVIDResponse(
            svids=[
                workload_pb2.JWTSVID(spiffe_id=str(s.spiffe_id), svid=s.token, hint=s.hint) for s in issued
            ]
        )

    async def ValidateJWTSVID(
        self,
        request: workload_pb2.ValidateJWTSVIDRequest,
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> workload_pb2.ValidateJWTSVIDResponse:
        await _require_header(context)
        if not request.audience:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "audience must be specified")
        if not request.svid:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "svid must be specified")
        snapshot = self._state.current
        if snapshot is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the agent has no bundles yet; retry")
        assert snapshot is not None
        try:
            result = validate(request.svid, request.audience, snapshot.jwt_bundles, dt.datetime.now(dt.UTC))
        except JwtSvidError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            raise
        claims = struct_pb2.Struct()
        claims.update(json.loads(json.dumps(dict(result.claims))))
        return workload_pb2.ValidateJWTSVIDResponse(spiffe_id=str(result.spiffe_id), claims=claims)


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
