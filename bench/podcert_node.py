"""Pod certificates on the real local node: pod created -> credential file present, and the per-pod cost.

As root: starts the node with kubespiffe installed from its image and chart (kubespiffe.devenv.nodecluster,
pod certificates on), registers one ServiceAccount in a plain namespace and one in a namespace labelled for
injection, then creates N pods one after another, each the documented pod-certificate pod (a
`podCertificate` and a `clusterTrustBundle` projection, go-spiffe's mTLS server reading the files). Timed
from the create call to the credential file seen where the kubelet writes the volume on this machine (polled
every 5 ms), and to the pod Running. The last pods keep running, next to as many pods with the injected
agent running the same server over the Workload API; for both, the processes in the pod and the pod's
memory cgroup (usage and RSS, the sandbox included) are read.

    sudo .venv/bin/python bench/podcert_node.py [--pods 30] [--keep 3]

Targets on 2 cores: pod created -> credential file p99 <= 2 s; 0 processes besides the app (and the
sandbox's pause). The signer's throughput for a burst of 500 requests is bench/podcert.py.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from lightkube import Client
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Namespace, Pod, ServiceAccount
from stack import percentiles  # bench/stack.py (benchmarks run as scripts)

from kubespiffe.devenv.build import ensure_interop
from kubespiffe.devenv.images import interop_archive
from kubespiffe.devenv.nodecluster import NodeCluster, pod_cgroup, pod_memory_bytes, pod_processes
from kubespiffe.injection.settings import INJECT_ENABLED, INJECT_LABEL
from kubespiffe.kube.client import WorkloadRegistration

FILES_NS = "bench-podcert"
AGENT_NS = "bench-agent"
SIGNER = "kubespiffe.io/svid"
TARGET_P99_MS = 2000.0
MOUNT = "/var/run/spiffe"
CREDENTIAL = "svid.pem"


def _wait(predicate: Any, timeout: float, what: str, pause: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out: {what}")
        time.sleep(pause)


def prepare(client: Client, namespace: str, labels: dict[str, str]) -> None:
    client.create(Namespace(metadata=ObjectMeta(name=namespace, labels=labels)))
    _wait(lambda: any(True for _ in client.list(ServiceAccount, namespace=namespace)), 30, "ServiceAccount")
    client.create(ServiceAccount(metadata=ObjectMeta(name="app")), namespace=namespace)
    client.create(
        WorkloadRegistration(
            metadata=ObjectMeta(name="app", namespace=namespace), spec={"serviceAccountNames": ["app"]}
        )
    )

    def ready() -> bool:
        current = client.get(WorkloadRegistration, "app", namespace=namespace)
        conditions = (current.get("status") or {}).get("conditions") or []
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    _wait(ready, 30, f"the registration in {namespace} to be Ready")


def server_pod(name: str, image: str, trust_domain: str, files: bool) -> Pod:
    """go-spiffe's mTLS server: from the projected files, or (files=False) from the injected agent."""
    namespace = FILES_NS if files else AGENT_NS
    args = ["mtls-server", "-listen", "0.0.0.0:8443", "-timeout", "30m"]
    args += ["-authorize", f"spiffe://{trust_domain}/ns/{namespace}/sa/app"]
    container: dict[str, Any] = {"name": "app", "image": image, "imagePullPolicy": "Never", "args": args}
    spec: dict[str, Any] = {
        "serviceAccountName": "app",
        "terminationGracePeriodSeconds": 0,
        "containers": [container],
    }
    if files:
        args += ["-svid-file", f"{MOUNT}/svid.pem", "-trust-bundle-file", f"{MOUNT}/bundle.pem"]
        container["volumeMounts"] = [{"name": "spiffe", "mountPath": MOUNT, "readOnly": True}]
        selector = {"matchLabels": {"kubespiffe.io/trust-domain": trust_domain}}
        sources = [
            {
                "podCertificate": {
                    "signerName": SIGNER,
                    "keyType": "ECDSAP256",
                    "credentialBundlePath": "svid.pem",
                }
            },
            {"clusterTrustBundle": {"signerName": SIGNER, "labelSelector": selector, "path": "bundle.pem"}},
        ]
        spec["volumes"] = [{"name": "spiffe", "projected": {"sources": sources}}]
    return Pod.from_dict({"metadata": {"name": name}, "spec": spec})


def running(client: Client, name: str, namespace: str) -> bool:
    pod = client.get(Pod, name, namespace=namespace)
    statuses = (pod.status.containerStatuses if pod.status else None) or []
    return any(s.name == "app" and s.state is not None and s.state.running is not None for s in statuses)


