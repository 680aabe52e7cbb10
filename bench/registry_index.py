"""Registration lookup per issuance: p50 of `Registry.identities(pod)` with 10 and with 5,000
registrations in other namespaces (issue 12, finding 7: 5,000 foreign registrations raised a pod's issuance
p50 from 0.97 to 6.8 ms, because every call sorted and checked every registration).

No control plane: the registrations go through the same watch-cache listener the live watch feeds, and the
lookup is the one the issuer API calls. The unindexed lookup (every registration, as before the index) is
measured alongside for comparison.

    .venv/bin/python bench/registry_index.py [--calls 2000]

Target: the indexed p50 does not grow with foreign registrations (within noise).
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import time
from collections.abc import Callable
from functools import partial
from typing import Any, cast

from lightkube import AsyncClient
from lightkube.models.core_v1 import Container, PodSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Namespace, Pod

from kubespiffe.constants import API_VERSION
from kubespiffe.kube.client import WorkloadRegistration
from kubespiffe.registry.live import Registry, pod_facts
from kubespiffe.registry.match import MatchResult, identities_for
from kubespiffe.registry.models import NAMESPACED_KIND, Registration
from kubespiffe.spiffe.spiffeid import TrustDomain

TD = TrustDomain("example.org")
T0 = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)


def registration(namespace: str, name: str, n: int) -> WorkloadRegistration:
    meta = ObjectMeta(
        name=name,
        namespace=namespace,
        uid=f"uid-{namespace}-{name}",
        generation=1,
        creationTimestamp=T0 + dt.timedelta(seconds=n),
    )
    return WorkloadRegistration(
        apiVersion=API_VERSION,
        kind=NAMESPACED_KIND,
        metadata=meta,
        spec={"serviceAccountNames": [name], "dnsNameTemplates": ["{podName}.{namespace}.svc"]},
    )


def build(foreign: int) -> tuple[Registry, Pod]:
    registry = Registry(cast(AsyncClient, None), TD, frozenset())  # never run: fed by hand below
    caches: Any = registry.caches
    namespaced = caches[2]
    registry.namespaces.put(Namespace(metadata=ObjectMeta(name="team", labels={"env": "prod"})))
    for i in range(5):
        namespaced.put(registration("team", f"own-{i}", i))
    namespaced.put(registration("team", "api", 5))
    for i in range(foreign):
        namespaced.put(registration(f"other-{i % 50}", f"r-{i}", 10 + i))
    pod = Pod(
        metadata=ObjectMeta(name="api-0", namespace="team", uid="pod-uid", labels={"app": "api"}),
        spec=PodSpec(serviceAccountName="api", nodeName="node-1", containers=[Container(name="app")]),
    )
    return registry, pod


def p50_ms(call: Callable[[], MatchResult], calls: int) -> float:
    samples = []
    for _ in range(calls):
        start = time.perf_counter()
        result = call()
        samples.append(time.perf_counter() - start)
    assert [str(i.spiffe_id) for i in result.identities] == ["spiffe://example.org/ns/team/sa/api"]
    return statistics.median(samples) * 1000


def unindexed(registry: Registry, pod: Pod, everything: list[Registration]) -> Callable[[], MatchResult]:
    labels = {"env": "prod"}
    return lambda: identities_for(pod_facts(pod), labels, everything, TD, frozenset())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    print(f"{'foreign registrations':>22} {'indexed p50 ms':>15} {'unindexed p50 ms':>17}")
    for foreign in (10, 5000):
        registry, pod = build(foreign)
        everything = [Registration.from_object(o.to_dict()) for o in registry.caches[2]]
        indexed = p50_ms(partial(registry.identities, pod), args.calls)
        flat = p50_ms(unindexed(registry, pod, everything), max(50, args.calls // 20))
        print(f"{foreign:>22} {indexed:>15.3f} {flat:>17.3f}")


if __name__ == "__main__":
    main()
