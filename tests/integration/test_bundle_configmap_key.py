"""The bundle ConfigMap's PEM key (--bundle-configmap-key) against the real API server: the PEM lands under
the configured key, and renaming the key removes the old one (server-side apply drops the fields its
manager no longer sends), as docs/trust-bundle.md says."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from collections.abc import Iterator

from lightkube import AsyncClient
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import ConfigMap, Namespace

from kubespiffe.authority.keys import KeyType
from kubespiffe.authority.x509ca import create_self_signed_ca
from kubespiffe.kube.leader import LeaderElector
from kubespiffe.server.bundle_configmaps import BundleConfigMaps
from kubespiffe.spiffe.bundle import Bundle, BundleSet, parse_pem_certificates
from kubespiffe.spiffe.spiffeid import TrustDomain
from kubespiffe.versioned import Versioned

NAME = "keytest-bundle"


class OneNamespace:
    """The part of a namespace WatchCache BundleConfigMaps reads: synced, and the namespaces."""

    def __init__(self, name: str) -> None:
        self.synced = asyncio.Event()
        self.synced.set()
        self._namespace = Namespace(metadata=ObjectMeta(name=name))

    def __iter__(self) -> Iterator[Namespace]:
        return iter([self._namespace])


async def _publish_until(
    kube: AsyncClient, namespace: str, trust: Versioned[BundleSet], key: str
) -> dict[str, str]:
    leader = LeaderElector(kube, namespace, "unused", "test")
    leader.is_leader = True
    publisher = BundleConfigMaps(kube, trust, OneNamespace(namespace), leader, NAME, key)  # type: ignore[arg-type]
    task = asyncio.create_task(publisher.run())
    try:
        deadline = time.monotonic() + 15
        while True:
            with contextlib.suppress(Exception):
                data = (await kube.get(ConfigMap, NAME, namespace=namespace)).data or {}
                if key in data:
                    return dict(data)
            assert time.monotonic() < deadline, f"ConfigMap never got key {key}"
            await asyncio.sleep(0.2)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_pem_key_renamed_and_old_key_removed(kube: AsyncClient, namespace: str) -> None:
    td = TrustDomain("example.org")
    ca = create_self_signed_ca(td, KeyType.EC_P256, dt.timedelta(hours=1), dt.datetime.now(dt.UTC))
    trust = Versioned(BundleSet(Bundle(td, (ca.certificate,))))

    first = await _publish_until(kube, namespace, trust, "ca.crt")
    assert set(first) == {"ca.crt", "bundle.spiffe.json"}
    assert parse_pem_certificates(first["ca.crt"].encode()) == [ca.certificate]

    renamed = await _publish_until(kube, namespace, trust, "trust-bundle.pem")
    assert set(renamed) == {"trust-bundle.pem", "bundle.spiffe.json"}
    assert parse_pem_certificates(renamed["trust-bundle.pem"].encode()) == [ca.certificate]
