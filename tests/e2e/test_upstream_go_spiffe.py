"""go-spiffe v2 against kubespiffed under an operator's CA: the Workload API's SVIDs carry the intermediate,
the bundle holds the upstream root, go-spiffe verifies them (x509svid.Verify, mTLS between two workloads,
the https_spiffe bundle endpoint) before and after a rotation to a new intermediate."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from lightkube import AsyncClient

from kubespiffe.agent.issuer_client import fetch_x509
from kubespiffe.constants import SERVER_ID_PATH
from kubespiffe.devenv.controlplane import ControlPlane
from kubespiffe.devenv.stack import Kubespiffed, agent_command, authority_bundle_pem, service_account_token
from kubespiffe.devenv.workloads import create_pod, pod_token
from kubespiffe.spiffe.bundle import Bundle, bundle_to_json
from kubespiffe.spiffe.spiffeid import SpiffeId, TrustDomain
from tests.e2e.conftest import AgentProcess, _runtime_dir
from tests.e2e.test_go_spiffe import MtlsServer, _run
from tests.integration.kubespiffed import Running, allow_secret, pod_with_token, register
from tests.integration.upstream import CorpCa, corp_ca, create_secret, grant_as_the_chart_does, rotate

pytestmark = pytest.mark.e2e

TD = "example.org"
SERVER_ID = SpiffeId(TrustDomain(TD), SERVER_ID_PATH)


def _spawn(command: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


class Upstreamed:
    """kubespiffed with an upstream Secret, and agents for its pods (--trust-domain: the root names none)."""

    def __init__(self, daemon: Kubespiffed, corp: CorpCa, authority: str, workdir: Path) -> None:
        self.daemon, self.corp, self.authority, self.workdir = daemon, corp, authority, workdir
        self.agents: list[AgentProcess] = []

    async def agent(self, kube: AsyncClient, namespace: str, name: str, sa: str) -> AgentProcess:
        pod = await create_pod(kube, namespace, name, sa)
        directory = self.workdir / name
        directory.mkdir(mode=0o700)
        (directory / "token").write_text(await pod_token(kube, pod))
        (directory / "bundle.pem").write_bytes(self.corp.certificate.public_bytes(Encoding.PEM))
        socket = directory / "agent.sock"
        log = self.daemon.plane.log_dir / f"agent-upstream-{namespace}-{name}.log"
        command = agent_command(
            self.daemon.address, directory / "token", directory / "bundle.pem", socket, "--trust-domain", TD
        )
        process = _spawn(command, log)
        agent = AgentProcess(process, socket, log, None, pod)
        self.agents.append(agent)
        probe = [sys.executable, "-m", "kubespiffe.cli.main", "probe", "--socket", str(socket)]
        deadline = time.monotonic() + 30
        while not socket.exists() or subprocess.run(probe, capture_output=True, check=False).returncode != 0:  # noqa: ASYNC221
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"agent never served an SVID: {log.read_text()[-2000:]}")
            await asyncio.sleep(0.1)
        return agent


@pytest.fixture
async def upstreamed(
    control_plane: ControlPlane, kube: AsyncClient, kubespiffed: Running
) -> AsyncIterator[Upstreamed]:
    suffix = uuid.uuid4().hex[:8]
    authority, upstream = f"e2e-up-authority-{suffix}", f"e2e-corp-ca-{suffix}"
    corp = corp_ca()
    await allow_secret(kube, authority)
    await grant_as_the_chart_does(kube, f"kubespiffe:{upstream}", f"upstreamAuthority.secret={upstream}")
    await create_secret(kube, upstream, corp.secret_data())
    daemon = Kubespiffed(
        control_plane,
        extra_args=(
            f"--authority-secret={authority}",
            "--bundle-configmap=",
            f"--upstream-ca-secret={upstream}",
            "--bundle-refresh-hint=1s",
        ),
    )
    daemon.start(await service_account_token(kube))
    running = Upstreamed(daemon, corp, authority, _runtime_dir())
    try:
        bundle = await authority_bundle_pem(kube, secret=authority)
        await asyncio.to_thread(daemon.wait_ready, bundle)
        yield running
    finally:
        for agent in running.agents:
            agent.stop()
        daemon.stop()


async def test_go_spiffe_verifies_svids_under_the_upstream_root_across_rotation(
    kube: AsyncClient, namespace: str, upstreamed: Upstreamed, interop: Path, tmp_path: Path
) -> None:
    await register(kube, "go-up", {"serviceAccountNames": ["server", "client"]}, namespace)
    server_agent = await upstreamed.agent(kube, namespace, "server-1", "server")
    client_agent = await upstreamed.agent(kube, namespace, "client-1", "client")
    server_id, client_id = (f"spiffe://{TD}/ns/{namespace}/sa/{sa}" for sa in ("server", "client"))

    # fetch-x509 runs x509svid.Verify on the default SVID with the Workload API's bundles.
    fetched = await asyncio.to_thread(_run, interop, client_agent, "fetch-x509")
    assert [(s["id"], s["chain"]) for s in fetched["svids"]] == [(client_id, 2)]  # leaf + intermediate
    assert fetched["bundles"] == {TD: 1}  # the upstream root alone

    async def mtls() -> None:
        server = await asyncio.to_thread(MtlsServer, interop, server_agent, client_id, 60)
        try:
            result = await asyncio.to_thread(
                _run,
                interop,
                client_agent,
                "mtls-client",
                "-connect",
                server.address,
                "-authorize",
                server_id,
            )
            assert result["results"][0].get("body") == f"hello {client_id}", result
        finally:
            server.stop()

    await mtls()

    # The bundle endpoint (https_spiffe): go-spiffe checks its TLS chain (root) and kubespiffed's ID.
    bootstrap = tmp_path / "bundle.json"
    bootstrap.write_bytes(bundle_to_json(Bundle(TrustDomain(TD), (upstreamed.corp.certificate,), {})))
    endpoint = [
        str(interop),
        "fetch-bundle",
        "-url",
        f"https://127.0.0.1:{upstreamed.daemon.bundle_port}/",
        "-trust-domain",
        TD,
        "-endpoint-id",
        f"spiffe://{TD}/kubespiffe/kubespiffed",
        "-bundle-file",
        str(bootstrap),
    ]
    done = await asyncio.to_thread(
        subprocess.run, endpoint, capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1])["x509_authorities"] == 1

    # Rotation: a new intermediate under the same root. Once kubespiffed signs with it, a new pod's agent
    # holds an SVID through it, and go-spiffe accepts it from and next to the old one (same root).
    after = await rotate(kube, upstreamed.authority)
    new_intermediate = after.active_x509().certificate
    _, token = await pod_with_token(kube, namespace, "probe", "client")
    root = [upstreamed.corp.certificate]
    deadline = time.monotonic() + 15
    while (await fetch_x509(upstreamed.daemon.address, token, root, server_id=SERVER_ID)).svids[0].chain[
        1:
    ] != (new_intermediate,):
        assert time.monotonic() < deadline, "kubespiffed kept signing with the old intermediate"
        await asyncio.sleep(0.3)
    client_agent = await upstreamed.agent(kube, namespace, "client-2", "client")
    again = await asyncio.to_thread(_run, interop, client_agent, "fetch-x509")
    assert [(s["id"], s["chain"]) for s in again["svids"]] == [(client_id, 2)]
    assert again["bundles"] == {TD: 1}
    await mtls()  # the server's SVID is under the old intermediate, the client's under the new one
