"""End-to-end: kubespiffed + `kubespiffe agent` processes + real SPIFFE clients (py-spiffe, go-spiffe)."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from lightkube import AsyncClient

from kubespiffe.devenv.build import ensure_interop
from kubespiffe.devenv.stack import agent_command
from kubespiffe.devenv.workloads import create_pod, pod_token
from tests.integration.kubespiffed import Running


@dataclass
class AgentProcess:
    process: subprocess.Popen[bytes]
    socket: Path
    log: Path
    write_dir: Path | None
    pod: Any

    @property
    def address(self) -> str:
        return f"unix://{self.socket}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


_RUNTIME_DIRS: list[Path] = []


def _runtime_dir() -> Path:
    """A private directory on tmpfs for one workload's token, bundle and socket (short enough for a socket
    path); removed once the test is over."""
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() else None
    path = Path(os.path.realpath(os.path.join(str(base or "/tmp"), f"ks-e2e-{uuid.uuid4().hex[:8]}")))
    path.mkdir(mode=0o700)
    _RUNTIME_DIRS.append(path)
    return path


@pytest.fixture(autouse=True)
def _remove_runtime_dirs() -> Iterator[None]:
    """Set up before, so torn down after, the fixtures that stop the processes using the directories."""
    yield
    while _RUNTIME_DIRS:
        shutil.rmtree(_RUNTIME_DIRS.pop(), ignore_errors=True)


AgentFactory = Callable[..., Any]


@pytest.fixture
async def start_agent(kube: AsyncClient, kubespiffed: Running, namespace: str) -> AsyncIterator[AgentFactory]:
    """Start `kubespiffe agent` for a new pod (service account `sa`), as the pod's sidecar would run."""
    started: list[AgentProcess] = []

    async def start(
        name: str,
        sa: str,
        labels: dict[str, str] | None = None,
        files: bool = False,
        jwt_audience: str = "",
        wait_ready: bool = True,
        server: str | None = None,
        bundle_pem: bytes | None = None,
    ) -> AgentProcess:
        pod = await create_pod(kube, namespace, name, sa, labels=labels)
        directory = _runtime_dir()
        token = directory / "token"
        token.write_text(await pod_token(kube, pod))
        bundle = directory / "bundle.pem"
        bundle.write_bytes(bundle_pem or kubespiffed.bundle_pem)
        socket = directory / "agent.sock"
        log = kubespiffed.daemon.plane.log_dir / f"agent-{namespace}-{name}.log"
        write_dir = directory / "svids" if files else None
        args = agent_command(server or kubespiffed.address, token, bundle, socket)
        if write_dir:
            args += ["--write-dir", str(write_dir)]
        if jwt_audience:
            args += ["--jwt-audience", jwt_audience]
        with log.open("ab") as out:
            process = subprocess.Popen(  # noqa: ASYNC220 (a long-running child, not awaited)
                args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        agent = AgentProcess(process, socket, log, write_dir, pod)
        started.append(agent)
        deadline = time.monotonic() + 20
        while not socket.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"agent did not start: {log.read_text()[-2000:]}")
            await asyncio.sleep(0.05)
        if wait_ready:
            probe = [sys.executable, "-m", "kubespiffe.cli.main", "probe", "--socket", str(socket)]
            while subprocess.run(probe, capture_output=True, check=False).returncode != 0:  # noqa: ASYNC221
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"agent never served an SVID: {log.read_text()[-2000:]}")
        return agent

    yield start
    for agent in started:
        agent.stop()


@pytest.fixture(scope="session")
def interop() -> Path:
    return ensure_interop()
