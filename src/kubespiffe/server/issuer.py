"""The issuer API: a pod-bound token and a CSR in, one X.509-SVID per granted identity out.

One log line per decision: `attested` with the pod and its SPIFFE IDs, or `rejected` with the reason.
Tokens and keys never reach the log.
"""

from __future__ import annotations

import datetime as dt
import logging
import time

import grpc
from cryptography.hazmat.primitives.serialization import Encoding
from prometheus_client import Counter, Histogram

from kubespiffe.attestation.pod import PodBinding
from kubespiffe.attestation.token import TokenRejected, TokenVerifier
from kubespiffe.authority.x509ca import CsrError, X509Authority, load_csr, sign_x509_svid
from kubespiffe.proto import issuer_pb2, issuer_pb2_grpc
from kubespiffe.server.registrations import Registry
from kubespiffe.spiffe.spiffeid import SpiffeId, SpiffeIdError

log = logging.getLogger("kubespiffed.issuer")

ISSUED = Counter("kubespiffe_x509_svids_issued_total", "X.509-SVIDs signed")
DECISIONS = Counter("kubespiffe_issuer_requests_total", "Issuer API requests by outcome", ["outcome"])
LATENCY = Histogram(
    "kubespiffe_issuer_request_seconds",
    "Issuer API request latency",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0),
)


def bearer_token(context: grpc.aio.ServicerContext) -> str:  # type: ignore[type-arg]
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
            return value[len("Bearer ") :].strip()
    return ""


class IssuerService(issuer_pb2_grpc.IssuerServicer):
    def __init__(
        self,
        *,
        verifier: TokenVerifier,
        binding: PodBinding,
        registry: Registry,
        authority: X509Authority,
        bundle_der: list[bytes],
        default_ttl: dt.timedelta,
    ) -> None:
        self._verifier = verifier
        self._binding = binding
        self._registry = registry
        self.authority = authority
        self.bundle_der = bundle_der
        self._default_ttl = default_ttl

    async def MintX509SVID(  # noqa: N802 (gRPC method name)
        self,
        request: issuer_pb2.MintX509SVIDRequest,
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> issuer_pb2.MintX509SVIDResponse:
        started = time.perf_counter()
        try:
            return await self._mint(request, context)
        finally:
            LATENCY.observe(time.perf_counter() - started)

    async def _mint(
        self,
        request: issuer_pb2.MintX509SVIDRequest,
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> issuer_pb2.MintX509SVIDResponse:
        try:
            claims = await self._verifier.verify(bearer_token(context))
            pod = await self._binding.resolve(claims)
        except TokenRejected as exc:
            DECISIONS.labels("token_rejected").inc()
            log.warning("rejected reason=%r", str(exc))
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, f"token refused: {exc}")
            raise  # unreachable: abort raises
        who = f"pod={claims.pod_name} namespace={claims.namespace}"
        result = self._registry.identities(pod)
        for skipped, reason in result.skipped:
            log.info("registration skipped %s registration=%s reason=%r", who, skipped, reason)
        identities = result.identities
        if request.spiffe_id:
            try:
                wanted = SpiffeId.parse(request.spiffe_id)
            except SpiffeIdError as exc:
                DECISIONS.labels("invalid_argument").inc()
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"spiffe_id: {exc}")
                raise
            identities = [i for i in identities if i.spiffe_id == wanted]
        if not identities:
            DECISIONS.labels("no_identity").inc()
            reason = (
                f"{request.spiffe_id} is not granted to this pod"
                if request.spiffe_id
                else "no registration matches this pod"
            )
            log.warning("rejected %s reason=%r", who, reason)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, reason)
        try:
            csr = load_csr(request.csr)
        except CsrError as exc:
            DECISIONS.labels("invalid_argument").inc()
            log.warning("rejected %s reason=%r", who, f"bad CSR: {exc}")
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"csr: {exc}")
            raise
        now = dt.datetime.now(dt.UTC)
        authority = self.authority
        chain_der = [c.public_bytes(Encoding.DER) for c in authority.chain]
        response = issuer_pb2.MintX509SVIDResponse(bundle=self.bundle_der)
        for identity in identities:
            leaf = sign_x509_svid(
                authority, csr, identity.spiffe_id, identity.dns_names,
                identity.x509_ttl or self._default_ttl, now,
            )
            response.svids.append(
                issuer_pb2.X509SVID(
                    spiffe_id=str(identity.spiffe_id),
                    cert_chain=[leaf.public_bytes(Encoding.DER), *chain_der],
                    hint=identity.hint or "",
                    expires_at=int(leaf.not_valid_after_utc.timestamp()),
                )
            )
        ISSUED.inc(len(identities))
        DECISIONS.labels("issued").inc()
        log.info("attested %s spiffe_ids=%s", who, ",".join(str(i.spiffe_id) for i in identities))
        return response

