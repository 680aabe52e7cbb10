"""The live registry's namespace index: same identities, in the same order, as matching every
registration; and a pod's lookup never looks at other namespaces' WorkloadRegistrations."""

from __future__ import annotations

import datetime as dt
import random
from typing import Any, cast

import pytest
from lightkube import AsyncClient
from lightkube.models.core_v1 import Container, PodSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Namespace, Pod

from kubespiffe.constants import API_VERSION
from kubespiffe.kube.client import ClusterWorkloadRegistration, WorkloadRegistration
from kubespiffe.registry import live
from kubespiffe.registry.live import Registry, pod_facts
from kubespiffe.registry.match import identities_for
from kubespiffe.registry.models import CLUSTER_KIND, NAMESPACED_KIND, Registration
from kubespiffe.spiffe.spiffeid import TrustDomain

TD = TrustDomain("example.org")
T0 = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)


def _obj(namespace: str | None, name: str, second: int, template: str) -> Any:
    meta = ObjectMeta(
        name=name,
        namespace=namespace,
        uid=f"u-{namespace}-{name}",
        generation=1,
        creationTimestamp=T0 + dt.timedelta(seconds=second),
    )
    resource = WorkloadRegistration if namespace else ClusterWorkloadRegistration
    kind = NAMESPACED_KIND if namespace else CLUSTER_KIND
    return resource(apiVersion=API_VERSION, kind=kind, metadata=meta, spec={"spiffeIDTemplate": template})


def _registry(objects: list[Any]) -> Registry:
    registry = Registry(cast(AsyncClient, None), TD, frozenset())  # never run: fed through the listener
    registry.namespaces.put(Namespace(metadata=ObjectMeta(name="team", labels={"env": "prod"})))
    caches: Any = registry.caches
    for obj in objects:
        (caches[2] if obj.metadata.namespace else caches[3]).put(obj)
    return registry


POD = Pod(
    metadata=ObjectMeta(name="p", namespace="team", uid="pod", labels={"app": "api"}),
    spec=PodSpec(serviceAccountName="api", containers=[Container(name="app")]),
)


@pytest.mark.parametrize("seed", range(5))
def test_index_keeps_identities_and_their_order(seed: int) -> None:
    rng = random.Random(seed)
    objects = []
    for i in range(60):
        namespace = rng.choice(["team", "other", None])
        second = rng.randrange(10)  # many ties on the timestamp: order falls back to kind, namespace, name
        ns_part = "ns/{namespace}/" if namespace else ""
        objects.append(_obj(namespace, f"r{i}", second, f"spiffe://{{trustDomain}}/{ns_part}id{i}"))
    rng.shuffle(objects)
    registry = _registry(objects)
    everything = [Registration.from_object(o.to_dict()) for o in objects]
    expected = identities_for(pod_facts(POD), {"env": "prod"}, everything, TD, frozenset())
    assert registry.identities(POD) == expected
    assert len(expected.identities) > 5


def test_lookup_ignores_other_namespaces(monkeypatch: pytest.MonkeyPatch) -> None:
    objects = [_obj("team", "own", 0, "spiffe://{trustDomain}/ns/{namespace}/own")]
    objects += [
        _obj(f"other-{i % 7}", f"r{i}", i, "spiffe://{trustDomain}/ns/{namespace}/x") for i in range(500)
    ]
    objects.append(_obj(None, "cluster", 1, "spiffe://{trustDomain}/c"))
    registry = _registry(objects)
    seen: list[int] = []

    def counting(pod: Any, labels: Any, registrations: Any, *args: Any) -> Any:
        candidates = list(registrations)
        seen.append(len(candidates))
        return identities_for(pod, labels, candidates, *args)

    monkeypatch.setattr(live, "identities_for", counting)
    assert [str(i.spiffe_id) for i in registry.identities(POD).identities] == [
        "spiffe://example.org/ns/team/own",
        "spiffe://example.org/c",
    ]
    assert seen == [2]
