"""Sidecar injection on the real local node: pod created -> app running with an SVID, and the agent's memory.

As root: starts the node with kubespiffe installed from its image and chart (kubespiffe.devenv.nodecluster),
registers one ServiceAccount, then creates N pods one after another in a namespace labelled
kubespiffe.io/inject=enabled. Each pod is what an application team writes: go-spiffe's mTLS server
(tools/interop), which starts only once the injected agent holds an SVID (its postStart hook) and then
fetches it over the Workload API. Timed from the create call to the app container seen running.
Afterwards the injected agent's memory is read from /proc (RSS and PSS of the `kubespiffe agent`
process, smaps_rollup) and from its container's memory cgroup, for the last pods, which keep running.

    sudo .venv/bin/python bench/node_injection.py [--pods 30] [--keep 3]

Targets on 2 cores: pod created -> app running with an SVID p99 <= 3 s; agent memory within the injected
container's request (64 MiB; limit 128 MiB).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from lightkube import Client
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Namespace, Pod, ServiceAccount
from stack import percentiles  # bench/stack.py (benchmarks run as scripts)

from kubespiffe.devenv.build import ensure_interop
from kubespiffe.devenv.images import interop_archive
from kubespiffe.devenv.nodecluster import NodeCluster
from kubespiffe.injection.settings import INJECT_ENABLED, INJECT_LABEL, SIDECAR_NAME
from kubespiffe.kube.client import WorkloadRegistration

NAMESPACE = "bench"
TARGET_P99_MS = 3000.0
TARGET_MEMORY_MIB = 64.0


def _wait(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out: {what}")
        time.sleep(0.05)


def prepare(client: Client, trust_domain: str) -> None:
    client.create(Namespace(metadata=ObjectMeta(name=NAMESPACE, labels={INJECT_LABEL: INJECT_ENABLED})))
    client.create(ServiceAccount(metadata=ObjectMeta(name="app")), namespace=NAMESPACE)
    client.create(
        WorkloadRegistration(
            metadata=ObjectMeta(name="app", namespace=NAMESPACE), spec={"serviceAccountNames": ["app"]}
        )
    )

    def ready() -> bool:
        current = client.get(WorkloadRegistration, "app", namespace=NAMESPACE)
        conditions = (current.get("status") or {}).get("conditions") or []
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    _wait(ready, 30, "the registration to be Ready")


def app_pod(name: str, image: str, trust_domain: str) -> Pod:
    peer = f"spiffe://{trust_domain}/ns/{NAMESPACE}/sa/app"
    args = ["mtls-server", "-listen", "0.0.0.0:8443", "-authorize", peer, "-timeout", "30m"]
    return Pod.from_dict(
        {
            "metadata": {"name": name},
            "spec": {
                "serviceAccountName": "app",
                "terminationGracePeriodSeconds": 0,
                "containers": [{"name": "app", "image": image, "imagePullPolicy": "Never", "args": args}],
            },
        }
    )


def app_running(client: Client, name: str) -> bool:
    pod = client.get(Pod, name, namespace=NAMESPACE)
    statuses = (pod.status.containerStatuses if pod.status else None) or []
    return any(s.name == "app" and s.state is not None and s.state.running is not None for s in statuses)


def create_to_running(client: Client, name: str, image: str, trust_domain: str) -> float:
    start = time.perf_counter()
    client.create(app_pod(name, image, trust_domain), namespace=NAMESPACE)
    _wait(lambda: app_running(client, name), 60, f"pod {name} running")
    return time.perf_counter() - start


def _kib(text: str, field: str) -> int:
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def agent_memory(client: Client, name: str) -> tuple[float, float, float]:
    """RSS and PSS (MiB) of the pod's `kubespiffe agent` process, and its container's memory cgroup usage."""
    pod = client.get(Pod, name, namespace=NAMESPACE)
    statuses = (pod.status.initContainerStatuses if pod.status else None) or []
    (sidecar,) = [s for s in statuses if s.name == SIDECAR_NAME]
    assert sidecar.containerID is not None
    container_id = sidecar.containerID.split("://", 1)[1]
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            cgroup = Path(f"/proc/{pid}/cgroup").read_text()
        except OSError:
            continue
        if container_id in cgroup and b"agent" in cmdline and any(b"kubespiffe" in part for part in cmdline):
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
            memory_path = next(line.split(":", 2)[2] for line in cgroup.splitlines() if ":memory:" in line)
            usage = Path(f"/sys/fs/cgroup/memory{memory_path}/memory.usage_in_bytes").read_text()
            return _kib(rollup, "Rss") / 1024, _kib(rollup, "Pss") / 1024, int(usage) / 2**20
    raise SystemExit(f"no kubespiffe agent process found for pod {name}")


def main(pods: int, keep: int) -> int:
    if os.geteuid() != 0:
        print(
            "bench/node_injection.py needs root (a real node: containerd, kubelet, iptables)", file=sys.stderr
        )
        return 2
    trust_domain = "bench.example"
    directory = Path(tempfile.mkdtemp(prefix="kubespiffe-bench-node-"))
    image, archive = interop_archive(ensure_interop())
    cluster = NodeCluster(directory, trust_domain, extra_images=(archive,))
    try:
        cluster.start()
        client = cluster.client()
        prepare(client, trust_domain)
        samples = []
        for i in range(pods):
            samples.append(create_to_running(client, f"app-{i}", image, trust_domain))
            if i < pods - keep:
                client.delete(Pod, f"app-{i}", namespace=NAMESPACE)
        time.sleep(2)  # let the kept agents settle after their first SVID
        memory = [agent_memory(client, f"app-{i}") for i in range(pods - keep, pods)]
    finally:
        cluster.stop()
        shutil.rmtree(directory, ignore_errors=True)
    cluster.check_clean()
    p50, p99 = percentiles(samples)
    rss = max(m[0] for m in memory)
    pss = max(m[1] for m in memory)
    cgroup = max(m[2] for m in memory)
    print(
        f"pod created -> app running with an SVID, {pods} pods: p50 {p50:.0f} ms, p99 {p99:.0f} ms "
        f"(target p99 <= {TARGET_P99_MS:.0f} ms) {'OK' if p99 <= TARGET_P99_MS else 'MISSED'}"
    )
    print(
        f"injected agent memory, max of {keep} pods: RSS {rss:.1f} MiB, PSS {pss:.1f} MiB, "
        f"container cgroup {cgroup:.1f} MiB (target <= {TARGET_MEMORY_MIB:.0f} MiB, the sidecar's request) "
        f"{'OK' if max(rss, cgroup) <= TARGET_MEMORY_MIB else 'MISSED'}"
    )
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pods", type=int, default=30)
    parser.add_argument("--keep", type=int, default=3, help="pods left running for the memory reading")
    arguments = parser.parse_args()
    sys.exit(main(arguments.pods, arguments.keep))
