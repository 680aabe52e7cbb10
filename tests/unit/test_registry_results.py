"""The live registry's per-pod results: reused while the pod, its namespace and every registration are
unchanged, worked out again the moment any of them changes, never kept for objects not read from the API
server, dropped with the pod."""

from __future__ import annotations

import datetime as dt
from typing import Any, cast

from lightkube import AsyncClient
from lightkube.models.core_v1 import Container, PodSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Namespace, Pod

from kubespiffe.constants import API_VERSION
from kubespiffe.kube.client import ClusterWorkloadRegistration, WorkloadRegistration
from kubespiffe.registry.live import Registry
from kubespiffe.registry.models import CLUSTER_KIND, NAMESPACED_KIND
from kubespiffe.spiffe.spiffeid import TrustDomain

TD = TrustDomain("example.org")
T0 = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)


def _registration(name: str, second: int, **spec: Any) -> WorkloadRegistration:
    meta = ObjectMeta(
        name=name,
        namespace="team",
        uid=f"u-{name}",
        generation=1,
        creationTimestamp=T0 + dt.timedelta(seconds=second),
    )
    return WorkloadRegistration(apiVersion=API_VERSION, kind=NAMESPACED_KIND, metadata=meta, spec=spec)


def _namespace(version: str, labels: dict[str, str]) -> Namespace:
    return Namespace(metadata=ObjectMeta(name="team", resourceVersion=version, labels=labels))


def _pod(version: str | None, labels: dict[str, str]) -> Pod:
    return Pod(
        metadata=ObjectMeta(
            name="p", namespace="team", uid="pod-uid", resourceVersion=version, labels=labels
        ),
        spec=PodSpec(serviceAccountName="api", containers=[Container(name="app")]),
    )


def _registry() -> tuple[Registry, Any]:
    registry = Registry(cast(AsyncClient, None), TD, frozenset())  # never run: fed through the listeners
    registry.namespaces.put(_namespace("1", {"env": "prod"}))
    namespaced = registry.caches[2]
    namespaced.put(_registration("by-label", 0, podSelector={"matchLabels": {"app": "api"}}))
    return registry, namespaced


def _ids(registry: Registry, pod: Pod) -> list[str]:
    return [str(i.spiffe_id) for i in registry.identities(pod).identities]


def test_a_result_is_reused_until_the_pod_changes() -> None:
    registry, _ = _registry()
    pod = _pod("10", {"app": "api"})
    first = registry.identities(pod)
    assert registry.identities(pod) is first
    assert _ids(registry, _pod("11", {"app": "web"})) == []  # a label change: new resourceVersion


def test_a_registration_change_anywhere_is_seen_at_once() -> None:
    registry, namespaced = _registry()
    pod = _pod("10", {"app": "api"})
    assert _ids(registry, pod) == ["spiffe://example.org/ns/team/sa/api"]
    namespaced.put(
        _registration("second", 1, spiffeIDTemplate="spiffe://{trustDomain}/ns/{namespace}/second")
    )
    assert _ids(registry, pod) == [
        "spiffe://example.org/ns/team/sa/api",
        "spiffe://example.org/ns/team/second",
    ]
    namespaced._apply("DELETED", _registration("by-label", 0))
    assert _ids(registry, pod) == ["spiffe://example.org/ns/team/second"]


def test_a_namespace_change_is_seen_at_once() -> None:
    registry, _ = _registry()
    meta = ObjectMeta(name="prod-only", uid="u-prod", generation=1, creationTimestamp=T0)
    spec = {
        "namespaceSelector": {"matchLabels": {"env": "prod"}},
        "spiffeIDTemplate": "spiffe://{trustDomain}/ns/{namespace}/prod",
    }
    registry.caches[3].put(
        ClusterWorkloadRegistration(apiVersion=API_VERSION, kind=CLUSTER_KIND, metadata=meta, spec=spec)
    )
    pod = _pod("10", {"app": "api"})
    assert "spiffe://example.org/ns/team/prod" in _ids(registry, pod)
    registry.namespaces.put(_namespace("2", {"env": "dev"}))
    assert "spiffe://example.org/ns/team/prod" not in _ids(registry, pod)


def test_objects_without_a_resource_version_are_never_cached() -> None:
    registry, _ = _registry()
    pod = _pod(None, {"app": "api"})
    assert registry.identities(pod) is not registry.identities(pod)
    # Another object with the same UID and no version (say, a test's hand-made pod) gets its own answer.
    assert _ids(registry, _pod(None, {"app": "web"})) == []


def test_a_deleted_pod_takes_its_result_with_it() -> None:
    registry, _ = _registry()
    pod = _pod("10", {"app": "api"})
    registry.pods.put(pod)
    first = registry.identities(pod)
    registry.pods._apply("DELETED", pod)
    assert registry.identities(pod) is not first
