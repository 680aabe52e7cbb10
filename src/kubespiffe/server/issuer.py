"""The issuer API: a pod-bound token in; X.509-SVIDs (for a CSR), JWT-SVIDs, or the pod's bundles out.

One log line per decision: `attested` with the pod and its SPIFFE IDs, or `rejected` with the reason.
Tokens and keys never reach the log.

One caller cannot degrade everyone: WatchBundles streams are bounded per pod (UID), and the bounds that
hold from a call's start (metadata size; calls in flight overall, per pod, and from tokens only I/O can
verify; tokens refused without I/O) are `callbounds.CallBounds`. Each bound's refusal is
RESOURCE_EXHAUSTED and counts in `kubespiffe_issuer_limit_refusals_total{limit}`; a token refused at a
call's start is UNAUTHENTICATED, as here.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import logging
import time
from collections import Counter as Tally
from collections.abc import AsyncIterator, Awaitable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
from cryptography.hazmat.primitives.serialization import Encoding
from prometheus_client import Counter, Histogram

from kubespiffe.attestation.pod import AttestedPod, ClusterUnreachable, PodAttestor
from kubespiffe.attestation.token import TokenRejected
from kubespiffe.authority.state import JwtSigningKey
from kubespiffe.authority.x509ca import CsrError, X509Authority, load_csr_key, sign_x509_svid_for_key
from kubespiffe.constants import JWT_AUDIENCE_MAX_COUNT, JWT_AUDIENCE_MAX_LENGTH
from kubespiffe.proto import issuer_pb2, issuer_pb2_grpc
from kubespiffe.registry.live import Registry
from kubespiffe.registry.match import Identity
from kubespiffe.spiffe import jwtsvid
from kubespiffe.spiffe.bundle import BundleSet, bundle_to_json
from kubespiffe.spiffe.spiffeid import SpiffeId, SpiffeIdError
from kubespiffe.versioned import Versioned

log = logging.getLogger("kubespiffed.issuer")

ISSUED = Counter("kubespiffe_svids_issued_total", "SVIDs signed", ["type"])
DECISIONS = Counter("kubespiffe_issuer_requests_total", "Issuer API requests by outcome", ["rpc", "outcome"])
LIMIT_REFUSALS = Counter(
    "kubespiffe_issuer_limit_refusals_total",
    "Issuer API calls refused by a bound (RESOURCE_EXHAUSTED), by bound",
    ["limit"],
)
LATENCY = Histogram(
    "kubespiffe_issuer_request_seconds",
    "Issuer API request latency",
    ["rpc"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0),
)

# The MintX509SVID outcome every successful call counts, bound once (labels() takes a lock and a lookup).
_X509_ISSUED = ISSUED.labels("x509")
_X509_DECIDED = DECISIONS.labels("x509", "issued")
_X509_LATENCY = LATENCY.labels("x509")
# Distinct grants remembered with their digest and log text; far more than pods share a process.
_GRANT_CACHE_SIZE = 4096

Context = grpc.aio.ServicerContext[Any, Any]


class Signer(Protocol):
    """What signs right now; asked on every call, so a rotation takes effect on the next one."""

    def active_x509(self) -> X509Authority: ...

    def active_jwt(self) -> JwtSigningKey: ...


# How often an open WatchBundles stream re-checks that its pod still has an identity.
ENTITLEMENT_RECHECK_SECONDS = 5.0
# JWT-SVID audiences: a few short, printable ASCII strings (URLs, service names). Bounded so one call
# cannot make a huge token (or cache entry in the agent), and printable so no audience can forge a log line.
# The agent enforces the same bounds (constants.py).
MAX_AUDIENCES = JWT_AUDIENCE_MAX_COUNT
MAX_AUDIENCE_LENGTH = JWT_AUDIENCE_MAX_LENGTH


def audience_problem(audience: list[str]) -> str | None:
    """Why `audience` cannot be put in a JWT-SVID, or None."""
    if not audience or any(not a for a in audience):
        return "audience must be specified"
    if len(audience) > MAX_AUDIENCES:
        return f"at most {MAX_AUDIENCES} audiences"
    if any(len(a) > MAX_AUDIENCE_LENGTH for a in audience):
        return f"an audience is longer than {MAX_AUDIENCE_LENGTH} characters"
    if not all(a.isascii() and a.isprintable() for a in audience):
        return "audiences must be printable ASCII"
    return None


def bearer_token(context: Context) -> str:
    return bearer(context.invocation_metadata() or ())


def bearer(metadata: Iterable[tuple[str, str | bytes]]) -> str:
    """The token of a call's `authorization: Bearer` metadata, or ""."""
    for key, value in metadata:
        if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
            return value[len("Bearer ") :].strip()
    return ""


