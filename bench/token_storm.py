"""A token storm: 1,000 pods ask kubespiffed for their first X.509-SVID at the same moment (issue 12).

    .venv/bin/python bench/token_storm.py [--pods 1000] [--rounds 2]

Not part of the test suite. Runs its own control plane (no kubelet: pods are plain API objects) and one
kubespiffed as a real process under the shipped RBAC. It creates --pods Pod objects, each with its own
pod-bound token from the TokenRequest API (what the kubelet mounts), and one registration granting them
all. Then every pod's call to MintX509SVID is released at once, each on its own gRPC connection (each pod
has its own agent), so the storm includes kubespiffed's 1,000 TLS handshakes, 1,000 token verifications
(signature against the cluster JWKS: none of the tokens was seen before) and 1,000 signatures. CSRs are
made before the storm: the keys are the agents' cost, not kubespiffed's.

Reported per round: errors (target 0), the time from the release to each SVID (p50, p99, max; target
p99 <= 2 s on 2 cores), kubespiffed's CPU time and RSS. Round 1 is cold (new tokens, new connections);
later rounds reuse the tokens (kubespiffed's verified-token cache) on new connections. The client runs on
the same 2 cores, so its own work is inside the numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
from lightkube import AsyncClient, KubeConfig
from lightkube.models.meta_v1 import ObjectMeta
from stack import percentiles, work_directory  # bench/stack.py (benchmarks run as scripts)
from vs_spire import machine

from kubespiffe.agent.issuer_client import new_csr
from kubespiffe.constants import SERVER_NAME
from kubespiffe.devenv.controlplane import ControlPlane
from kubespiffe.devenv.stack import Kubespiffed, authority_bundle_pem, install, service_account_token
from kubespiffe.devenv.workloads import create_pod, ensure_namespace, pod_token
from kubespiffe.kube.client import WorkloadRegistration
from kubespiffe.proto import issuer_pb2, issuer_pb2_grpc

NAMESPACE = "storm"
CONCURRENCY = 32  # API writes in flight while preparing the pods


async def bounded(count: int, make: Callable[[int], Awaitable[str]]) -> list[str]:
    """make(i) for i in range(count), CONCURRENCY at a time, results in order."""
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(i: int) -> str:
        async with gate:
            return await make(i)

    return list(await asyncio.gather(*(one(i) for i in range(count))))


async def prepare(client: AsyncClient, pods: int) -> list[str]:
    """The pods, their ServiceAccount and one registration granting all of them; each pod's token."""
    await ensure_namespace(client, NAMESPACE)
    await client.create(
        WorkloadRegistration(
            metadata=ObjectMeta(name="storm", namespace=NAMESPACE), spec={"serviceAccountNames": ["storm"]}
        )
    )

    async def pod_and_token(i: int) -> str:
        pod = await create_pod(client, NAMESPACE, f"storm-{i}", "storm")
        return await pod_token(client, pod, expiration_seconds=3600)

    return await bounded(pods, pod_and_token)


async def storm(
    address: str, bundle_pem: bytes, tokens: list[str], csrs: list[bytes], connected: bool
) -> tuple[list[float], list[str]]:
    """Release every pod's MintX509SVID at once, each on its own connection (made in the storm, or before
    it when `connected`): seconds from the release to each SVID, and the errors."""
    credentials = grpc.ssl_channel_credentials(root_certificates=bundle_pem)
    options = [("grpc.ssl_target_name_override", SERVER_NAME)]
    channels = [grpc.aio.secure_channel(address, credentials, options=options) for _ in tokens]
    if connected:
        await asyncio.gather(*(channel.channel_ready() for channel in channels))
    release = asyncio.Event()
    started = 0.0

    async def one(i: int) -> tuple[float, str | None]:
        stub = issuer_pb2_grpc.IssuerStub(channels[i])
        request = issuer_pb2.MintX509SVIDRequest(csr=csrs[i])
        metadata = (("authorization", f"Bearer {tokens[i]}"),)
        await release.wait()
        try:
            response = await stub.MintX509SVID(request, metadata=metadata, timeout=60)
            error = None if len(response.svids) == 1 else f"{len(response.svids)} SVIDs"
        except grpc.aio.AioRpcError as exc:
            error = f"{exc.code().name}: {exc.details()}"
        return time.perf_counter() - started, error

    try:
        calls = [asyncio.create_task(one(i)) for i in range(len(tokens))]
        await asyncio.sleep(0.5)  # every task waits at the release
        started = time.perf_counter()
        release.set()
        results = await asyncio.gather(*calls)
    finally:
        await asyncio.gather(*(channel.close(None) for channel in channels))
    return [seconds for seconds, _ in results], [error for _, error in results if error]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def main(args: argparse.Namespace, work: Path) -> None:
    print(machine(), flush=True)
    with ControlPlane("storm", log_dir=work) as plane:
        kubeconfig = work / "admin.kubeconfig"
        kubeconfig.write_text(plane.admin_kubeconfig())
        client = AsyncClient(KubeConfig.from_file(kubeconfig))
        await install(client)
        daemon = Kubespiffed(plane)
        daemon.start(await service_account_token(client))
        try:
            bundle = await authority_bundle_pem(client)
            await asyncio.to_thread(daemon.wait_ready, bundle)
            assert daemon.process is not None
            began = time.monotonic()
            tokens = await prepare(client, args.pods)
            print(f"{args.pods} pods and tokens (TokenRequest) made in {time.monotonic() - began:.1f} s")
            await asyncio.sleep(3)  # kubespiffed's watches have the pods and the registration
            csrs = [new_csr()[1] for _ in tokens]
            for round_ in range(1, args.rounds + 1):
                cpu, rss_before = cpu_seconds(daemon.process.pid), rss_mb(daemon.process.pid)
                own = time.process_time()
                seconds, errors = await storm(daemon.address, bundle, tokens, csrs, args.connected)
                cpu, own = cpu_seconds(daemon.process.pid) - cpu, time.process_time() - own
                p50, p99 = percentiles(seconds)
                kind = "cold: tokens never seen" if round_ == 1 else "tokens seen before"
                connections = "connections made before" if args.connected else "new connections"
                print(
                    f"round {round_} ({kind}), {len(tokens)} pods at once on {connections}: "
                    f"errors {len(errors)}; release -> SVID p50 {p50:.0f} ms, p99 {p99:.0f} ms, "
                    f"max {max(seconds) * 1000:.0f} ms (target p99 <= 2000 ms); kubespiffed CPU "
                    f"{cpu:.2f} s, RSS {rss_before:.0f} -> {rss_mb(daemon.process.pid):.0f} MB; "
                    f"the 1,000 clients' CPU {own:.2f} s",
                    flush=True,
                )
                for error in sorted(set(errors))[:5]:
                    print(f"  error: {error}")
                await asyncio.sleep(2)
        finally:
            daemon.stop()
            await client.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pods", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--connected", action="store_true", help="connect (TLS) before the release: issuance alone"
    )
    with work_directory("kubespiffe-storm-") as work:
        asyncio.run(main(parser.parse_args(), work))
