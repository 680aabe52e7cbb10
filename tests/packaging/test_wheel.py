"""The wheel as a user installs it: `pip install -c constraints.txt <wheel>` in a clean venv, no extras.

Every process under test runs from that venv's console scripts (`kubespiffed`, `kubespiffe agent`,
`kubespiffe probe`), so a runtime import of a dev-only package (py-spiffe's stubs were one) fails here.
The SVID is fetched over the agent's socket by py-spiffe from the test's own environment, a real client.
One venv per session: building the wheel and installing its dependencies costs tens of seconds.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from lightkube import AsyncClient
from spiffe import X509Source

from kubespiffe.devenv.build import repo_root
from kubespiffe.devenv.controlplane import ControlPlane
from kubespiffe.devenv.stack import NAMESPACE, Kubespiffed, service_account_token
from kubespiffe.devenv.workloads import create_pod, pod_token
from tests.integration.kubespiffed import Running, register

pytestmark = pytest.mark.packaging


@dataclass(frozen=True)
class Installed:
    bin: Path

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.bin / args[0]), *args[1:]], capture_output=True, text=True, check=False, timeout=timeout
        )


@pytest.fixture(scope="session")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    root = repo_root()
    work = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(work / "dist"), str(root)],
        check=True,
    )
    (wheel,) = (work / "dist").glob("kubespiffe-*.whl")
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "install", "--quiet"]
    subprocess.run([*pip, "-c", str(root / "constraints.txt"), str(wheel)], check=True)
    return Installed(venv / "bin")


def test_no_dev_packages_installed(installed: Installed) -> None:
    result = installed.run(
        "python", "-c", "import importlib.util as u; print(u.find_spec('spiffe'), u.find_spec('grpc_tools'))"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["None", "None"]
    assert "kubespiffe" in installed.run("python", "-m", "pip", "list").stdout


def test_console_scripts_start(installed: Installed) -> None:
    for script in (("kubespiffe", "--help"), ("kubespiffed", "--help"), ("kubespiffe", "agent", "--help")):
        result = installed.run(*script)
        assert result.returncode == 0, f"{script}: {result.stderr[-2000:]}"


@pytest.fixture
def runtime_dir() -> Iterator[Path]:
    """Short path under /dev/shm (key material off disk, and well under the 108-byte socket path limit)."""
    path = Path(tempfile.mkdtemp(prefix="ks-pkg-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def agent(
    installed: Installed,
    kube: AsyncClient,
    kubespiffed: Running,
    namespace: str,
    runtime_dir: Path,
    control_plane: ControlPlane,
) -> AsyncIterator[Path]:
    """The installed `kubespiffe agent` for a registered pod; yields its socket once probe says ready."""
    await register(kube, "pkg", {"serviceAccountNames": ["pkg"]}, namespace)
    pod = await create_pod(kube, namespace, "pkg-1", "pkg")
    token, bundle, socket = runtime_dir / "token", runtime_dir / "bundle.pem", runtime_dir / "agent.sock"
    token.write_text(await pod_token(kube, pod))
    bundle.write_bytes(kubespiffed.bundle_pem)
    log = control_plane.log_dir / f"agent-installed-{namespace}.log"
    command = [str(installed.bin / "kubespiffe"), "agent", "--server", kubespiffed.address]
    command += ["--token-file", str(token), "--bundle-file", str(bundle), "--socket", str(socket)]
    with log.open("ab") as out:
        process = subprocess.Popen(  # noqa: ASYNC220 (a long-running child, not awaited)
            command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    try:
        deadline = time.monotonic() + 30
        probe = ("kubespiffe", "probe", "--socket", str(socket))
        while (await asyncio.to_thread(installed.run, *probe)).returncode != 0:
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"installed agent never served an SVID: {log.read_text()[-3000:]}")
            await asyncio.sleep(0.2)
        yield socket
    finally:
        process.terminate()
        process.wait(10)


async def test_installed_agent_serves_a_real_client(agent: Path, namespace: str) -> None:
    def fetch() -> str:
        with X509Source(socket_path=f"unix://{agent}", timeout_in_seconds=30) as source:
            return str(source.get_x509_context().default_svid.spiffe_id)

    spiffe_id = await asyncio.to_thread(fetch)
    assert spiffe_id == f"spiffe://example.org/ns/{namespace}/sa/pkg"


async def test_installed_kubespiffed_gets_ready(
    installed: Installed, kube: AsyncClient, kubespiffed: Running, control_plane: ControlPlane
) -> None:
    """A second kubespiffed, from the venv's console script, beside the session's one (it is HA-safe)."""
    daemon = Kubespiffed(control_plane)
    kubeconfig = control_plane.dir / f"kubespiffed-installed-{daemon.port}.kubeconfig"
    fd = os.open(kubeconfig, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(control_plane.token_kubeconfig(await service_account_token(kube)))
    log = control_plane.log_dir / f"kubespiffed-installed-{daemon.port}.log"
    command = [
        str(installed.bin / "kubespiffed"),
        f"--trust-domain={daemon.trust_domain}",
        f"--namespace={NAMESPACE}",
        f"--kubeconfig={kubeconfig}",
        "--listen-host=127.0.0.1",
        f"--port={daemon.port}",
        f"--health-port={daemon.health_port}",
        f"--bundle-endpoint-port={daemon.bundle_port}",
    ]
    with log.open("ab") as out:
        daemon.process = subprocess.Popen(  # noqa: ASYNC220 (a long-running child, not awaited)
            command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    try:
        await asyncio.to_thread(daemon.wait_ready, kubespiffed.bundle_pem)
    except RuntimeError as exc:
        raise AssertionError(f"{exc}: {log.read_text()[-3000:]}") from exc
    finally:
        daemon.stop()
