"""The change signal behind WatchIdentity: a stream wakes for its own pod, namespace and cluster scope."""

from __future__ import annotations

from kubespiffe.registry.changes import Changes


async def test_a_stream_wakes_for_its_pod_its_namespace_and_cluster_scope_only() -> None:
    changes = Changes()
    with changes.watching("a", "web-1") as mine, changes.watching("b", "web-1") as other:
        changes.changed("a", "web-2")  # another pod of the namespace
        changes.changed("b")  # another namespace
        assert not mine.is_set()
        changes.changed("a", "web-1")
        assert mine.is_set()
        assert other.is_set()  # namespace b changed
    with changes.watching("a", "web-1") as mine:
        changes.changed("a")  # a registration of the namespace, or its labels
        assert mine.is_set()
    with changes.watching("a", "web-1") as mine:
        changes.changed_everywhere()  # a ClusterWorkloadRegistration
        assert mine.is_set()


async def test_entries_last_only_while_a_stream_waits() -> None:
    changes = Changes()
    with changes.watching("a", "web-1"), changes.watching("a", "web-1"):
        assert len(changes) == 2
    assert len(changes) == 0
    changes.changed("a", "web-1")  # nobody waiting: nothing kept
    assert len(changes) == 0
