"""The agent's Workload API: time to first SVID, cached fetch latency, JWT minting rate, resident memory.

Runs a real control plane and kubespiffed, then:
- a fresh agent *in this process* (Agent.run), timed from start to the first X.509-SVID it serves, N times;
- agent *processes* (as a sidecar runs), timed from exec to first SVID served (10 starts), and the last
  one's RSS and PSS (/proc/<pid>/smaps_rollup) after load;
- cached FetchX509SVID (first message of a new stream) and FetchJWTSVID over its Unix socket;
- JWT-SVIDs minted per second at kubespiffed through the issuer API (16 concurrent calls).

    .venv/bin/python bench/agent.py [--rounds 200]

Targets on 2 cores: fresh agent to first SVID p99 <= 100 ms; agent process exec to first SVID p50 <= 100 ms;
cached fetch p99 <= 5 ms; agent RSS <= 35 MB after load (issue 9 part 3).
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import time
from pathlib import Path

import grpc
from spiffe._proto import workload_pb2, workload_pb2_grpc
from stack import percentiles, running_stack  # bench/stack.py (benchmarks run as scripts)

from kubespiffe.agent.issuer_client import IssuerClient
from kubespiffe.agent.run import Agent, AgentConfig
from kubespiffe.devenv.stack import agent_command
from kubespiffe.spiffe.bundle import parse_pem_certificates

HEADER = (("workload.spiffe.io", "true"),)


async def first_svid_in_process(config: AgentConfig) -> float:
    agent = Agent(config)
    start = time.perf_counter()
    task = asyncio.create_task(agent.run())
    await agent.state.wait_newer(0)
    elapsed = time.perf_counter() - start
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return elapsed


def first_message(stub: workload_pb2_grpc.SpiffeWorkloadAPIStub) -> None:
    stream = stub.FetchX509SVID(workload_pb2.X509SVIDRequest(), metadata=HEADER, timeout=5)
    next(iter(stream))
    stream.cancel()


def memory_mb(pid: int) -> tuple[float, float]:
    """RSS and PSS (shared pages divided among the processes mapping them) in MB."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value, *_ = line.split()
        fields[name.rstrip(":")] = int(value) / 1024
    return fields["Rss"], fields["Pss"]


async def exec_to_first_svid(command: list[str], socket: Path) -> tuple[float, subprocess.Popen[bytes]]:
    """Seconds from exec to the first FetchX509SVID message, and the (still running) process."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not socket.exists():
        await asyncio.sleep(0.002)
    with grpc.insecure_channel(f"unix://{socket}") as channel:
        first_message(workload_pb2_grpc.SpiffeWorkloadAPIStub(channel))
    return time.perf_counter() - start, process


async def jwt_rate(address: str, bundle: bytes, token: str, total: int) -> float:
    client = IssuerClient(address, parse_pem_certificates(bundle))
    await client.mint_jwt(token, ["warm-up"])

    async def worker(count: int) -> None:
        for _ in range(count):
            await client.mint_jwt(token, ["bench"])

    start = time.perf_counter()
    await asyncio.gather(*(worker(total // 16) for _ in range(16)))
    elapsed = time.perf_counter() - start
    await client.close()
    return (total // 16) * 16 / elapsed


async def main(rounds: int) -> None:
    async with running_stack() as stack:
        work, daemon = stack.work, stack.daemon
        (work / "token").write_text(stack.token)
        (work / "bundle.pem").write_bytes(stack.bundle_pem)
        samples = []
        for i in range(rounds):
            config = AgentConfig(daemon.address, work / "token", work / "bundle.pem", work / f"in-{i}.sock")
            samples.append(await first_svid_in_process(config))
        p50, p99 = percentiles(samples)
        print(f"fresh agent (in process) to first SVID, {rounds} starts: p50 {p50:.1f} ms  p99 {p99:.1f} ms")

        starts = []
        for i in range(10):
            socket = work / f"agent-{i}.sock"
            command = agent_command(daemon.address, work / "token", work / "bundle.pem", socket)
            elapsed, process = await exec_to_first_svid(command, socket)
            starts.append(elapsed)
            if i < 9:
                process.terminate()
                process.wait(10)
        p50, p99 = percentiles(starts)
        print(
            f"agent process exec to first SVID served, 10 starts: p50 {p50:.0f} ms  "
            f"max {max(starts) * 1000:.0f} ms (interpreter start and imports included; target p50 <= 100 ms)"
        )
        try:
            with grpc.insecure_channel(f"unix://{socket}") as channel:
                stub = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)
                x509 = []
                for _ in range(rounds * 5):
                    t = time.perf_counter()
                    first_message(stub)
                    x509.append(time.perf_counter() - t)
                jwt = []
                for _ in range(rounds * 5):
                    t = time.perf_counter()
                    stub.FetchJWTSVID(
                        workload_pb2.JWTSVIDRequest(audience=["bench"]), metadata=HEADER, timeout=5
                    )
                    jwt.append(time.perf_counter() - t)
            p50, p99 = percentiles(x509)
            print(
                f"cached FetchX509SVID (first message of a new stream), {len(x509)} calls: "
                f"p50 {p50:.2f} ms  p99 {p99:.2f} ms"
            )
            p50, p99 = percentiles(jwt)
            print(f"cached FetchJWTSVID, {len(jwt)} calls: p50 {p50:.2f} ms  p99 {p99:.2f} ms")
            rss, pss = memory_mb(process.pid)
            print(f"agent memory after load: RSS {rss:.1f} MB (target <= 35 MB), PSS {pss:.1f} MB")
        finally:
            process.terminate()
            process.wait(10)
        rate = await jwt_rate(daemon.address, stack.bundle_pem, stack.token, 1600)
        print(f"JWT-SVIDs minted at kubespiffed (16 concurrent calls): {rate:.0f}/s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=100, help="fresh agent starts (bounded to 1000)")
    asyncio.run(main(min(parser.parse_args().rounds, 1000)))
