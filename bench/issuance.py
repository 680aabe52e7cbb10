"""X.509-SVID issuance through the issuer API: rate and latency at 1, 4 and 16 clients, several kubespiffed
configurations side by side in one run, rounds alternating.

Runs one real control plane, registers one workload and starts one kubespiffed per configuration, all
against the same authority Secret (as replicas would be): `--workers` 1 and 2 of the working tree by
default, and with `--baseline REV` the code of git revision REV (`git archive` of src/ into a temporary
directory, put first on PYTHONPATH) with one worker. Each round drives every configuration in turn with
the go-spiffe benchmark client (tools/benchclient, `issuer-mint`: N clients, each with its own
connection, one reused P-256 CSR; the same client bench/vs_spire.py uses), so machine noise falls on all
of them alike. It reports the median over rounds of rate and p50/p99, kubespiffed's CPU per call (its
whole process tree), the CPU the client used, how busy the machine was, and RSS/PSS of every
kubespiffed process after the load. The raw cost of one ECDSA P-256 signature, one CSR parse+verify and
one leaf build+sign, measured in this process, give the floor.

    .venv/bin/python bench/issuance.py [--requests 4000] [--rounds 3] [--workers 1,2] [--baseline REV]

Target (issue 9 part 2): at 16 clients at least SPIRE's rate on the same machine (SPIRE 1.13.3 measured
2,326/s here; bench/vs_spire.py measures both in one run) with p99 <= 15 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import os
import statistics
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from lightkube import AsyncClient, KubeConfig
from stack import Stack, running_stack  # bench/stack.py (benchmarks run as scripts)
from vs_spire import bench_client, descendants, machine, memory_mb, metered_client

from kubespiffe.agent.issuer_client import new_csr
from kubespiffe.authority.keys import KeyType
from kubespiffe.authority.x509ca import create_self_signed_ca, load_csr, sign_x509_svid
from kubespiffe.devenv.build import repo_root
from kubespiffe.devenv.stack import Kubespiffed, service_account_token
from kubespiffe.proto import issuer_pb2
from kubespiffe.spiffe.spiffeid import SpiffeId, TrustDomain

SPIRE_RATE = 2326.0  # issue 9: SPIRE 1.13.3, 16 clients, this machine
TARGET_P99_MS = 15.0


def raw_costs(rounds: int = 2000) -> tuple[float, float, float]:
    """Median microseconds of one ECDSA P-256 signature, one CSR parse+verify and one leaf build+sign."""

    def median_us(call: Any, n: int) -> float:
        samples = []
        for _ in range(n):
            start = time.perf_counter()
            call()
            samples.append(time.perf_counter() - start)
        return statistics.median(samples) * 1e6

    key = ec.generate_private_key(ec.SECP256R1())
    sign_us = median_us(lambda: key.sign(b"x" * 256, ec.ECDSA(hashes.SHA256())), rounds)
    now = dt.datetime.now(dt.UTC)
    ca = create_self_signed_ca(TrustDomain("example.org"), KeyType.EC_P256, dt.timedelta(days=1), now)
    der = new_csr()[1]
    csr_us = median_us(lambda: load_csr(der), rounds // 4)
    csr = load_csr(der)
    spiffe_id = SpiffeId.parse("spiffe://example.org/ns/bench/sa/bench")
    leaf_us = median_us(
        lambda: sign_x509_svid(ca, csr, spiffe_id, (), dt.timedelta(hours=1), now), rounds // 4
    )
    return sign_us, csr_us, leaf_us


@dataclass
class Config:
    name: str
    daemon: Kubespiffed
    runs: dict[int, list[dict[str, Any]]] = field(default_factory=dict)


@contextlib.contextmanager
def baseline_tree(revision: str) -> Iterator[Path]:
    """src/ of `revision`, unpacked into a temporary directory (PYTHONPATH for a kubespiffed process)."""
    with tempfile.TemporaryDirectory(prefix="kubespiffe-baseline-") as tmp:
        archive = Path(tmp) / "src.tar"
        subprocess.run(
            ["git", "-C", str(repo_root()), "archive", "-o", str(archive), revision, "src"], check=True
        )
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        yield Path(tmp) / "src"


def start(stack: Stack, token: str, extra: tuple[str, ...], pythonpath: Path | None = None) -> Kubespiffed:
    daemon = Kubespiffed(stack.daemon.plane, extra_args=extra)
    saved = os.environ.get("PYTHONPATH")
    if pythonpath is not None:
        os.environ["PYTHONPATH"] = str(pythonpath)
    try:
        daemon.start(token)
    finally:
        if pythonpath is not None:
            if saved is None:
                del os.environ["PYTHONPATH"]
            else:
                os.environ["PYTHONPATH"] = saved
    daemon.wait_ready(stack.bundle_pem)
    return daemon


async def mint(client: Path, stack: Stack, config: Config, clients: int, total: int) -> dict[str, Any]:
    assert config.daemon.process is not None
    return await metered_client(
        client,
        config.daemon.process.pid,
        "issuer-mint",
        "-addr",
        config.daemon.address,
        "-bundle",
        str(stack.work / "bundle.pem"),
        "-token-file",
        str(stack.work / "token"),
        "-descriptor",
        str(stack.work / "issuer.desc"),
        "-clients",
        str(clients),
        "-n",
        str(total),
        port=config.daemon.port,
    )


async def main(args: argparse.Namespace) -> None:
    client = bench_client()
    async with running_stack() as stack:
        (stack.work / "bundle.pem").write_bytes(stack.bundle_pem)
        (stack.work / "token").write_text(stack.token)
        (stack.work / "issuer.desc").write_bytes(issuer_pb2.DESCRIPTOR.serialized_pb)
        admin = AsyncClient(KubeConfig.from_file(stack.work / "admin.kubeconfig"))
        configs: list[Config] = []
        with contextlib.ExitStack() as cleanup:
            try:
                if args.baseline:
                    tree = cleanup.enter_context(baseline_tree(args.baseline))
                    token = await service_account_token(admin)
                    daemon = await asyncio.to_thread(start, stack, token, (), tree)
                    configs.append(Config(f"{args.baseline} (baseline)", daemon))
                for workers in args.workers:
                    token = await service_account_token(admin)
                    daemon = await asyncio.to_thread(start, stack, token, (f"--workers={workers}",))
                    configs.append(Config(f"--workers={workers}", daemon))
                await asyncio.sleep(3)  # every worker ready (the primary is ready before its workers)
                await report(args, client, stack, configs)
            finally:
                for config in configs:
                    config.daemon.stop()
                await admin.close()


async def report(args: argparse.Namespace, client: Path, stack: Stack, configs: list[Config]) -> None:
    sign_us, csr_us, leaf_us = raw_costs()
    print(f"machine: {machine()}")
    print(
        f"raw, this process: ECDSA P-256 sign {sign_us:.0f} us, CSR parse+verify {csr_us:.0f} us, "
        f"leaf build+sign {leaf_us:.0f} us"
    )
    for config in configs:
        await mint(client, stack, config, 16, 500)  # warm-up: connections, token cache, JIT-free caches
    for clients in (1, 4, 16):
        for _ in range(args.rounds):
            for config in configs:
                config.runs.setdefault(clients, []).append(
                    await mint(client, stack, config, clients, args.requests)
                )
    print(
        f"target at 16 clients: >= {SPIRE_RATE:,.0f}/s (SPIRE 1.13.3 here, issue 9) and p99 <= "
        f"{TARGET_P99_MS:.0f} ms; medians of {args.rounds} alternating rounds of {args.requests} calls"
    )
    print(
        f"{'kubespiffed':<28} {'clients':>7} {'issued/s':>9} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'server us/call':>14} {'client us/call':>14} {'machine busy':>12}"
    )
    for clients in (1, 4, 16):
        for config in configs:
            runs = config.runs[clients]

            def med(key: str, runs: list[dict[str, Any]] = runs) -> float:
                return statistics.median(float(r[key]) for r in runs)

            verdict = ""
            if clients == 16:
                rate_ok = med("per_second") >= SPIRE_RATE
                p99_ok = med("p99_ms") <= TARGET_P99_MS
                verdict = f"  rate {'ok' if rate_ok else 'BELOW'}, p99 {'ok' if p99_ok else 'ABOVE'}"
            print(
                f"{config.name:<28} {clients:>7} {med('per_second'):>9,.0f} {med('p50_ms'):>7.2f} "
                f"{med('p99_ms'):>7.2f} {med('server_us_per_call'):>14.0f} "
                f"{med('client_us_per_call'):>14.0f} {med('machine_busy'):>11.0%}{verdict}"
            )
    print("connections per process at 16 clients, each run (SO_REUSEPORT spreads them by a hash):")
    for config in configs:
        spreads = ", ".join("/".join(map(str, r["connections_per_process"])) for r in config.runs[16])
        print(f"  {config.name:<28} {spreads}")
    print("memory after the load, per process (RSS / PSS MB):")
    for config in configs:
        assert config.daemon.process is not None
        sizes = [memory_mb(pid) for pid in descendants(config.daemon.process.pid)]
        each = ", ".join(f"{rss:.0f} / {pss:.0f}" for rss, pss in sizes)
        total_rss, total_pss = sum(r for r, _ in sizes), sum(p for _, p in sizes)
        print(f"  {config.name:<28} {each}   total {total_rss:.0f} / {total_pss:.0f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=4000, help="issuances per run (max 20000)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per client count (max 10)")
    parser.add_argument("--workers", default="1,2", help="comma-separated --workers values to compare")
    parser.add_argument("--baseline", default="", help="also a git revision's kubespiffed (one worker)")
    args = parser.parse_args()
    args.requests = min(args.requests, 20000)
    args.rounds = min(args.rounds, 10)
    args.workers = [int(w) for w in args.workers.split(",") if w]
    asyncio.run(main(args))
