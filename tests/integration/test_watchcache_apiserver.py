"""The pod cache against the real kube-apiserver: a list read in pages (limit/continue) is complete and
decodes into PodView; a relist after the watch was down reports the pods deleted meanwhile, and the watch
resumes from the list's resourceVersion (a delete after it arrives as an event)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from lightkube import AsyncClient
from lightkube.resources.core_v1 import Pod

from kubespiffe.devenv.workloads import create_pod
from kubespiffe.kube import watchcache
from kubespiffe.kube.pods import PodView
from kubespiffe.kube.watchcache import WatchCache

pytestmark = pytest.mark.integration


async def _until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    for _ in range(int(timeout / 0.05)):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached")


async def test_paged_relist_reports_pods_deleted_while_the_watch_was_down(
    kube: AsyncClient, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(watchcache, "PAGE_SIZE", 2)  # five pods: three pages from one snapshot
    for i in range(5):
        await create_pod(kube, namespace, f"pod-{i}", "app", labels={"app": f"a{i}"})
    cache: WatchCache[PodView] = WatchCache(kube, PodView, namespace=namespace)
    events: list[tuple[str, str]] = []
    cache.add_listener(lambda kind, pod: events.append((kind, pod.metadata.name)))

    task = asyncio.create_task(cache.run())
    await asyncio.wait_for(cache.synced.wait(), 10)
    assert sorted(name for _, name in events) == [f"pod-{i}" for i in range(5)]
    pod = cache.get(namespace, "pod-3")
    assert pod is not None and pod.metadata is not None and pod.spec is not None
    assert (pod.metadata.labels, pod.spec.serviceAccountName) == ({"app": "a3"}, "app")
    task.cancel()  # the watch is down: what happens now is seen only by the next list

    await kube.delete(Pod, "pod-1", namespace=namespace)
    await create_pod(kube, namespace, "pod-5", "app")
    events.clear()
    task = asyncio.create_task(cache.run())
    try:
        await _until(lambda: cache.relists == 2)
        assert sorted(events) == [("ADDED", "pod-5"), ("DELETED", "pod-1")]
        assert cache.get(namespace, "pod-1") is None
        assert len(cache) == 5

        await kube.delete(Pod, "pod-2", namespace=namespace)  # after the list: the watch delivers it
        await _until(lambda: cache.get(namespace, "pod-2") is None)
        assert events[-1] == ("DELETED", "pod-2")
    finally:
        task.cancel()
