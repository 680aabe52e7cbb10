"""`kubespiffe fetch|validate|probe` as a user runs them: against the agent socket and against kubespiffed."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from lightkube import AsyncClient

from kubespiffe.devenv.workloads import create_pod, pod_token
from tests.e2e.conftest import AgentFactory, AgentProcess
from tests.integration.kubespiffed import Running, register

pytestmark = pytest.mark.e2e


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kubespiffe.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={**os.environ, **(env or {})},
    )


async def test_fetch_and_validate_jwt_through_the_agent_socket(
    kube: AsyncClient, namespace: str, start_agent: AgentFactory
) -> None:
    await register(kube, "cli", {"serviceAccountNames": ["cli"]}, namespace)
    agent: AgentProcess = await start_agent("cli-1", "cli")
    env = {"SPIFFE_ENDPOINT_SOCKET": agent.address}
    fetched = await asyncio.to_thread(_cli, "fetch", "jwt", "--audience", "db", env=env)
    assert fetched.returncode == 0, fetched.stderr
    token, claims_text = fetched.stdout.split("\n", 1)
    assert json.loads(claims_text)["sub"] == f"spiffe://example.org/ns/{namespace}/sa/cli"
    ok = await asyncio.to_thread(_cli, "validate", "jwt", "--audience", "db", "--token", token, env=env)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["spiffe_id"] == f"spiffe://example.org/ns/{namespace}/sa/cli"
    bad = await asyncio.to_thread(_cli, "validate", "jwt", "--audience", "other", "--token", token, env=env)
    assert bad.returncode == 8 and "audience" in bad.stderr
    x509 = await asyncio.to_thread(_cli, "fetch", "x509", "--socket", agent.address)
    assert x509.returncode == 0 and f"/ns/{namespace}/sa/cli" in x509.stdout


async def test_fetch_and_validate_jwt_directly_against_kubespiffed(
    kube: AsyncClient, kubespiffed: Running, namespace: str, tmp_path: Path
) -> None:
    await register(kube, "direct", {"serviceAccountNames": ["direct"]}, namespace)
    pod = await create_pod(kube, namespace, "direct-1", "direct")
    token_file, bundle_file = tmp_path / "token", tmp_path / "bundle.pem"
    token_file.write_text(await pod_token(kube, pod))
    bundle_file.write_bytes(kubespiffed.bundle_pem)
    server = [
        "--server",
        kubespiffed.address,
        "--token-file",
        str(token_file),
        "--bundle-file",
        str(bundle_file),
    ]
    fetched = await asyncio.to_thread(_cli, "fetch", "jwt", "--audience", "db", *server)
    assert fetched.returncode == 0, fetched.stderr
    token = fetched.stdout.split("\n", 1)[0]
    ok = await asyncio.to_thread(_cli, "validate", "jwt", "--audience", "db", "--token", token, *server)
    assert ok.returncode == 0, ok.stderr
    refused = await asyncio.to_thread(
        _cli, "validate", "jwt", "--audience", "db", "--token", token[:-4] + "AAAA", *server
    )
    assert refused.returncode == 8, refused.stderr


async def test_exit_codes_for_the_usual_failures(
    kube: AsyncClient, kubespiffed: Running, namespace: str, tmp_path: Path
) -> None:
    pod = await create_pod(kube, namespace, "nobody-cli", "nobody-cli")
    token_file, bundle_file = tmp_path / "token", tmp_path / "bundle.pem"
    token_file.write_text(await pod_token(kube, pod))
    bundle_file.write_bytes(kubespiffed.bundle_pem)
    files = ["--token-file", str(token_file), "--bundle-file", str(bundle_file)]
    no_identity = await asyncio.to_thread(_cli, "fetch", "x509", "--server", kubespiffed.address, *files)
    assert no_identity.returncode == 3 and "no registration matches" in no_identity.stderr
    token_file.write_text("garbage")
    refused = await asyncio.to_thread(_cli, "fetch", "x509", "--server", kubespiffed.address, *files)
    assert refused.returncode == 4 and "token" in refused.stderr
    unreachable = await asyncio.to_thread(_cli, "fetch", "x509", "--server", "127.0.0.1:1", *files)
    assert unreachable.returncode == 5 and "cannot reach" in unreachable.stderr
    wrong_id = await asyncio.to_thread(
        _cli,
        "fetch",
        "x509",
        "--server",
        kubespiffed.address,
        *files,
        "--server-id",
        "spiffe://example.org/not/kubespiffed",
    )
    assert wrong_id.returncode == 6 and "not spiffe://example.org/not/kubespiffed" in wrong_id.stderr
    no_socket = await asyncio.to_thread(_cli, "fetch", "x509", env={"SPIFFE_ENDPOINT_SOCKET": ""})
    assert no_socket.returncode == 2 and "SPIFFE_ENDPOINT_SOCKET" in no_socket.stderr


async def test_probe_wait_returns_the_moment_the_agent_holds_an_svid(
    kube: AsyncClient, namespace: str, start_agent: AgentFactory, tmp_path: Path
) -> None:
    """`probe --wait` is the injected sidecar's postStart hook: it returns as soon as the SVID is there,
    and fails with the last answer once the wait is over."""
    start = time.monotonic()
    missing = await asyncio.to_thread(_cli, "probe", "--socket", str(tmp_path / "none.sock"), "--wait", "1")
    elapsed = time.monotonic() - start
    assert missing.returncode == 5 and "unavailable" in missing.stderr, missing.stderr
    assert 1 <= elapsed < 10

    agent = await start_agent("late", "late", wait_ready=False)  # no registration yet: no SVID
    waiting = asyncio.create_task(
        asyncio.to_thread(_cli, "probe", "--socket", str(agent.socket), "--wait", "25")
    )
    await asyncio.sleep(2)
    assert not waiting.done(), "probe --wait returned before the agent held an SVID"
    registered = time.monotonic()
    await register(kube, "late", {"serviceAccountNames": ["late"]}, namespace=namespace)
    result = await waiting
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - registered < 5
    not_ready = await asyncio.to_thread(_cli, "probe", "--socket", str(tmp_path / "none.sock"))
    assert not_ready.returncode == 5  # without --wait: one question