@dataclass(frozen=True)
class Caller:
    who: str
    identities: tuple[Identity, ...]
    pod_uid: str = ""


class IssuerService(issuer_pb2_grpc.IssuerServicer):
    def __init__(
        self,
        *,
        attestor: PodAttestor,
        registry: Registry,
        signer: Signer,
        trust: Versioned[BundleSet],
        x509_ttl: dt.timedelta,
        jwt_ttl: dt.timedelta,
        jwt_issuer: str | None = None,
        max_streams_per_pod: int = 4,
    ) -> None:
        self._attestor = attestor
        self._registry = registry
        self._signer = signer
        self._trust = trust
        self._x509_ttl = x509_ttl
        self._jwt_ttl = jwt_ttl
        self._jwt_issuer = jwt_issuer
        self._max_streams = max_streams_per_pod
        self._streams: Tally[str] = Tally()
        # Per call only what differs per call: the bundle's DER follows the bundle set, a grant's
        # digest and log text follow the grant.
        self._bundle_der: tuple[object, list[bytes]] = (None, [])
        self._grants: dict[tuple[Identity, ...], tuple[bytes, str]] = {}

    async def _attest(self, rpc: str, context: Context, spiffe_id: str = "") -> Caller:
        """Verify the token and the pod, then the identities it is granted (only `spiffe_id` if given)."""
        try:
            attested = await self._attestor.attest(bearer_token(context))
        except TokenRejected as exc:
            DECISIONS.labels(rpc, "token_rejected").inc()
            log.warning("rejected reason=%r", str(exc))
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, f"token refused: {exc}")
            raise
        except ClusterUnreachable as exc:
            await _unavailable(rpc, context, exc)
            raise
        who = attested.who
        result = self._registry.identities(attested.pod)
        for skipped, reason in result.skipped:
            log.info("registration skipped %s registration=%s reason=%r", who, skipped, reason)
        identities = result.identities
        if spiffe_id:
            try:
                wanted = SpiffeId.parse(spiffe_id)
            except SpiffeIdError as exc:
                DECISIONS.labels(rpc, "invalid_argument").inc()
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"spiffe_id: {exc}")
                raise
            identities = tuple(i for i in identities if i.spiffe_id == wanted)
        if not identities:
            DECISIONS.labels(rpc, "no_identity").inc()
            reason = (
                f"{spiffe_id} is not granted to this pod" if spiffe_id else "no registration matches this pod"
            )
            log.warning("rejected %s reason=%r", who, reason)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, reason)
        return Caller(who, identities, attested.claims.pod_uid)

    async def MintX509SVID(
        self, request: issuer_pb2.MintX509SVIDRequest, context: Context
    ) -> issuer_pb2.MintX509SVIDResponse:
        started = time.perf_counter()
        try:
            caller = await self._attest("x509", context, request.spiffe_id)
            try:
                public_key = load_csr_key(request.csr)
            except CsrError as exc:
                DECISIONS.labels("x509", "invalid_argument").inc()
                log.warning("rejected %s reason=%r", caller.who, f"bad CSR: {exc}")
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"csr: {exc}")
                raise
            now = dt.datetime.now(dt.UTC)
            authority = self._signer.active_x509()
            chain_der = authority.chain_der
            digest, spiffe_ids = self._grant(caller.identities)
            response = issuer_pb2.MintX509SVIDResponse(bundle=self._own_bundle_der(), grant=digest)
            for identity in caller.identities:
                leaf = sign_x509_svid_for_key(
                    authority,
                    public_key,
                    identity.spiffe_id,
                    identity.dns_names,
                    identity.x509_ttl or self._x509_ttl,
                    now,
                )
                response.svids.append(
                    issuer_pb2.X509SVID(
                        spiffe_id=str(identity.spiffe_id),
                        cert_chain=[leaf.public_bytes(Encoding.DER), *chain_der],
                        hint=identity.hint or "",
                        expires_at=int(leaf.not_valid_after_utc.timestamp()),
                    )
                )
            _X509_ISSUED.inc(len(caller.identities))
            _X509_DECIDED.inc()
            log.info("attested %s spiffe_ids=%s", caller.who, spiffe_ids)
            return response
        finally:
            _X509_LATENCY.observe(time.perf_counter() - started)

    def _own_bundle_der(self) -> list[bytes]:
        own = self._trust.current.own
        if self._bundle_der[0] is not own:
            self._bundle_der = (own, [c.public_bytes(Encoding.DER) for c in own.x509_authorities])
        return self._bundle_der[1]

    def _grant(self, identities: tuple[Identity, ...]) -> tuple[bytes, str]:
        """The grant's digest and its SPIFFE IDs for the log line."""
        known = self._grants.get(identities)
        if known is None:
            if len(self._grants) >= _GRANT_CACHE_SIZE:
                self._grants.clear()
            known = (grant(identities)[1], ",".join(str(i.spiffe_id) for i in identities))
            self._grants[identities] = known
        return known

    async def MintJWTSVID(
        self, request: issuer_pb2.MintJWTSVIDRequest, context: Context
    ) -> issuer_pb2.MintJWTSVIDResponse:
        started = time.perf_counter()
        try:
            audience = list(request.audience)
            problem = audience_problem(audience)
            if problem is not None:
                DECISIONS.labels("jwt", "invalid_argument").inc()
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
            caller = await self._attest("jwt", context, request.spiffe_id)
            kid, key = self._signer.active_jwt()
            now = dt.datetime.now(dt.UTC)
            response = issuer_pb2.MintJWTSVIDResponse()
            for identity in caller.identities:
                ttl = identity.jwt_ttl or self._jwt_ttl
                token = jwtsvid.mint(key, kid, identity.spiffe_id, audience, ttl, now, self._jwt_issuer)
                response.svids.append(
                    issuer_pb2.JWTSVID(
                        spiffe_id=str(identity.spiffe_id),
                        token=token,
                        hint=identity.hint or "",
                        expires_at=int((now + ttl).timestamp()),
                    )
                )
            ISSUED.labels("jwt").inc(len(caller.identities))
            DECISIONS.labels("jwt", "issued").inc()
            log.info(
                "attested %s jwt spiffe_ids=%s audience=%r",
                caller.who,
                ",".join(str(i.spiffe_id) for i in caller.identities),
                audience,
            )
            return response
        finally:
            LATENCY.labels("jwt").observe(time.perf_counter() - started)

    async def WatchBundles(
        self, request: issuer_pb2.WatchBundlesRequest, context: Context
    ) -> AsyncIterator[issuer_pb2.BundlesResponse]:
        """Complete bundle set on every change; ends with PERMISSION_DENIED once the pod has no identity.

        Agents before WatchIdentity use it; `kubespiffe validate --server` reads its first message."""
        caller = await self._attest("bundles", context)
        async with self._stream_slot(caller, context, "WatchBundles"):
            async for message in self._bundles(caller, context):
                yield message

    @contextlib.asynccontextmanager
    async def _stream_slot(self, caller: Caller, context: Context, rpc: str) -> AsyncIterator[None]:
        """One of the pod's `max_streams_per_pod` streams (WatchBundles and WatchIdentity together)."""
        uid = caller.pod_uid
        if self._streams[uid] >= self._max_streams:
            LIMIT_REFUSALS.labels("streams_per_pod").inc()
            log.warning("rejected %s reason=%r", caller.who, f"too many {rpc} streams for this pod")
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"this pod already has {self._max_streams} {rpc} streams open",
            )
        self._streams[uid] += 1
        try:
            yield
        finally:
            self._streams[uid] -= 1
            if not self._streams[uid]:
                del self._streams[uid]

    async def WatchIdentity(
        self, request: issuer_pb2.WatchIdentityRequest, context: Context
    ) -> AsyncIterator[issuer_pb2.IdentityResponse]:
        """The pod's grant and bundles at once and after every change, whatever the pod is granted.

        Woken by the registry's change signal for this pod (its registrations, the pod, its namespace),
        by a bundle change, and every ENTITLEMENT_RECHECK_SECONDS to re-check the token; a message is
        sent only when it differs from the last one. Ends with UNAUTHENTICATED when the token is refused.
        """
        token = bearer_token(context)
        attested = await self._attest_token("identity", token, context)
        caller = Caller(attested.who, (), attested.claims.pod_uid)
        async with self._stream_slot(caller, context, "WatchIdentity"):
            sent = b""
            while True:
                pod = attested.pod
                assert pod.metadata is not None
                with self._registry.changes.watching(
                    pod.metadata.namespace or "", pod.metadata.name or ""
                ) as changed:
                    version = self._trust.version
                    message = self._identity_message(pod)
                    encoded = message.SerializeToString()
                    if encoded != sent:
                        if sent:
                            log.info(
                                "grant changed %s spiffe_ids=%s",
                                attested.who,
                                ",".join(i.spiffe_id for i in message.identities) or "(none)",
                            )
                        yield message
                        sent = encoded
                    await _first_of(
                        changed.wait(), self._trust.wait_newer(version), timeout=ENTITLEMENT_RECHECK_SECONDS
                    )
                attested = await self._attest_token("identity", token, context, renewal=True)

    async def _attest_token(
        self, rpc: str, token: str, context: Context, *, renewal: bool = False
    ) -> AttestedPod:
        try:
            return await self._attestor.attest(token)
        except TokenRejected as exc:
            if not renewal:
                DECISIONS.labels(rpc, "token_rejected").inc()
                log.warning("rejected reason=%r", str(exc))
            refused = "token no longer valid, reconnect" if renewal else "token refused"
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, f"{refused}: {exc}")
            raise
        except ClusterUnreachable as exc:
            await _unavailable(rpc, context, exc)
            raise

    def _identity_message(self, pod: Any) -> issuer_pb2.IdentityResponse:
        identities = self._registry.identities(pod).identities
        granted, digest = grant(identities)
        federates = {td for i in identities for td in i.federates_with}
        return issuer_pb2.IdentityResponse(
            identities=granted,
            grant=digest,
            reason="" if identities else "no registration matches this pod",
            bundles=[
                issuer_pb2.TrustBundle(trust_domain=str(b.trust_domain), spiffe_bundle=bundle_to_json(b))
                for b in self._trust.current.for_federation(federates).bundles()
            ],
        )

    async def _bundles(self, caller: Caller, context: Context) -> AsyncIterator[issuer_pb2.BundlesResponse]:
        token = bearer_token(context)
        sent: bytes | None = None
        version = -1
        while True:
            federates = {td for i in caller.identities for td in i.federates_with}
            message = issuer_pb2.BundlesResponse(
                bundles=[
                    issuer_pb2.TrustBundle(trust_domain=str(b.trust_domain), spiffe_bundle=bundle_to_json(b))
                    for b in self._trust.current.for_federation(federates).bundles()
                ]
            )
            encoded = message.SerializeToString()
            if encoded != sent:
                yield message
                sent = encoded
            version, _ = await self._trust.wait_newer(version, ENTITLEMENT_RECHECK_SECONDS)
            caller = await self._recheck(context, token)

    async def _recheck(self, context: Context, token: str) -> Caller:
        """The stream's pod may have lost its identity (or gained federation) since it connected."""
        try:
            attested: AttestedPod = await self._attestor.attest(token)
        except TokenRejected as exc:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, f"token no longer valid, reconnect: {exc}")
            raise
        except ClusterUnreachable as exc:
            await _unavailable("bundles", context, exc)
            raise
        identities = self._registry.identities(attested.pod).identities
        if not identities:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED, "no registration matches this pod any more"
            )
        return Caller(attested.who, identities, attested.claims.pod_uid)


