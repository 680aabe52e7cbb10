"""kubespiffed as a PodCertificateRequest signer (KEP-4317): the kubelet asks, kubespiffed writes the status.

    loops, readyz_line = await pod_certificates(config, client, registry, authority, leader)
    # loops: PodCertificateSigner.run (watch requests, sign as the Lease holder) and ClusterTrustBundles.run;
    # none when --pod-certificate-signer is '' or the cluster does not serve certificates.k8s.io/v1beta1

Who gets what is decided in the domain packages (`registry.podcert`: the pod and its one identity;
`authority.podcert`: the key and the times); this module reads requests, looks up the pod and its
ServiceAccount, and writes the one terminal condition the API allows: Issued, Denied or Failed.

Only the Lease holder signs, so two replicas never both sign a request in steady state. The status is
written with the resourceVersion it was decided on: if anyone wrote first (a replica that still believed it
led), the API server answers 409, the request is re-read and, if still pending, the same certificate is
written again; nothing is signed twice. A request's status is immutable once a condition is set, so a
Denied or Failed request leaves the pod in ContainerCreating: the condition's message, the pod's Warning
Event and one log line say exactly why.

The caches answer in steady state; a refusal about the pod or its ServiceAccount (missing, another UID) is
confirmed with a direct GET first, since a cache may lag a create or a delete+recreate and a Denied request
cannot be taken back.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import logging
import time
from collections.abc import Callable
from typing import Any

from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.generic_resource import create_namespaced_resource
from lightkube.models.core_v1 import ObjectReference
from lightkube.resources.certificates_v1beta1 import ClusterTrustBundle
from lightkube.resources.core_v1 import Pod, ServiceAccount
from prometheus_client import Counter, Histogram

from kubespiffe.authority.live import LiveAuthority
from kubespiffe.authority.podcert import (
    PodCertificateFailed,
    PodKeyRefused,
    requested_key,
    sign_pod_certificate,
)
from kubespiffe.authority.x509ca import X509Authority
from kubespiffe.kube.events import record_warning
from kubespiffe.kube.leader import LeaderElector
from kubespiffe.kube.watchcache import Key, WatchCache
from kubespiffe.registry.live import Registry, pod_facts
from kubespiffe.registry.podcert import PodCertificateDenied, RequestedPod, check_pod, choose_identity
from kubespiffe.server.clustertrustbundles import ClusterTrustBundles
from kubespiffe.server.config import ServerConfig

log = logging.getLogger("kubespiffed.podcert")

GROUP_VERSION = "certificates.k8s.io/v1beta1"
# lightkube's typed PodCertificateRequest predates spec.stubPKCS10Request (1.36's only key field).
PodCertificateRequest = create_namespaced_resource(
    "certificates.k8s.io", "v1beta1", "PodCertificateRequest", "podcertificaterequests"
)
TERMINAL = frozenset({"Issued", "Denied", "Failed"})
DEFAULT_MAX_EXPIRATION = 86400  # what kube-apiserver defaults spec.maxExpirationSeconds to
RESYNC_SECONDS = 30.0  # while leading, look for pending requests this often (retries after API errors)

DECISIONS = Counter(
    "kubespiffe_pod_certificate_requests_total",
    "PodCertificateRequests decided, by outcome (conflict: another replica wrote the status first)",
    ["outcome"],
)
LATENCY = Histogram(
    "kubespiffe_pod_certificate_request_seconds",
    "From taking a PodCertificateRequest off the queue to its status written",
    buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)


def check_signer_name(name: str) -> None:
    """`<domain>/<path>` as kube-apiserver requires; ValueError says what is wrong."""
    domain, _, path = name.partition("/")
    if not domain or not path or "." not in domain or domain.startswith("kubernetes.io"):
        raise ValueError(
            f"signer name {name!r} must be <domain>/<path> outside kubernetes.io, e.g. kubespiffe.io/svid"
        )


async def missing_apis(client: AsyncClient) -> str | None:
    """None if kubespiffed can list PodCertificateRequests and ClusterTrustBundles, else what is missing.

    Listing (one item) rather than reading discovery also catches a chart installed without
    podCertificates.enabled: the API is there, the permission is not.
    """
    for resource, plural in (
        (PodCertificateRequest, "podcertificaterequests"),
        (ClusterTrustBundle, "clustertrustbundles"),
    ):
        try:
            async for _ in client.list(resource, chunk_size=1):
                break
        except ApiError as exc:
            if exc.status.code == 404:
                return f"the cluster does not serve {GROUP_VERSION} {plural}"
            if exc.status.code == 403:
                return f"kubespiffed may not list {plural} (the chart grants it with podCertificates.enabled)"
            raise
    return None


def _conditions(obj: Any) -> list[dict[str, Any]]:
    status = obj.status or {}
    return list(status.get("conditions") or [])


def _time(value: dt.datetime) -> str:
    """metav1.Time: RFC 3339 in UTC, whole seconds (certificate times have no fractions)."""
    return value.astimezone(dt.UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def _b64(value: Any) -> bytes | None:
    return base64.b64decode(value) if value else None


def _requested_pod(obj: Any) -> RequestedPod:
    spec = obj.spec or {}
    return RequestedPod(
        namespace=obj.metadata.namespace or "",
        pod_name=spec.get("podName", ""),
        pod_uid=spec.get("podUID", ""),
        service_account=spec.get("serviceAccountName", ""),
        service_account_uid=spec.get("serviceAccountUID", ""),
        node_name=spec.get("nodeName", ""),
        user_annotations=dict(spec.get("unverifiedUserAnnotations") or {}),
    )


class _Decision:
    """The status to write, and what to say about it (log line, Event, metric)."""

    def __init__(self, kind: str, reason: str, message: str, status: dict[str, Any]) -> None:
        self.kind = kind
        self.reason = reason
        self.message = message
        self.status = status


def _decision(kind: str, reason: str, message: str) -> _Decision:
    """One terminal condition (the API allows exactly one); Issued adds the certificate fields."""
    condition = {
        "type": kind,
        "status": "True",
        "reason": reason,
        "message": message,
        "lastTransitionTime": _time(dt.datetime.now(dt.UTC)),
    }
    return _Decision(kind, reason, message, {"conditions": [condition]})


class PodCertificateSigner:
    def __init__(
        self,
        client: AsyncClient,
        signer_name: str,
        registry: Registry,
        active_x509: Callable[[], X509Authority],
        leader: LeaderElector,
        default_ttl: dt.timedelta,
        workers: int = 16,
    ) -> None:
        self._client = client
        self.signer_name = signer_name
        self._registry = registry
        self._active_x509 = active_x509
        self._leader = leader
        self._default_ttl = default_ttl
        self._workers = workers
        self.requests: WatchCache[Any] = WatchCache(client, PodCertificateRequest)
        self.service_accounts: WatchCache[ServiceAccount] = WatchCache(client, ServiceAccount)
        self.requests.add_listener(self._on_request)
        self._queue: asyncio.Queue[Key] = asyncio.Queue()
        self._queued: set[Key] = set()
        self._busy: set[Key] = set()

    def _pending(self, obj: Any) -> bool:
        spec = obj.spec or {}
        if spec.get("signerName") != self.signer_name:
            return False
        return not any(c.get("type") in TERMINAL for c in _conditions(obj))

    def _enqueue(self, key: Key) -> None:
        if key not in self._queued:
            self._queued.add(key)
            self._queue.put_nowait(key)

    def _on_request(self, event: str, obj: Any) -> None:
        if event != "DELETED" and self._pending(obj):
            self._enqueue((obj.metadata.namespace, obj.metadata.name))

    def _enqueue_pending(self) -> None:
        for obj in self.requests:
            if self._pending(obj):
                self._enqueue((obj.metadata.namespace, obj.metadata.name))

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(self.requests.run())
            group.create_task(self.service_accounts.run())
            # Deciding on a half-listed registry would deny registered pods: wait for every cache.
            await self._registry.wait_synced()
            await self.requests.synced.wait()
            await self.service_accounts.synced.wait()
            log.info("signing PodCertificateRequests for %s (as the Lease holder)", self.signer_name)
            for _ in range(self._workers):
                group.create_task(self._work())
            group.create_task(self._follow_leadership())

    async def _follow_leadership(self) -> None:
        """A new leader (or a periodic resync) picks up whatever is pending, including failed writes."""
        leading, resync_at = False, 0.0
        while True:
            now = time.monotonic()
            if self._leader.is_leader and (not leading or now >= resync_at):
                self._enqueue_pending()
                resync_at = now + RESYNC_SECONDS
            leading = self._leader.is_leader
            await asyncio.sleep(0.5)

    async def _work(self) -> None:
        while True:
            key = await self._queue.get()
            self._queued.discard(key)
            obj = self.requests.get(*key)
            if not self._leader.is_leader or key in self._busy or obj is None or not self._pending(obj):
                continue
            self._busy.add(key)
            started = time.perf_counter()
            try:
                await self._handle(obj)
            except Exception:
                log.exception("PodCertificateRequest %s/%s: not decided; retrying at the next resync", *key)
            finally:
                self._busy.discard(key)
                LATENCY.observe(time.perf_counter() - started)

    async def _handle(self, obj: Any) -> None:
        request = _requested_pod(obj)
        pod, decision = await self._decide(obj, request)
        written = await self._write(obj, decision.status)
        name = f"{obj.metadata.namespace}/{obj.metadata.name}"
        if not written:
            DECISIONS.labels("conflict").inc()
            log.info("not written pcr=%s pod=%s: another signer decided it first", name, request)
            return
        DECISIONS.labels(decision.kind.lower()).inc()
        if decision.kind == "Issued":
            log.info("issued pcr=%s pod=%s node=%s %s", name, request, request.node_name, decision.message)
            return
        log.warning(
            "%s pcr=%s pod=%s node=%s reason=%s: %s",
            decision.kind.lower(),
            name,
            request,
            request.node_name,
            decision.reason,
            decision.message,
        )
        if pod is not None and pod.metadata is not None:
            involved = ObjectReference(
                apiVersion="v1",
                kind="Pod",
                name=request.pod_name,
                namespace=request.namespace,
                uid=pod.metadata.uid,
            )
        else:
            involved = ObjectReference(
                apiVersion=GROUP_VERSION,
                kind="PodCertificateRequest",
                name=obj.metadata.name,
                namespace=obj.metadata.namespace,
                uid=obj.metadata.uid,
            )
        await record_warning(
            self._client, involved, f"PodCertificate{decision.kind}", f"{decision.reason}: {decision.message}"
        )

    async def _decide(self, obj: Any, request: RequestedPod) -> tuple[Pod | None, _Decision]:
        pod = await self._pod(request, fresh=False)
        try:
            try:
                check_pod(request, pod_facts(pod) if pod else None, self._account_uid(request))
            except PodCertificateDenied:
                pod = await self._pod(request, fresh=True)
                check_pod(request, pod_facts(pod) if pod else None, await self._fresh_account_uid(request))
            assert pod is not None
            identity = choose_identity(request, self._registry.identities(pod))
            spec = obj.spec or {}
            key = requested_key(_b64(spec.get("stubPKCS10Request")), _b64(spec.get("pkixPublicKey")))
            max_expiration = dt.timedelta(
                seconds=int(spec.get("maxExpirationSeconds") or DEFAULT_MAX_EXPIRATION)
            )
            issued = sign_pod_certificate(
                self._active_x509(),
                key,
                identity.spiffe_id,
                identity.dns_names,
                identity.x509_ttl or self._default_ttl,
                max_expiration,
                dt.datetime.now(dt.UTC),
            )
        except (PodCertificateDenied, PodKeyRefused) as exc:
            return pod, _decision("Denied", exc.reason, str(exc))
        except PodCertificateFailed as exc:
            return pod, _decision("Failed", "SigningFailed", str(exc))
        decision = _decision(
            "Issued", "Issued", f"X.509-SVID {identity.spiffe_id} valid until {_time(issued.not_after)}"
        )
        decision.status |= {
            "certificateChain": issued.chain_pem,
            "notBefore": _time(issued.not_before),
            "beginRefreshAt": _time(issued.begin_refresh_at),
            "notAfter": _time(issued.not_after),
        }
        return pod, decision

    async def _pod(self, request: RequestedPod, *, fresh: bool) -> Pod | None:
        if not fresh:
            cached = self._registry.pods.get(request.namespace, request.pod_name)
            if cached is not None:
                return cached
        try:
            pod: Pod = await self._client.get(Pod, request.pod_name, namespace=request.namespace)
        except ApiError as exc:
            if exc.status.code == 404:
                return None
            raise
        return pod

    def _account_uid(self, request: RequestedPod) -> str | None:
        account = self.service_accounts.get(request.namespace, request.service_account)
        return account.metadata.uid if account is not None and account.metadata is not None else None

    async def _fresh_account_uid(self, request: RequestedPod) -> str | None:
        try:
            account = await self._client.get(
                ServiceAccount, request.service_account, namespace=request.namespace
            )
        except ApiError as exc:
            if exc.status.code == 404:
                return None
            raise
        return account.metadata.uid if account.metadata is not None else None

    async def _write(self, obj: Any, status: dict[str, Any]) -> bool:
        """PUT /status with the resourceVersion decided on; False if another signer decided first.

        On 409 the request is re-read: still pending (only its metadata changed) means the same status is
        written again on the new version, so a request is never signed twice.
        """
        for _ in range(3):
            document = obj.to_dict() | {"status": status}
            try:
                await self._client.replace(PodCertificateRequest.Status.from_dict(document))
                return True
            except ApiError as exc:
                if exc.status.code == 404:
                    return False  # deleted meanwhile (the kubelet gave up, or the pod went away)
                if exc.status.code != 409:
                    raise
            obj = await self._client.get(
                PodCertificateRequest, obj.metadata.name, namespace=obj.metadata.namespace
            )
            if not self._pending(obj):
                return False
        return False


async def pod_certificates(
    config: ServerConfig,
    client: AsyncClient,
    registry: Registry,
    authority: LiveAuthority,
    leader: LeaderElector,
) -> tuple[list[Callable[[], Any]], str]:
    """The signer's loops (none when off), and the line /readyz adds to say what kubespiffed does.

    A cluster without the APIs leaves kubespiffed ready: the issuer API, the agent's path, is unaffected,
    and the log and /readyz say that pod certificates are off and why.
    """
    name = config.pod_certificate_signer
    if not name:
        return [], ""
    try:
        check_signer_name(name)
    except ValueError as exc:
        raise SystemExit(f"--pod-certificate-signer: {exc}") from None
    missing = await missing_apis(client)
    if missing:
        log.warning(
            "pod certificates OFF: --pod-certificate-signer=%s is set but %s (needs the feature gates "
            "PodCertificateRequest and ClusterTrustBundle and --runtime-config=certificates.k8s.io/v1beta1); "
            "the issuer API is unaffected",
            name,
            missing,
        )
        return [], f"pod-certificates: off, {missing}\n"
    signer = PodCertificateSigner(client, name, registry, authority.active_x509, leader, config.x509_svid_ttl)
    bundles = ClusterTrustBundles(client, name, authority.trust, leader)
    return [signer.run, bundles.run], f"pod-certificates: signer {name}\n"
