"""X.509-SVID issuance through the issuer API: throughput and latency at 1, 4 and 16 concurrent clients.

Runs a real control plane and a real kubespiffed process (as `kubespiffe dev up` does), registers one
workload, and sends a bounded number of MintX509SVID calls from one client process. The raw cost of one
ECDSA P-256 signature and of one leaf build+sign, measured in this same run, give the floor.

    .venv/bin/python bench/issuance.py [--requests 2000]

Target on 2 cores: >= 1,000 issuances/s and p99 <= 20 ms at 16 clients.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import statistics
import time

import grpc
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from stack import percentiles, running_stack  # bench/stack.py (benchmarks run as scripts)

from kubespiffe.agent.issuer_client import new_csr
from kubespiffe.authority.keys import KeyType
from kubespiffe.authority.x509ca import create_self_signed_ca, load_csr, sign_x509_svid
from kubespiffe.proto import issuer_pb2, issuer_pb2_grpc
from kubespiffe.spiffe.spiffeid import SpiffeId, TrustDomain


def raw_costs(rounds: int = 2000) -> tuple[float, float]:
    """Median microseconds of one ECDSA P-256 signature and one SVID build+sign, in this process."""
    key = ec.generate_private_key(ec.SECP256R1())
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        key.sign(b"x" * 256, ec.ECDSA(hashes.SHA256()))
        samples.append(time.perf_counter() - start)
    sign_us = statistics.median(samples) * 1e6
    td = TrustDomain("example.org")
    now = dt.datetime.now(dt.UTC)
    ca = create_self_signed_ca(td, KeyType.EC_P256, dt.timedelta(days=1), now)
    csr = load_csr(new_csr()[1])
    spiffe_id = SpiffeId.parse("spiffe://example.org/ns/bench/sa/bench")
    samples = []
    for _ in range(rounds // 4):
        start = time.perf_counter()
        sign_x509_svid(ca, csr, spiffe_id, (), dt.timedelta(hours=1), now)
        samples.append(time.perf_counter() - start)
    return sign_us, statistics.median(samples) * 1e6


async def _client(
    stub: issuer_pb2_grpc.IssuerAsyncStub,
    request: issuer_pb2.MintX509SVIDRequest,
    metadata: tuple[tuple[str, str], ...],
    count: int,
    latencies: list[float],
) -> None:
    for _ in range(count):
        start = time.perf_counter()
        await stub.MintX509SVID(request, metadata=metadata, timeout=10)
        latencies.append(time.perf_counter() - start)


async def measure(
    address: str, bundle_pem: bytes, token: str, concurrency: int, total: int
) -> tuple[float, float, float]:
    credentials = grpc.ssl_channel_credentials(bundle_pem)
    options = [("grpc.ssl_target_name_override", "kubespiffed")]
    async with grpc.aio.secure_channel(address, credentials, options=options) as channel:
        stub = issuer_pb2_grpc.IssuerStub(channel)
        request = issuer_pb2.MintX509SVIDRequest(csr=new_csr()[1])
        metadata = (("authorization", f"Bearer {token}"),)
        await _client(stub, request, metadata, 20, [])  # warm-up
        latencies: list[float] = []
        start = time.perf_counter()
        await asyncio.gather(
            *(_client(stub, request, metadata, total // concurrency, latencies) for _ in range(concurrency))
        )
        elapsed = time.perf_counter() - start
    p50, p99 = percentiles(latencies)
    return len(latencies) / elapsed, p50, p99


async def main(total: int) -> None:
    async with running_stack() as stack:
        sign_us, leaf_us = raw_costs()
        print(f"raw ECDSA P-256 sign: {sign_us:.0f} us   leaf build+sign: {leaf_us:.0f} us (this process)")
        print(f"{'clients':>8} {'requests':>9} {'issued/s':>10} {'p50 ms':>8} {'p99 ms':>8}")
        for concurrency in (1, 4, 16):
            rate, p50, p99 = await measure(
                stack.daemon.address, stack.bundle_pem, stack.token, concurrency, total
            )
            print(f"{concurrency:>8} {total:>9} {rate:>10.0f} {p50:>8.2f} {p99:>8.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--requests", type=int, default=2000, help="issuances per concurrency level (bounded)"
    )
    args = parser.parse_args()
    asyncio.run(main(min(args.requests, 20000)))