def create_to_file(cluster: NodeCluster, client: Client, name: str, image: str) -> tuple[float, float]:
    """Seconds from the create call to svid.pem on disk, and to the app container running."""
    start = time.perf_counter()
    created = client.create(server_pod(name, image, cluster.trust_domain, True), namespace=FILES_NS)
    assert created.metadata is not None and created.metadata.uid is not None
    credential = cluster.pod_volume(created.metadata.uid, "spiffe") / CREDENTIAL
    _wait(credential.exists, 30, f"{credential}", pause=0.005)
    to_file = time.perf_counter() - start
    _wait(lambda: running(client, name, FILES_NS), 60, f"pod {name} running")
    return to_file, time.perf_counter() - start


def pod_cost(client: Client, name: str, namespace: str) -> tuple[list[str], float, float]:
    """The pod's processes, its memory cgroup usage and RSS (MiB), sandbox included."""
    pod = client.get(Pod, name, namespace=namespace)
    assert pod.metadata is not None and pod.metadata.uid is not None
    uid = pod.metadata.uid
    stat = (pod_cgroup(uid, "memory") / "memory.stat").read_text().split()
    rss = int(dict(zip(stat[::2], stat[1::2], strict=True))["total_rss"])
    return pod_processes(uid), pod_memory_bytes(uid) / 2**20, rss / 2**20


def main(pods: int, keep: int) -> int:
    if os.geteuid() != 0:
        print(
            "bench/podcert_node.py needs root (a real node: containerd, kubelet, iptables)", file=sys.stderr
        )
        return 2
    trust_domain = "bench.example"
    directory = Path(tempfile.mkdtemp(prefix="kubespiffe-bench-podcert-node-"))
    image, archive = interop_archive(ensure_interop())
    cluster = NodeCluster(directory, trust_domain, extra_images=(archive,))
    try:
        cluster.start()
        client = cluster.client()
        prepare(client, FILES_NS, {})
        prepare(client, AGENT_NS, {INJECT_LABEL: INJECT_ENABLED})
        to_file, to_running = [], []
        for i in range(pods):
            file_seconds, running_seconds = create_to_file(cluster, client, f"pc-{i}", image)
            to_file.append(file_seconds)
            to_running.append(running_seconds)
            if i < pods - keep:
                client.delete(Pod, f"pc-{i}", namespace=FILES_NS)
        for i in range(keep):
            client.create(server_pod(f"agent-{i}", image, trust_domain, False), namespace=AGENT_NS)
        for i in range(keep):
            _wait(lambda i=i: running(client, f"agent-{i}", AGENT_NS), 90, f"agent-{i} running")
        time.sleep(5)  # let the agents settle after their first SVID
        files_cost = [pod_cost(client, f"pc-{i}", FILES_NS) for i in range(pods - keep, pods)]
        agent_cost = [pod_cost(client, f"agent-{i}", AGENT_NS) for i in range(keep)]
    finally:
        cluster.stop()
        shutil.rmtree(directory, ignore_errors=True)
    cluster.check_clean()
    file_p50, file_p99 = percentiles(to_file)
    run_p50, run_p99 = percentiles(to_running)
    print(f"{pods} pods, one after another; {keep} of each kind kept for the per-pod cost")
    print(
        f"pod created -> credential file: p50 {file_p50:.0f} ms, p99 {file_p99:.0f} ms "
        f"(target p99 <= {TARGET_P99_MS:.0f} ms) {'OK' if file_p99 <= TARGET_P99_MS else 'MISSED'}"
    )
    print(f"pod created -> app running:     p50 {run_p50:.0f} ms, p99 {run_p99:.0f} ms")
    for label, costs in (("pod certificate", files_cost), ("injected agent", agent_cost)):
        processes = sorted({" ".join(p) for p, _, _ in costs})
        usage = max(c[1] for c in costs)
        rss = max(c[2] for c in costs)
        print(
            f"{label + ' pod:':21} processes {' | '.join(processes)}; "
            f"memory cgroup max usage {usage:.1f} MiB, RSS {rss:.1f} MiB"
        )
    extra = {name for p, _, _ in files_cost for name in p} - {"pause", "spiffe-interop"}
    print(
        f"processes besides the app and pause in a pod-certificate pod: {len(extra)} (target 0) "
        f"{'OK' if not extra else 'MISSED'}"
    )
    saved = max(c[2] for c in agent_cost) - max(c[2] for c in files_cost)
    print(f"per-pod RSS saved by pod certificates instead of the agent: {saved:.1f} MiB")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pods", type=int, default=30)
    parser.add_argument("--keep", type=int, default=3, help="pods of each kind kept for the memory reading")
    arguments = parser.parse_args()
    sys.exit(main(arguments.pods, max(1, min(arguments.keep, arguments.pods))))
