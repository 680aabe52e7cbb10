"""PodCertificateRequest signing: a burst of requests created as the node, against kube-apiserver alone.

Runs a real control plane and a real kubespiffed with `--pod-certificate-signer` under the chart's RBAC,
a Node, and N pods bound to it (one registration selects them all). Keys and stub CSRs are made first; then
all N requests are created as `system:node:<name>` at once (as many kubelets starting pods would) and a
watch records when each becomes Issued. Printed: the burst's duration and rate, and create -> Issued
latency per request, next to the targets. The pod -> credential file time on a real node is measured
separately (it adds the kubelet's part).

    .venv/bin/python bench/podcert.py [--requests 500]

Target on 2 cores: a burst of 500 all Issued within 10 s (>= 50 signed/s); no request signed twice.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import yaml
from lightkube import AsyncClient, KubeConfig
from lightkube.models.meta_v1 import ObjectMeta
from stack import percentiles  # bench/stack.py (benchmarks run as scripts)

from kubespiffe.devenv.controlplane import ControlPlane
from kubespiffe.devenv.podcerts import (
    Node,
    PodCertificateRequest,
    decision,
    grant_signer_rules,
    make_key,
    service_account_uid,
)
from kubespiffe.devenv.stack import Kubespiffed, authority_bundle_pem, install, service_account_token
from kubespiffe.devenv.workloads import create_pod, ensure_namespace
from kubespiffe.kube.client import WorkloadRegistration

SIGNER = "kubespiffe.io/svid"
NAMESPACE = "bench-podcert"
TARGET_SECONDS = 10.0
CREATE_CONCURRENCY = 32  # requests in flight while creating the burst (one kubelet's client would be fewer)


async def _watch_decisions(admin: AsyncClient, decided: dict[str, tuple[float, str]], total: int) -> None:
    async for _, obj in admin.watch(PodCertificateRequest, namespace=NAMESPACE):
        kind = decision(obj)
        if kind and obj.metadata.name not in decided:
            decided[obj.metadata.name] = (time.perf_counter(), kind)
            if len(decided) >= total:
                return


async def burst(plane: ControlPlane, admin: AsyncClient, total: int) -> None:
    node = await Node.ensure(plane, admin, "bench-node")
    await ensure_namespace(admin, NAMESPACE)
    await admin.create(WorkloadRegistration(metadata=ObjectMeta(name="all", namespace=NAMESPACE), spec={}))
    pods = [await create_pod(admin, NAMESPACE, f"p-{i}", "bench", node_name=node.name) for i in range(total)]
    sa_uid = await service_account_uid(admin, NAMESPACE, "bench")
    keys = [make_key("ECDSAP256") for _ in range(total)]
    await asyncio.sleep(2)  # kubespiffed's and NodeRestriction's caches have seen the pods
    decided: dict[str, tuple[float, str]] = {}
    created: dict[str, float] = {}
    watcher = asyncio.create_task(_watch_decisions(admin, decided, total))
    await asyncio.sleep(0.5)
    gate = asyncio.Semaphore(CREATE_CONCURRENCY)

    async def one(index: int) -> None:
        async with gate:
            started = time.perf_counter()
            obj: Any = await node.request(pods[index], sa_uid, keys[index], signer=SIGNER)
            created[obj.metadata.name] = started

    start = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(total)))
    all_created = time.perf_counter() - start
    await asyncio.wait_for(watcher, timeout=120)
    elapsed = max(t for t, _ in decided.values()) - start
    latencies = [decided[name][0] - created[name] for name in created]
    p50, p99 = percentiles(latencies)
    outcomes = {kind for _, kind in decided.values()}
    await node.close()
    print(f"requests: {total}  created in {all_created:.2f} s  outcomes: {','.join(sorted(outcomes))}")
    print(f"{'':24} {'measured':>10} {'target':>10}")
    print(f"{'burst all Issued (s)':24} {elapsed:>10.2f} {TARGET_SECONDS:>10.2f}")
    print(f"{'signed per second':24} {total / elapsed:>10.0f} {total / TARGET_SECONDS:>10.0f}")
    print(f"{'lag after last create (s)':24} {elapsed - all_created:>10.2f}   (the signer behind the burst)")
    print(f"{'create->Issued p50 (ms)':24} {p50:>10.0f}")
    print(f"{'create->Issued p99 (ms)':24} {p99:>10.0f}")


def _signed_twice(log: str) -> int:
    """Requests with more than one decision line in kubespiffed's log (must be 0)."""
    names = [line.split("pcr=")[1].split()[0] for line in log.splitlines() if " pcr=" in line]
    return len(names) - len(set(names))


async def main(total: int) -> None:
    with ControlPlane("bench-podcert") as plane:
        config = KubeConfig.from_dict(yaml.safe_load(plane.admin_kubeconfig()))
        admin = AsyncClient(config, field_manager="kubespiffe-bench")
        await install(admin)
        await grant_signer_rules(admin)
        daemon = Kubespiffed(plane, extra_args=(f"--pod-certificate-signer={SIGNER}",))
        daemon.start(await service_account_token(admin))
        try:
            bundle = await authority_bundle_pem(admin)
            await asyncio.to_thread(daemon.wait_ready, bundle)
            await asyncio.sleep(1)  # the one replica takes its Lease at once
            await burst(plane, admin, total)
            log = daemon.log.read_text()
            print(f"requests signed twice: {_signed_twice(log)} (target 0)")
        finally:
            daemon.stop()
            await admin.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=500, help="requests in the burst (bounded)")
    args = parser.parse_args()
    asyncio.run(main(min(args.requests, 2000)))
