"""What every benchmark stands on: a real control plane, kubespiffed, one registered pod and its token."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

from lightkube import AsyncClient, KubeConfig
from lightkube.models.meta_v1 import ObjectMeta

from kubespiffe.devenv.controlplane import ControlPlane
from kubespiffe.devenv.stack import Kubespiffed, authority_bundle_pem, install, service_account_token
from kubespiffe.devenv.workloads import create_pod, ensure_namespace, pod_token
from kubespiffe.kube.client import WorkloadRegistration


@dataclass
class Stack:
    daemon: Kubespiffed
    bundle_pem: bytes
    token: str
    work: Path


def percentiles(samples: list[float]) -> tuple[float, float]:
    """p50 and p99 in milliseconds."""
    ordered = sorted(samples)
    return ordered[len(ordered) // 2] * 1000, ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000


@contextlib.contextmanager
def work_directory(prefix: str) -> Iterator[Path]:
    """A run's directory on tmpfs (its control plane, logs, tokens, sockets): removed after a run that
    succeeded, kept and named after one that failed, for its logs. Memory either way: none is left behind."""
    shm = Path("/dev/shm")
    work = Path(tempfile.mkdtemp(prefix=prefix, dir=str(shm) if shm.is_dir() else None))
    try:
        yield work
    except BaseException:
        print(f"the run failed; its logs are in {work} (remove it when done)", file=sys.stderr)
        raise
    shutil.rmtree(work, ignore_errors=True)


@contextlib.asynccontextmanager
async def running_stack() -> AsyncIterator[Stack]:
    with work_directory("kubespiffe-bench-") as work, ControlPlane("bench", log_dir=work) as plane:
        kubeconfig = work / "admin.kubeconfig"
        kubeconfig.write_text(plane.admin_kubeconfig())
        client = AsyncClient(KubeConfig.from_file(kubeconfig))
        await install(client)
        daemon = Kubespiffed(plane)
        daemon.start(await service_account_token(client))
        try:
            bundle = await authority_bundle_pem(client)
            await asyncio.to_thread(daemon.wait_ready, bundle)
            await ensure_namespace(client, "bench")
            await client.create(
                WorkloadRegistration(metadata=ObjectMeta(name="bench", namespace="bench"), spec={})
            )
            pod = await create_pod(client, "bench", "bench-0", "bench")
            token = await pod_token(client, pod)
            await asyncio.sleep(1)  # kubespiffed's watch sees the registration
            yield Stack(daemon, bundle, token, work)
        finally:
            daemon.stop()
            await client.close()
