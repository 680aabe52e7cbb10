"""Push, not poll (issue 9 part 1): how soon an agent serves, or stops serving, after its grant changes.

Runs a real control plane and kubespiffed, then agent processes (as sidecars run), each for its own pod
with no identity, waiting a random time (short: 2-12 s, long: 65-98 s: the agent's retry backoff has
grown to 30 s by then) before its grant changes:
- registration created -> the first SVID served on the agent's socket (a Workload API client polling
  FetchX509SVID every 10 ms);
- label change that makes the pod match an existing registration -> the first SVID served;
- registration deleted (after the SVID is served) -> the open FetchX509SVID stream ends PermissionDenied.

    .venv/bin/python bench/push.py [--agents 20]

Targets: every transition p99 <= 1 s, however long the pod waited.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import subprocess
import time
from pathlib import Path

import grpc
from lightkube import AsyncClient, KubeConfig
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Pod
from spiffe._proto import workload_pb2, workload_pb2_grpc
from stack import percentiles, running_stack  # bench/stack.py (benchmarks run as scripts)

from kubespiffe.devenv.stack import agent_command
from kubespiffe.devenv.workloads import create_pod, ensure_namespace, pod_token
from kubespiffe.kube.client import WorkloadRegistration

HEADER = (("workload.spiffe.io", "true"),)
NAMESPACE = "push"
WAITS = {"short (2-12 s)": (2.0, 12.0), "long (65-98 s)": (65.0, 98.0)}


async def serving(channel: grpc.aio.Channel) -> bool:
    call = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel).FetchX509SVID(
        workload_pb2.X509SVIDRequest(), metadata=HEADER, timeout=5
    )
    try:
        return bool((await call.read()).svids)
    except grpc.aio.AioRpcError:
        return False
    finally:
        call.cancel()


async def until_served(channel: grpc.aio.Channel, since: float) -> float:
    while not await serving(channel):
        if time.monotonic() - since > 60:
            return float("inf")
        await asyncio.sleep(0.01)
    return time.monotonic() - since


async def until_refused(channel: grpc.aio.Channel, delete: asyncio.Future[None]) -> float:
    """Open a stream, have the registration deleted (`delete`), then time the stream's end."""
    stream = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel).FetchX509SVID(
        workload_pb2.X509SVIDRequest(), metadata=HEADER
    )
    await stream.read()
    since = time.monotonic()
    delete.set_result(None)
    try:
        while True:
            await asyncio.wait_for(stream.read(), 60)
    except grpc.aio.AioRpcError:
        return time.monotonic() - since
    except TimeoutError:
        return float("inf")


class Round:
    """One pod and its agent process; its grant changes after `wait` seconds."""

    def __init__(self, kube: AsyncClient, work: Path, address: str, bundle: bytes, name: str) -> None:
        self.kube, self.work, self.address, self.bundle, self.name = kube, work, address, bundle, name

    async def start(self, labels: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        directory = self.work / self.name
        directory.mkdir()
        pod = await create_pod(self.kube, NAMESPACE, self.name, self.name, labels=labels)
        (directory / "token").write_text(await pod_token(self.kube, pod))
        (directory / "bundle.pem").write_bytes(self.bundle)
        self.socket = directory / "agent.sock"
        command = agent_command(self.address, directory / "token", directory / "bundle.pem", self.socket)
        with (directory / "agent.log").open("wb") as log:
            return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)

    async def register(self, spec: dict[str, object]) -> None:
        meta = ObjectMeta(name=self.name, namespace=NAMESPACE)
        await self.kube.create(WorkloadRegistration(metadata=meta, spec=spec))

    async def run(self, wait: float, label: bool) -> tuple[float, float]:
        """(grant -> SVID served, registration deleted -> stream ended), in seconds."""
        if label:
            await self.register({"podSelector": {"matchLabels": {"push": self.name}}})
        process = await self.start({"push": "no"} if label else None)
        try:
            while not self.socket.exists():
                await asyncio.sleep(0.01)
            async with grpc.aio.insecure_channel(f"unix://{self.socket}") as channel:
                await asyncio.sleep(wait)
                assert not await serving(channel), "served before its grant"
                since = time.monotonic()
                if label:
                    patch = {"metadata": {"labels": {"push": self.name}}}
                    await self.kube.patch(Pod, self.name, patch, namespace=NAMESPACE)
                else:
                    await self.register({"serviceAccountNames": [self.name]})
                served = await until_served(channel, since)
                delete: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                refused = asyncio.create_task(until_refused(channel, delete))
                await delete
                await self.kube.delete(WorkloadRegistration, self.name, namespace=NAMESPACE)
                return served, await refused
        finally:
            process.terminate()
            process.wait(10)


def report(what: str, samples: list[float]) -> None:
    p50, p99 = percentiles(samples)
    verdict = "ok" if p99 <= 1000 else "MISSED"
    print(
        f"{what:<58} n={len(samples):3d}  p50 {p50:6.0f} ms  p99 {p99:6.0f} ms  "
        f"max {max(samples) * 1000:6.0f} ms  (target p99 <= 1000 ms: {verdict})"
    )


async def main(agents: int) -> None:
    async with running_stack() as stack:
        kube = AsyncClient(KubeConfig.from_file(stack.work / "admin.kubeconfig"))
        await ensure_namespace(kube, NAMESPACE)
        work = stack.work / "push"
        work.mkdir()
        serial = 0
        for label in (False, True):
            for wait_name, (low, high) in WAITS.items():
                rounds = []
                for _ in range(agents):
                    serial += 1
                    rounds.append(Round(kube, work, stack.daemon.address, stack.bundle_pem, f"p{serial}"))
                results = await asyncio.gather(*(r.run(random.uniform(low, high), label) for r in rounds))
                cause = "label change makes the pod match" if label else "registration created"
                report(f"{cause}, {wait_name} -> SVID served", [s for s, _ in results])
                report(f"registration deleted -> agent stops serving ({wait_name})", [d for _, d in results])
        await kube.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--agents", type=int, default=20, help="agents per case, run side by side (1-100)")
    asyncio.run(main(max(1, min(parser.parse_args().agents, 100))))
