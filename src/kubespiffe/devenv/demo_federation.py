"""The README demo, part two: two federated clusters and a cross-cluster mTLS exchange with go-spiffe.

`kubespiffe dev up --clusters 2` starts clusters a and b (trust domains a and b) already federated. A
client pod in a and a server pod in b each run `kubespiffe agent`; go-spiffe programs use the standard
Workload API and authorize the other side's exact SPIFFE ID.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from lightkube import AsyncClient, KubeConfig
from lightkube.models.meta_v1 import ObjectMeta

from kubespiffe.devenv.build import ensure_interop
from kubespiffe.devenv.stack import agent_command
from kubespiffe.devenv.workloads import create_pod, ensure_namespace, pod_token
from kubespiffe.kube.client import WorkloadRegistration


def _say(text: str) -> None:
    print(f"\n\033[1m{text}\033[0m", flush=True)


async def _workload(cluster_dir: Path, sa: str, peer_td: str, tokens: Path) -> None:
    client = AsyncClient(KubeConfig.from_file(cluster_dir / "kubeconfig"), field_manager="kubespiffe-demo")
    try:
        await ensure_namespace(client, "demo")
        await client.create(
            WorkloadRegistration(
                metadata=ObjectMeta(name=sa, namespace="demo"),
                spec={"serviceAccountNames": [sa], "federatesWith": [peer_td]},
            )
        )
        pod = await create_pod(client, "demo", f"{sa}-0", sa)
        (tokens / f"{sa}.token").write_text(await pod_token(client, pod))
    finally:
        await client.close()


def _agent(cluster_dir: Path, sa: str, tokens: Path) -> tuple[subprocess.Popen[bytes], Path]:
    socket = tokens / f"{sa}.sock"
    log = (cluster_dir / "logs" / f"agent-{sa}.log").open("ab")
    process = subprocess.Popen(
        agent_command(
            (cluster_dir / "server").read_text().strip(),
            tokens / f"{sa}.token",
            cluster_dir / "bundle.pem",
            socket,
        ),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    probe = [sys.executable, "-m", "kubespiffe.cli.main", "probe", "--socket", str(socket)]
    deadline = time.monotonic() + 30
    while subprocess.run(probe, capture_output=True, check=False).returncode != 0:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the agent for {sa} never got an SVID; see {log.name}")
        time.sleep(0.2)
    return process, socket


def _wait_federated(socket: Path, peer_td: str) -> None:
    """Until the agent hands out the peer's bundle (the first fetch of the peer's bundle endpoint)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done = subprocess.run(
            [str(ensure_interop()), "fetch-x509", "-socket", f"unix://{socket}", "-timeout", "5s"],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode == 0 and peer_td in json.loads(done.stdout)["bundles"]:
            return
        time.sleep(0.5)
    raise RuntimeError(f"the agent never received trust domain {peer_td}'s bundle")


def run(directory: Path) -> bool:
    interop = ensure_interop()
    _say("7. kubespiffe dev up --clusters 2: clusters a and b, federated with FederatedTrustDomain resources")
    dev = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kubespiffe.cli.main",
            "dev",
            "up",
            "--clusters",
            "2",
            "--dir",
            str(directory),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    processes: list[subprocess.Popen[bytes]] = []
    tokens = Path("/dev/shm" if Path("/dev/shm").is_dir() else directory) / f"kubespiffe-fed-{os.getpid()}"
    tokens.mkdir(mode=0o700, exist_ok=True)
    try:
        assert dev.stdout is not None
        if dev.stdout.readline().strip() != "ready":
            raise RuntimeError("`kubespiffe dev up --clusters 2` did not start")
        _say("8. a client workload in a (federatesWith b) and a server workload in b (federatesWith a)")
        asyncio.run(_workload(directory / "a", "client", "b", tokens))
        asyncio.run(_workload(directory / "b", "server", "a", tokens))
        client, client_socket = _agent(directory / "a", "client", tokens)
        server, server_socket = _agent(directory / "b", "server", tokens)
        processes += [client, server]
        _wait_federated(client_socket, "b")
        _wait_federated(server_socket, "a")
        _say("9. go-spiffe mTLS: the server in b accepts only spiffe://a/ns/demo/sa/client, and vice versa")
        env = {**os.environ, "SPIFFE_ENDPOINT_SOCKET": f"unix://{server_socket}"}
        mtls = subprocess.Popen(
            [str(interop), "mtls-server", "-authorize", "spiffe://a/ns/demo/sa/client", "-timeout", "60s"],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        processes.append(mtls)  # type: ignore[arg-type]
        assert mtls.stdout is not None
        address = json.loads(mtls.stdout.readline())["listening"]
        result = subprocess.run(
            [
                str(interop),
                "mtls-client",
                "-socket",
                f"unix://{client_socket}",
                "-connect",
                address,
                "-authorize",
                "spiffe://b/ns/demo/sa/server",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        answer = (
            json.loads(result.stdout)["results"][0] if result.returncode == 0 else {"error": result.stderr}
        )
        print(f"client in a -> server in b: {answer.get('body') or answer.get('error')}")
        return answer.get("body") == "hello spiffe://a/ns/demo/sa/client"
    finally:
        for process in processes:
            process.terminate()
            process.wait(10)
        dev.send_signal(signal.SIGINT)
        dev.wait(60)
        for leftover in tokens.iterdir():
            leftover.unlink()
        tokens.rmdir()
