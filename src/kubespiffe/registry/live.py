"""The live view of registrations: watch caches, parsed models, and the status each one reports.

    registry = Registry(client, trust_domain, reserved_dns_names=frozenset(kubespiffed_dns_names))
    await registry.run()                      # in a task: list+watch pods, namespaces, registrations
    await registry.wait_synced()
    result = registry.identities(pod)         # MatchResult: identities granted, registrations skipped

Objects are parsed once per change (in the watch listener), not per issuance, and indexed by namespace:
a pod's call looks only at its own namespace's WorkloadRegistrations and at the cluster-scoped ones, kept
sorted in matching order, so registrations in other namespaces cost it nothing. Status is written by a
single worker fed from a queue, so a burst of events never blocks the watch and a registration's status
is only written when it actually changes.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
from collections.abc import Mapping
from typing import Any

from lightkube import AsyncClient
from lightkube.models.core_v1 import ObjectReference
from lightkube.resources.core_v1 import Namespace, Pod
from lightkube.types import PatchType

from kubespiffe.kube.client import ClusterWorkloadRegistration, WorkloadRegistration
from kubespiffe.kube.events import record_warning
from kubespiffe.kube.pods import PodView
from kubespiffe.kube.watchcache import WatchCache
from kubespiffe.registry.changes import Changes
from kubespiffe.registry.match import MatchResult, identities_for, order_key
from kubespiffe.registry.models import Registration, RegistrationError
from kubespiffe.registry.status import evaluate_object, status_document
from kubespiffe.registry.template import PodFacts
from kubespiffe.registry.tenancy import DEFAULT_CLUSTER_DOMAIN
from kubespiffe.spiffe.spiffeid import TrustDomain

log = logging.getLogger(__name__)

RegKey = tuple[str, str | None, str]
_RESULTS_MIN = 1024


def _as_dict(obj: Any) -> dict[str, Any]:
    result: dict[str, Any] = obj.to_dict()
    return result


class Registry:
    def __init__(
        self,
        client: AsyncClient,
        trust_domain: TrustDomain,
        reserved_dns_names: frozenset[str],
        cluster_domain: str = DEFAULT_CLUSTER_DOMAIN,
        *,
        write_status: bool = True,
    ) -> None:
        self._client = client
        # Off in kubespiffed's extra --workers processes: the primary alone writes status.
        self._write_status_enabled = write_status
        self._trust_domain = trust_domain
        self._reserved = reserved_dns_names
        self._cluster_domain = cluster_domain
        self.pods: WatchCache[PodView] = WatchCache(client, PodView)
        self.namespaces: WatchCache[Namespace] = WatchCache(client, Namespace)
        self._namespaced = WatchCache(client, WorkloadRegistration)
        self._cluster = WatchCache(client, ClusterWorkloadRegistration)
        # Namespace (None: cluster-scoped) -> its registrations; sorted lists built lazily after a change.
        self._parsed: dict[str | None, dict[RegKey, Registration]] = {}
        self._sorted: dict[str | None, list[Registration]] = {}
        self._status_queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        # Wakes the WatchIdentity streams whose pod's grant may have changed (registry/changes.py).
        self.changes = Changes()
        # Each pod's last result, valid while its pod, its namespace and every registration are unchanged
        # (resourceVersions, `_generation`): a renewal does not render the same templates again.
        self._generation = 0
        self._results: dict[str, tuple[tuple[object, ...], MatchResult]] = {}
        self._namespaced.add_listener(self._on_registration)
        self._cluster.add_listener(self._on_registration)
        self.pods.add_listener(self._on_pod)
        self.namespaces.add_listener(self._on_namespace)

    @property
    def caches(self) -> tuple[WatchCache[Any], ...]:
        return (self.pods, self.namespaces, self._namespaced, self._cluster)

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            for cache in self.caches:
                group.create_task(cache.run())
            if self._write_status_enabled:
                group.create_task(self._status_worker())

    async def wait_synced(self) -> None:
        await asyncio.gather(*(cache.synced.wait() for cache in self.caches))

    def _on_pod(self, event: str, pod: Any) -> None:
        self.changes.changed(pod.metadata.namespace or "", pod.metadata.name)
        if event == "DELETED":
            self._results.pop(pod.metadata.uid or "", None)

    def _on_namespace(self, event: str, namespace: Any) -> None:
        self.changes.changed(namespace.metadata.name)  # its labels select pods for registrations

    def _on_registration(self, event: str, obj: Any) -> None:
        raw = _as_dict(obj)
        meta = raw.get("metadata", {})
        key: RegKey = (raw.get("kind", ""), meta.get("namespace"), meta.get("name", ""))
        self._generation += 1
        scope = self._parsed.setdefault(key[1], {})
        self._sorted.pop(key[1], None)
        if key[1] is None:
            self.changes.changed_everywhere()
        else:
            self.changes.changed(key[1])
        if event == "DELETED":
            scope.pop(key, None)
            if not scope:
                del self._parsed[key[1]]
            log.info("registration removed kind=%s namespace=%s name=%s", *key)
            return
        try:
            scope[key] = Registration.from_object(raw)
        except RegistrationError:
            scope.pop(key, None)
        if self._write_status_enabled:
            self._status_queue.put_nowait(raw)

    def _in_order(self, namespace: str | None) -> list[Registration]:
        ordered = self._sorted.get(namespace)
        if ordered is None:
            ordered = sorted(self._parsed.get(namespace, {}).values(), key=order_key)
            self._sorted[namespace] = ordered
        return ordered

    def identities(self, pod: Pod | PodView) -> MatchResult:
        meta = pod.metadata
        assert meta is not None
        namespace = self.namespaces.get(None, meta.namespace or "")
        ns_meta = namespace.metadata if namespace else None
        uid, version = meta.uid or "", meta.resourceVersion
        key = (version, ns_meta.resourceVersion if ns_meta else None, self._generation)
        cached = self._results.get(uid)
        if cached is not None and cached[0] == key:
            return cached[1]
        facts = pod_facts(pod)
        labels = (ns_meta.labels if ns_meta else None) or {}
        # Only these can select the pod: a WorkloadRegistration selects pods of its own namespace only.
        candidates = heapq.merge(self._in_order(facts.namespace), self._in_order(None), key=order_key)
        result = identities_for(
            facts, labels, candidates, self._trust_domain, self._reserved, self._cluster_domain
        )
        if uid and version:  # an object without a resourceVersion was not read from the API server
            if len(self._results) >= max(_RESULTS_MIN, 2 * len(self.pods)):
                self._results.clear()  # pods that called and went without a delete event
            self._results[uid] = (key, result)
        return result

    async def _status_worker(self) -> None:
        while True:
            raw = await self._status_queue.get()
            try:
                await self._write_status(raw)
            except Exception:
                log.exception("could not update status of %s", raw.get("metadata", {}).get("name"))

    async def _write_status(self, raw: Mapping[str, Any]) -> None:
        meta = raw.get("metadata", {})
        condition = evaluate_object(raw, self._trust_domain, self._reserved, self._cluster_domain)
        current = raw.get("status") or {}
        desired = status_document(current, int(meta.get("generation", 0)), condition)
        if desired == current:
            return
        namespace = meta.get("namespace")
        resource = WorkloadRegistration if namespace else ClusterWorkloadRegistration
        await self._client.patch(
            resource.Status,
            meta["name"],
            {"status": desired},
            namespace=namespace,
            patch_type=PatchType.MERGE,
        )
        if condition.status == "True":
            log.info(
                "registration ready kind=%s namespace=%s name=%s", raw.get("kind"), namespace, meta["name"]
            )
        else:
            log.warning(
                "registration not ready kind=%s namespace=%s name=%s reason=%s: %s",
                raw.get("kind"),
                namespace,
                meta["name"],
                condition.reason,
                condition.message,
            )
            await self._event(raw, condition.reason, condition.message)

    async def _event(self, raw: Mapping[str, Any], reason: str, message: str) -> None:
        meta = raw["metadata"]
        involved = ObjectReference(
            apiVersion=raw["apiVersion"],
            kind=raw["kind"],
            name=meta["name"],
            namespace=meta.get("namespace"),
            uid=meta.get("uid"),
        )
        await record_warning(self._client, involved, reason, message)


def pod_facts(pod: Pod | PodView) -> PodFacts:
    assert pod.metadata is not None and pod.spec is not None
    return PodFacts(
        namespace=pod.metadata.namespace or "",
        service_account=pod.spec.serviceAccountName or "default",
        pod_name=pod.metadata.name or "",
        pod_uid=pod.metadata.uid or "",
        node_name=pod.spec.nodeName or "",
        labels=dict(pod.metadata.labels or {}),
    )
