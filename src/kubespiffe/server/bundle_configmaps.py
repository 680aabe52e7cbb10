"""Publish the trust bundle as a ConfigMap in every namespace, so pods can mount it as their bootstrap trust.

The Lease holder applies ConfigMap `<name>` (keys `ca.crt`, PEM, and `bundle.spiffe.json`, the SPIFFE
bundle) to each namespace when the bundle changes (rotation) or a namespace appears; it checks once a
second, in memory, which namespaces lack the current version. Server-side apply makes each write
idempotent, so a new leader simply re-applies everything. The PEM key can be renamed
(`--bundle-configmap-key`) for consumers that expect another, such as a trust-manager target's key.
"""

from __future__ import annotations

import asyncio
import logging
import re

from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import ConfigMap, Namespace
from lightkube.types import PatchType

from kubespiffe.kube.leader import LeaderElector
from kubespiffe.kube.watchcache import WatchCache
from kubespiffe.spiffe.bundle import BundleSet, bundle_to_json, certificates_to_pem
from kubespiffe.versioned import Versioned

log = logging.getLogger("kubespiffed.bundles")

LABELS = {"app.kubernetes.io/name": "kubespiffe", "app.kubernetes.io/component": "trust-bundle"}
PEM_KEY = "ca.crt"
SPIFFE_KEY = "bundle.spiffe.json"
_CONFIGMAP_KEY = re.compile(r"[-._a-zA-Z0-9]{1,253}")


def check_pem_key(key: str) -> str:
    """A ConfigMap key (what the API server accepts) other than the SPIFFE bundle's; ValueError if not."""
    if not _CONFIGMAP_KEY.fullmatch(key) or key in (".", ".."):
        raise ValueError(f"bundle ConfigMap key {key!r} is not a ConfigMap key ([-._a-zA-Z0-9], 1-253)")
    if key == SPIFFE_KEY:
        raise ValueError(f"bundle ConfigMap key {key!r} is taken by the SPIFFE bundle")
    return key


class BundleConfigMaps:
    def __init__(
        self,
        client: AsyncClient,
        trust: Versioned[BundleSet],
        namespaces: WatchCache[Namespace],
        leader: LeaderElector,
        name: str,
        pem_key: str = PEM_KEY,
    ) -> None:
        self._client = client
        self._trust = trust
        self._namespaces = namespaces
        self._leader = leader
        self._name = name
        self._pem_key = check_pem_key(pem_key)
        self._published: dict[str, int] = {}  # namespace -> trust version written there

    def _data(self) -> dict[str, str]:
        own = self._trust.current.own
        return {
            self._pem_key: certificates_to_pem(list(own.x509_authorities)).decode(),
            SPIFFE_KEY: bundle_to_json(own).decode(),
        }

    async def run(self) -> None:
        await self._namespaces.synced.wait()
        while True:
            if self._leader.is_leader:
                version = self._trust.version
                data = self._data()
                for namespace in list(self._namespaces):
                    name = namespace.metadata.name if namespace.metadata else None
                    if name and self._published.get(name) != version:
                        await self._apply(name, data, version)
            else:
                self._published.clear()  # a later leadership re-applies everything
            await asyncio.sleep(1.0)

    async def _apply(self, namespace: str, data: dict[str, str], version: int) -> None:
        config_map = ConfigMap(
            metadata=ObjectMeta(name=self._name, namespace=namespace, labels=LABELS), data=data
        )
        try:
            await self._client.patch(
                ConfigMap,
                self._name,
                config_map,
                namespace=namespace,
                patch_type=PatchType.APPLY,
                field_manager="kubespiffed",
                force=True,
            )
        except ApiError as exc:
            if exc.status.code != 404:  # a namespace being deleted
                log.warning("could not publish the trust bundle to %s: %s", namespace, exc)
            return
        self._published[namespace] = version
