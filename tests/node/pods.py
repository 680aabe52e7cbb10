"""Helpers for tests that run real pods on the local node: busybox pods, waiting, reading logs."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.resources.core_v1 import Pod, ServiceAccount

from kubespiffe.devenv.images import BUSYBOX_IMAGE

NODE_TESTS = [
    pytest.mark.node,
    pytest.mark.skipif(
        os.geteuid() != 0,
        reason="node tests need root (containerd, a kubelet and iptables); they run as root in CI",
    ),
]

# Busybox as PID 1 ignores SIGTERM; trapping it lets pods stop at once instead of after the grace period.
FOREVER = "trap 'exit 0' TERM; while :; do sleep 1; done"


def container(name: str, script: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "image": BUSYBOX_IMAGE,
        "imagePullPolicy": "Never",
        "command": ["/bin/sh", "-c", script],
        **extra,
    }


def pod_manifest(
    name: str,
    containers: list[dict[str, Any]],
    *,
    labels: dict[str, str] | None = None,
    restart: str = "Always",
    **spec: Any,
) -> Pod:
    return Pod.from_dict(
        {
            "metadata": {"name": name, "labels": labels or {}},
            "spec": {
                "containers": containers,
                "restartPolicy": restart,
                "terminationGracePeriodSeconds": 0,
                "automountServiceAccountToken": False,
                **spec,
            },
        }
    )


async def wait_service_account(kube: AsyncClient, namespace: str, timeout: float = 30.0) -> None:
    """kube-controller-manager creates `default` in new namespaces; pods are refused until it exists."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            await kube.get(ServiceAccount, "default", namespace=namespace)
            return
        except ApiError as exc:
            if exc.status.code != 404 or time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.05)


async def wait_phase(
    kube: AsyncClient, name: str, namespace: str, phases: tuple[str, ...], timeout: float = 60.0
) -> Pod:
    """Poll until the pod reaches one of `phases`; a pod that ends in another phase fails the test."""
    deadline = time.monotonic() + timeout
    while True:
        pod = await kube.get(Pod, name, namespace=namespace)
        phase = pod.status.phase if pod.status else None
        if phase in phases:
            return pod
        if phase in ("Succeeded", "Failed"):
            raise AssertionError(f"pod {namespace}/{name} ended {phase}: {pod.status}")
        if time.monotonic() > deadline:
            raise AssertionError(
                f"pod {namespace}/{name} not {'/'.join(phases)} after {timeout}s: {pod.status}"
            )
        await asyncio.sleep(0.05)


async def logs(kube: AsyncClient, name: str, namespace: str, container: str | None = None) -> str:
    """The container's log through the API server, which fetches it from the kubelet."""
    return "".join([line async for line in kube.log(name, namespace=namespace, container=container)])


async def wait_log(
    kube: AsyncClient,
    name: str,
    namespace: str,
    text: str,
    container: str | None = None,
    timeout: float = 30.0,
) -> str:
    deadline = time.monotonic() + timeout
    while True:
        output = await logs(kube, name, namespace, container)
        if text in output:
            return output
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{text!r} not in the log of {namespace}/{name} after {timeout}s: {output!r}"
            )
        await asyncio.sleep(0.1)


def dump_tasks(pod: Pod, command: str) -> list[int]:
    """SIGUSR1 to the pod's processes whose command line contains `command`: they log every asyncio task's
    stack (kubespiffe/tasks.py). Their PIDs on this host. Read their logs after."""
    assert pod.metadata is not None and pod.metadata.uid
    uid = pod.metadata.uid
    marks = (f"pod{uid}", f"pod{uid.replace('-', '_')}")
    signalled = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cgroup = (proc / "cgroup").read_text()
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(m in cgroup for m in marks) and command in cmdline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(proc.name), signal.SIGUSR1)
                signalled.append(int(proc.name))
    return signalled