def grant(identities: tuple[Identity, ...]) -> tuple[list[issuer_pb2.GrantedIdentity], bytes]:
    """The identities as the issuer API describes them, and their digest: equal exactly when the grant is."""
    granted = [
        issuer_pb2.GrantedIdentity(
            spiffe_id=str(i.spiffe_id),
            dns_names=i.dns_names,
            x509_ttl_seconds=int(i.x509_ttl.total_seconds()) if i.x509_ttl else 0,
            jwt_ttl_seconds=int(i.jwt_ttl.total_seconds()) if i.jwt_ttl else 0,
            hint=i.hint or "",
            federates_with=[str(td) for td in i.federates_with],
        )
        for i in identities
    ]
    digest = hashlib.sha256()
    for message in granted:
        encoded = message.SerializeToString(deterministic=True)
        digest.update(len(encoded).to_bytes(4, "big") + encoded)
    return granted, digest.digest()


async def _unavailable(rpc: str, context: Context, exc: ClusterUnreachable) -> None:
    """The caller's pod could not be confirmed now (not refused): UNAVAILABLE, which agents retry."""
    DECISIONS.labels(rpc, "cluster_unreachable").inc()
    log.warning("unavailable reason=%r", str(exc))
    await context.abort(grpc.StatusCode.UNAVAILABLE, f"kubespiffed: {exc}")


async def _first_of(*waits: Awaitable[Any], timeout: float) -> None:
    """Until the first of `waits` finishes or `timeout` passes; the others are cancelled."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
