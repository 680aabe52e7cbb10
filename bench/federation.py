"""Federation latency: from a bundle change at B to its delivery on the Workload API streams of A's agent.

Starts two real clusters (a, b) federated as `kubespiffe dev up --clusters 2` does, with B publishing a 1 s
refresh hint and A polling no slower than that. Each round forces a rotation at B (`kubespiffe ca rotate`),
takes the moment B's authority Secret holds the new bundle sequence as the change, and the moment an
open FetchX509Bundles stream on A's agent shows B's new CA as the delivery.

    .venv/bin/python bench/federation.py [--rounds 5]

Target: delivery <= refresh hint + 1 s.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
from lightkube.models.meta_v1 import ObjectMeta
from spiffe._proto import workload_pb2, workload_pb2_grpc
from stack import work_directory  # bench/stack.py (benchmarks run as scripts)

from kubespiffe.authority import store
from kubespiffe.devenv.stack import AUTHORITY_SECRET, NAMESPACE, agent_command
from kubespiffe.devenv.up import Cluster, federate_pair
from kubespiffe.devenv.workloads import create_pod, ensure_namespace, pod_token
from kubespiffe.kube.client import WorkloadRegistration
from kubespiffe.spiffe.bundle import parse_der_certificates

HINT = 1.0
ARGS = ("--bundle-refresh-hint=1s", "--federation-min-refresh=1s")


def watch_b_roots(socket: Path, arrivals: list[tuple[float, set[int]]], stop: threading.Event) -> None:
    """Record (time, serial numbers of B's X.509 authorities) for every message of one long-lived stream."""
    with grpc.insecure_channel(f"unix://{socket}") as channel:
        stream = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel).FetchX509Bundles(
            workload_pb2.X509BundlesRequest(), metadata=(("workload.spiffe.io", "true"),)
        )
        try:
            for message in stream:
                roots = message.bundles.get("spiffe://b")
                serials = {c.serial_number for c in parse_der_certificates(roots)} if roots else set()
                arrivals.append((time.monotonic(), serials))
                if stop.is_set():
                    stream.cancel()
                    return
        except grpc.RpcError:
            return  # the agent stopped at the end of the run


async def b_state(cluster: Cluster) -> store.Stored:
    client = cluster.client()
    try:
        stored = await store.load(client, NAMESPACE, AUTHORITY_SECRET)
    finally:
        await client.close()
    assert stored is not None
    return stored


async def main(rounds: int, root: Path) -> None:
    a, b = Cluster("a", "a", root / "a", ARGS), Cluster("b", "b", root / "b", ARGS)
    agent: subprocess.Popen[bytes] | None = None
    try:
        for cluster in (a, b):
            await asyncio.to_thread(cluster.start)
        await federate_pair(a, b)
        client = a.client()
        await ensure_namespace(client, "bench")
        await client.create(
            WorkloadRegistration(
                metadata=ObjectMeta(name="w", namespace="bench"), spec={"federatesWith": ["b"]}
            )
        )
        pod = await create_pod(client, "bench", "w-0", "w")
        (root / "token").write_text(await pod_token(client, pod))
        await client.close()
        socket = root / "agent.sock"
        agent = subprocess.Popen(
            agent_command(a.daemon.address, root / "token", a.directory / "bundle.pem", socket),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        arrivals: list[tuple[float, set[int]]] = []
        stop = threading.Event()
        while not socket.exists():
            await asyncio.sleep(0.05)
        await asyncio.sleep(2)
        watcher = threading.Thread(target=watch_b_roots, args=(socket, arrivals, stop), daemon=True)
        watcher.start()
        delays = []
        for _ in range(rounds):
            while (
                await b_state(b)
            ).state.prepared is not None:  # the previous round's CA must activate first
                await asyncio.sleep(0.2)
            before = (await b_state(b)).state.sequence
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "kubespiffe.cli.main",
                    "ca",
                    "rotate",
                    "--kubeconfig",
                    str(b.kubeconfig),
                ],
                check=True,
                capture_output=True,
            )
            while (stored := await b_state(b)).state.sequence == before:
                await asyncio.sleep(0.02)
            changed = time.monotonic()
            prepared = stored.state.prepared
            assert prepared is not None
            serial = prepared.authority.certificate.serial_number
            while not any(serial in roots for _, roots in arrivals):
                await asyncio.sleep(0.01)
            delays.append(next(t for t, roots in arrivals if serial in roots) - changed)
        stop.set()
        delays.sort()
        print(
            f"bundle change at B -> A's agent stream, refresh hint {HINT:.0f} s, {rounds} rotations: "
            f"median {delays[len(delays) // 2] * 1000:.0f} ms, max {delays[-1] * 1000:.0f} ms "
            f"(target <= {(HINT + 1) * 1000:.0f} ms)"
        )
    finally:
        if agent is not None:
            agent.terminate()
            agent.wait(10)
        for cluster in (b, a):
            cluster.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5, help="forced rotations at B (bounded to 20)")
    with work_directory("kubespiffe-bench-fed-") as root:
        asyncio.run(main(min(parser.parse_args().rounds, 20), root))
