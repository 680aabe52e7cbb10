"""Federated trust domains: every replica serves foreign bundles from FederatedTrustDomain status; the
Lease holder fetches them from the peers' bundle endpoints and writes that status.

    federation = Federation(client, own_trust_domain, trust, leader, min_refresh=30, max_refresh=3600)
    await federation.run()   # in a task: watch FederatedTrustDomains, publish their bundles into `trust`,
                             # and (while leading) refresh each one when due

Serving from status means a restart (or a new replica) keeps the last good bundle without fetching, and
all replicas hand workloads the same bundle. A failed fetch never replaces the last good bundle: it only
sets Ready=False with the reason in status, and an Event with generic text (the exact failure, e.g.
"connection refused" against "timed out", would tell whoever can read Events about hosts and ports the
peer's URL pointed at).

Peers are fetched concurrently, each on its own schedule, so one slow peer (up to the fetch timeout) does
not delay the rest. The schedule is keyed by the object's UID: a FederatedTrustDomain deleted and created
again under the same name is a new relationship and is fetched at once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from typing import Any

from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.models.core_v1 import ObjectReference
from lightkube.types import PatchType

from kubespiffe.constants import API_VERSION
from kubespiffe.federation.fetch import (
    BundleFetchError,
    Endpoint,
    Network,
    choose,
    fetch_bundle,
    next_refresh,
)
from kubespiffe.kube.client import FederatedTrustDomain as FederatedTrustDomainResource
from kubespiffe.kube.events import record_warning
from kubespiffe.kube.leader import LeaderElector
from kubespiffe.kube.watchcache import WatchCache
from kubespiffe.registry.federation import FederatedTrustDomain, FederationSpecError, federation_status
from kubespiffe.spiffe.bundle import (
    Bundle,
    BundleError,
    BundleSet,
    bundle_to_json,
    parse_bundle_json,
    parse_pem_certificates,
)
from kubespiffe.spiffe.spiffeid import TrustDomain
from kubespiffe.versioned import Versioned

log = logging.getLogger("kubespiffed.federation")
FETCH_FAILED_EVENT = (
    "Fetching the bundle failed; the last good bundle is kept. The reason is in status and kubespiffed's log."
)


def bootstrap_bundle(ftd: FederatedTrustDomain) -> Bundle | None:
    """The spec's bootstrap bundle: SPIFFE bundle JSON, or PEM certificates (X.509 authorities only)."""
    if not ftd.bootstrap:
        return None
    text = ftd.bootstrap.strip()
    if text.startswith(b"{"):
        return parse_bundle_json(ftd.trust_domain, text)
    return Bundle(ftd.trust_domain, tuple(parse_pem_certificates(text)))


def current_bundle(ftd: FederatedTrustDomain) -> Bundle | None:
    """Last good fetched bundle from status, else the bootstrap bundle."""
    if ftd.status_bundle:
        try:
            return parse_bundle_json(ftd.trust_domain, ftd.status_bundle)
        except BundleError as exc:
            log.error("status bundle of %s is unreadable (%s); using the bootstrap bundle", ftd.name, exc)
    return bootstrap_bundle(ftd)


