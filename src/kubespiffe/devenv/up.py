"""`kubespiffe dev up`: a control plane, kubespiffe installed, kubespiffed running, until a signal."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

from lightkube import AsyncClient, KubeConfig

from kubespiffe.devenv.controlplane import ControlPlane
from kubespiffe.devenv.stack import Kubespiffed, authority_bundle_pem, install, service_account_token


def dev_up(directory: Path, trust_domain: str) -> int:
    directory.mkdir(parents=True, exist_ok=True)
    logs = directory / "logs"
    logs.mkdir(exist_ok=True)
    stop = _stop_on_signals()
    plane = ControlPlane("dev", log_dir=logs)
    daemon = Kubespiffed(plane, trust_domain=trust_domain)
    try:
        print(f"starting the control plane (logs in {logs}) ...", file=sys.stderr, flush=True)
        plane.start()
        kubeconfig = directory / "kubeconfig"
        _write_private(kubeconfig, plane.admin_kubeconfig())

        async def prepare() -> bytes:
            client = AsyncClient(KubeConfig.from_file(kubeconfig), field_manager="kubespiffe-devenv")
            try:
                await install(client)
                daemon.start(await service_account_token(client))
                return await authority_bundle_pem(client)
            finally:
                await client.close()

        bundle = asyncio.run(prepare())
        daemon.wait_ready(bundle)
        (directory / "bundle.pem").write_bytes(bundle)
        (directory / "server").write_text(daemon.address + "\n")
        print(f"kubespiffed serving trust domain {trust_domain} at {daemon.address}", file=sys.stderr)
        print("ready", flush=True)
        stop.wait()
        return 0
    finally:
        daemon.stop()
        plane.stop()
        print("stopped", file=sys.stderr, flush=True)


class _Stop:
    def __init__(self) -> None:
        self.flag = False

    def wait(self) -> None:
        while not self.flag:
            time.sleep(0.2)


def _stop_on_signals() -> _Stop:
    stop = _Stop()

    def handler(signum: int, frame: object) -> None:
        stop.flag = True

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return stop


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
