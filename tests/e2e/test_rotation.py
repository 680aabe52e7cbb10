"""CA and JWT key rotation on demand: published first, signing only after the grace period, no outage."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from lightkube import AsyncClient
from spiffe._proto import workload_pb2, workload_pb2_grpc

from kubespiffe.devenv.controlplane import ControlPlane
from kubespiffe.devenv.stack import Kubespiffed, authority_bundle_pem, service_account_token
from kubespiffe.spiffe.bundle import parse_der_certificates
from tests.e2e.conftest import AgentFactory, AgentProcess
from tests.integration.kubespiffed import allow_secret, register

pytestmark = pytest.mark.e2e

HEADER = (("workload.spiffe.io", "true"),)


def _bundle_and_leaf(agent: AgentProcess) -> tuple[list[x509.Certificate], x509.Certificate]:
    with grpc.insecure_channel(agent.address) as channel:
        stub = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)
        stream = stub.FetchX509SVID(workload_pb2.X509SVIDRequest(), metadata=HEADER, timeout=5)
        response = next(iter(stream))
        stream.cancel()
    svid = response.svids[0]
    return parse_der_certificates(svid.bundle), parse_der_certificates(svid.x509_svid)[0]


def _cli(admin_kubeconfig: Path, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "kubespiffe.cli.main", *args, "--kubeconfig", str(admin_kubeconfig)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return done.stdout


async def test_rotation_publishes_first_then_signs_and_agents_follow(
    control_plane: ControlPlane,
    kube: AsyncClient,
    admin_kubeconfig: Path,
    namespace: str,
    start_agent: AgentFactory,
) -> None:
    secret = f"rot-{uuid.uuid4().hex[:8]}"
    await allow_secret(kube, secret)
    daemon = Kubespiffed(
        control_plane,
        extra_args=(
            f"--authority-secret={secret}",
            "--bundle-refresh-hint=1s",
            "--x509-svid-ttl=1m",
            "--bundle-configmap=",  # another authority: leave the session's bundle ConfigMaps alone
        ),
    )
    daemon.start(await service_account_token(kube))
    try:
        bundle = await authority_bundle_pem(kube, secret=secret)
        await asyncio.to_thread(daemon.wait_ready, bundle)
        await register(kube, "rot", {"serviceAccountNames": ["rot"]}, namespace)
        agent: AgentProcess = await start_agent("rot-1", "rot", server=daemon.address, bundle_pem=bundle)
        roots, leaf = await asyncio.to_thread(_bundle_and_leaf, agent)
        assert len(roots) == 1 and leaf.issuer == roots[0].subject
        old_root = roots[0]

        await asyncio.to_thread(_cli, admin_kubeconfig, "ca", "rotate", "--secret", secret)
        # Published ahead: the agent sees two roots while its SVIDs still chain to the old one.
        deadline = time.monotonic() + 15
        while len(roots) < 2:
            assert time.monotonic() < deadline, "the prepared CA never reached the agent"
            await asyncio.sleep(0.2)
            roots, leaf = await asyncio.to_thread(_bundle_and_leaf, agent)
        assert leaf.issuer == old_root.subject
        shown = await asyncio.to_thread(_cli, admin_kubeconfig, "ca", "show", "--secret", secret)
        assert "prepared" in shown and "active" in shown

        # After the grace period (3 x 1 s) the new CA signs; the 1-minute SVIDs renew onto it within 30 s,
        # and the agent keeps talking to kubespiffed, whose own SVID now chains to the new root too.
        new_root = next(r for r in roots if r.subject != old_root.subject)
        deadline = time.monotonic() + 60
        while leaf.issuer != new_root.subject:
            assert time.monotonic() < deadline, "SVIDs never moved to the new CA"
            await asyncio.sleep(1)
            roots, leaf = await asyncio.to_thread(_bundle_and_leaf, agent)
            assert any(r.subject == leaf.issuer for r in roots), (
                "an SVID chained to a CA the agent had not seen"
            )
        shown = await asyncio.to_thread(_cli, admin_kubeconfig, "ca", "show", "--secret", secret)
        assert "retired" in shown
        with grpc.insecure_channel(agent.address) as channel:
            stub = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)
            token = (
                stub.FetchJWTSVID(workload_pb2.JWTSVIDRequest(audience=["x"]), metadata=HEADER).svids[0].svid
            )
            valid = stub.ValidateJWTSVID(
                workload_pb2.ValidateJWTSVIDRequest(audience="x", svid=token), metadata=HEADER
            )
            assert valid.spiffe_id
    finally:
        daemon.stop()