class Federation:
    def __init__(
        self,
        client: AsyncClient,
        own: TrustDomain,
        trust: Versioned[BundleSet],
        leader: LeaderElector,
        min_refresh: float,
        max_refresh: float,
        allowed_networks: tuple[Network, ...] = (),
    ) -> None:
        self._client = client
        self._own = own
        self._trust = trust
        self._leader = leader
        self._min = min_refresh
        self._max = max_refresh
        self.cache = WatchCache(client, FederatedTrustDomainResource)
        self.cache.add_listener(self._changed)
        self._allowed = allowed_networks
        self._due: dict[str, float] = {}  # by UID
        self._fetching: dict[str, asyncio.Task[None]] = {}  # by UID
        self._publishing: set[asyncio.Task[None]] = set()

    def _parsed(self) -> list[FederatedTrustDomain]:
        result = []
        for obj in self.cache:
            try:
                result.append(FederatedTrustDomain.from_object(obj.to_dict()))
            except FederationSpecError as exc:
                log.warning("FederatedTrustDomain %s unusable: %s", obj.metadata.name, exc)
        return result

    def _changed(self, event: str, obj: Any) -> None:
        bundles: dict[TrustDomain, Bundle] = {}
        for ftd in self._parsed():
            if ftd.trust_domain == self._own:
                log.warning("FederatedTrustDomain %s names our own trust domain; ignored", ftd.name)
                continue
            try:
                bundle = current_bundle(ftd)
            except BundleError as exc:
                log.warning("FederatedTrustDomain %s: bootstrap bundle unusable: %s", ftd.name, exc)
                continue
            if bundle is not None:
                bundles[ftd.trust_domain] = bundle
        if event == "DELETED":
            log.info(
                "federation with %s ended (FederatedTrustDomain %s deleted)",
                obj.spec.get("trustDomain"),
                obj.metadata.name,
            )
        # Listeners are synchronous; keep a reference so the publish task is not garbage-collected.
        task = asyncio.get_running_loop().create_task(
            self._trust.update(lambda current: current.with_federated(bundles))
        )
        self._publishing.add(task)
        task.add_done_callback(self._publishing.discard)

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(self.cache.run())
            group.create_task(self._refresh_loop())

    async def _refresh_loop(self) -> None:
        await self.cache.synced.wait()
        async with asyncio.TaskGroup() as group:
            while True:
                current = {ftd.uid: ftd for ftd in self._parsed() if ftd.trust_domain != self._own}
                for uid in set(self._due) - set(current):  # deleted: forget its schedule
                    del self._due[uid]
                if self._leader.is_leader:
                    now = asyncio.get_running_loop().time()
                    for uid, ftd in current.items():
                        if uid not in self._fetching and now >= self._due.get(uid, 0.0):
                            self._fetching[uid] = group.create_task(self._refresh_one(ftd))
                await asyncio.sleep(0.5)

    async def _refresh_one(self, ftd: FederatedTrustDomain) -> None:
        try:
            delay = await self.refresh(ftd)
        except Exception:
            log.exception("refreshing FederatedTrustDomain %s failed", ftd.name)
            delay = self._min
        finally:
            del self._fetching[ftd.uid]
        self._due[ftd.uid] = asyncio.get_running_loop().time() + delay

    async def refresh(self, ftd: FederatedTrustDomain) -> float:
        """Fetch one trust domain's bundle and record the outcome; returns seconds until the next fetch."""
        current = current_bundle(ftd)
        endpoint = Endpoint(ftd.trust_domain, ftd.url, ftd.profile, ftd.endpoint_id, None)
        now = dt.datetime.now(dt.UTC)
        try:
            fetched = await fetch_bundle(endpoint, current, allowed_networks=self._allowed)
        except BundleFetchError as exc:
            delay = next_refresh(current, self._min, self._max)
            log.warning("bundle fetch failed trust_domain=%s url=%s: %s", ftd.trust_domain, ftd.url, exc)
            await self._write(ftd, None, now, delay, "FetchFailed", str(exc))
            await self._event(ftd, "FetchFailed", FETCH_FAILED_EVENT)
            return delay
        chosen = choose(current if ftd.status_bundle else None, fetched)
        delay = next_refresh(chosen, self._min, self._max)
        if chosen is not fetched:
            message = f"fetched sequence {fetched.sequence} is older than {chosen.sequence}; kept the newer"
        else:
            message = (
                f"sequence {fetched.sequence}: {len(fetched.x509_authorities)} X.509 authorities, "
                f"{len(fetched.jwt_authorities)} JWT keys"
            )
        await self._write(ftd, chosen, now, delay, "Fetched", message)
        if chosen is fetched and (current is None or bundle_to_json(current) != bundle_to_json(fetched)):
            log.info("bundle updated trust_domain=%s sequence=%s", ftd.trust_domain, fetched.sequence)
        return delay

    async def _write(
        self,
        ftd: FederatedTrustDomain,
        bundle: Bundle | None,
        now: dt.datetime,
        delay: float,
        reason: str,
        message: str,
    ) -> None:
        obj = self.cache.get(None, ftd.name)
        previous = ((obj.to_dict().get("status") or {}).get("conditions") or []) if obj is not None else []
        status = federation_status(
            ftd, bundle, previous, now, now + dt.timedelta(seconds=delay), reason, message
        )
        try:
            await self._client.patch(
                FederatedTrustDomainResource.Status, ftd.name, {"status": status}, patch_type=PatchType.MERGE
            )
        except ApiError as exc:
            log.warning("could not update status of FederatedTrustDomain %s: %s", ftd.name, exc)

    async def _event(self, ftd: FederatedTrustDomain, reason: str, message: str) -> None:
        involved = ObjectReference(
            apiVersion=API_VERSION, kind="FederatedTrustDomain", name=ftd.name, uid=ftd.uid
        )
        await record_warning(self._client, involved, reason, message)
