"""The agent's Workload API: time to first SVID, cached fetch latency, JWT minting rate, resident memory.

Runs a real control plane and kubespiffed, then:
- a fresh agent *in this process* (Agent.run), timed from start to the first X.509-SVID it serves, N times;
- agent *processes* (as a sidecar runs), timed from exec to first SVID served (20 starts), and the last
  one's RSS and PSS (/proc/<pid>/smaps_rollup) after load;
- cached FetchX509SVID (first message of a new stream) and FetchJWTSVID over its Unix socket;
- JWT-SVIDs minted per second at kubespiffed through the issuer API (16 concurrent calls);
- the floor: what importing each layer the agent stands on costs a fresh interpreter (RSS, time).

Agent processes run from bytecode compiled ahead, as in the image (deploy/Dockerfile compiles everything
at build time and the root filesystem is read-only): a development tree run with PYTHONDONTWRITEBYTECODE
would compile kubespiffe's own modules at every start, which no pod does. The bytecode lives under
~/.cache/kubespiffe/pycache (PYTHONPYCACHEPREFIX), written by one untimed start.

    .venv/bin/python bench/agent.py [--rounds 200] [--image | --python-option=-OO]

--image (root, buildah): the agent processes run in the project's image as a pod runs them (read-only
root, tmpfs /tmp, user 65532, the image's environment and Debian's python3), built from this tree first.
--python-option (development venv only, repeatable): run the agent processes' interpreter with it, e.g.
-OO (no docstrings or asserts; its bytecode is written by the untimed start as well).

Targets on 2 cores: fresh agent to first SVID p99 <= 100 ms; agent process exec to first SVID p50 <= 100 ms;
cached fetch p99 <= 5 ms; agent RSS <= 35 MB after load (issue 9 part 3).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
from spiffe._proto import workload_pb2, workload_pb2_grpc
from stack import percentiles, running_stack  # bench/stack.py (benchmarks run as scripts)

from kubespiffe.agent.issuer_client import IssuerClient
from kubespiffe.agent.run import Agent, AgentConfig
from kubespiffe.devenv import image
from kubespiffe.devenv.build import cache_root, repo_root
from kubespiffe.devenv.stack import agent_command
from kubespiffe.spiffe.bundle import parse_pem_certificates

HEADER = (("workload.spiffe.io", "true"),)
STARTS = 20
# What the agent stands on, one layer on top of the other: modules imported, then a statement run. The last
# line is the agent's own start before its loop: its parser (argparse's formatter imports shutil), its import.
AGENT_ARGS = ["agent", "--server=k:1", "--token-file=t", "--bundle-file=b", "--socket=s"]
AGENT_PARSE = f"kubespiffe.cli.main.parse_args({AGENT_ARGS!r})"
LAYERS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("interpreter", (), ""),
    ("asyncio, ssl", ("asyncio", "ssl"), ""),
    ("cryptography", ("cryptography.x509", "cryptography.hazmat.primitives.asymmetric.ec"), ""),
    ("protobuf + the agent's messages", ("kubespiffe.proto.issuer_pb2", "kubespiffe.proto.workload_pb2"), ""),
    ("grpclib (client, server, health)", ("grpclib.client", "grpclib.server", "grpclib.health.service"), ""),
    ("kubespiffe agent (parser, imports)", ("kubespiffe.cli.main", "kubespiffe.agent.main"), AGENT_PARSE),
)


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


def compiled_ahead() -> dict[str, str]:
    """The environment agent processes run in: bytecode compiled ahead, as the image ships it."""
    env = dict(os.environ, PYTHONPYCACHEPREFIX=str(cache_root() / "pycache"))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


async def exec_to_first_svid(
    command: list[str], socket: Path, env: dict[str, str]
) -> tuple[float, subprocess.Popen[bytes]]:
    """Seconds from exec to the first FetchX509SVID message, and the (still running) process."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    while not socket.exists():
        await asyncio.sleep(0.002)
    with grpc.insecure_channel(f"unix://{socket}") as channel:
        first_message(workload_pb2_grpc.SpiffeWorkloadAPIStub(channel))
    return time.perf_counter() - start, process


# The command line of one agent start, given its socket (in the bench's directory).
Launcher = Callable[[Path], list[str]]


@contextlib.contextmanager
def in_image(address: str, files: Path) -> Iterator[Launcher]:
    """Agents run in the image built from this tree as a pod runs them: the rootfs bound read-only in a
    private mount namespace, a tmpfs on /tmp, the image's user and environment; `files` (token, bundle,
    sockets; handed to the image's user) appears inside at /run/bench."""
    built = image.build_image(repo_root())
    config = json.loads(image.buildah("inspect", "--type", "image", built.name))["OCIv1"]["config"]
    uid, gid = map(int, config["User"].split(":"))
    for path in (files, files / "token", files / "bundle.pem"):
        os.chown(path, uid, gid)
    container = image.buildah("from", "--pull-never", built.name)
    try:
        root = Path(image.buildah("mount", container))
        (root / "run" / "bench").mkdir(parents=True, exist_ok=True)

        def launch(socket: Path) -> list[str]:
            agent = ["kubespiffe", "agent", "--server", address, "--token-file", "/run/bench/token"]
            agent += ["--bundle-file", "/run/bench/bundle.pem", "--socket", f"/run/bench/{socket.name}"]
            chroot = ["chroot", f"--userspec={config['User']}", str(root), "/usr/bin/env", "-i"]
            steps = [
                f"mount --bind {root} {root}",
                f"mount -o remount,bind,ro {root}",
                f"mount -t tmpfs -o size=16m,mode=1777 tmpfs {root}/tmp",
                f"mount --bind {files} {root}/run/bench",
                "exec " + shlex.join([*chroot, *config.get("Env", []), *agent]),  # the pid is the agent's
            ]
            return ["unshare", "--mount", "--propagation", "private", "sh", "-c", " && ".join(steps)]

        yield launch
    finally:
        image.buildah("rm", container)


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


async def main(rounds: int, in_the_image: bool, options: list[str]) -> None:
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

        def here(socket: Path) -> list[str]:
            python, *agent = agent_command(daemon.address, work / "token", work / "bundle.pem", socket)
            return [python, *options, *agent]

        launcher = in_image(daemon.address, work) if in_the_image else contextlib.nullcontext(here)
        with launcher as launch:
            where = " in the image" if in_the_image else "".join(f" {o}" for o in options)
            await agent_processes(work, launch, rounds, where)
        rate = await jwt_rate(daemon.address, stack.bundle_pem, stack.token, 1600)
        print(f"JWT-SVIDs minted at kubespiffed (16 concurrent calls): {rate:.0f}/s")
    if not in_the_image:
        print_floor(compiled_ahead(), options)


async def agent_processes(work: Path, launch: Launcher, rounds: int, where: str) -> None:
    """Agent processes: exec to first SVID, then the last one's cached calls and memory after them."""
    env = compiled_ahead()
    starts = []
    for i in range(STARTS + 1):  # the first, untimed, writes any bytecode missing
        socket = work / f"agent-{i}.sock"
        elapsed, process = await exec_to_first_svid(launch(socket), socket, env)
        if i > 0:
            starts.append(elapsed)
        if i < STARTS:
            process.terminate()
            process.wait(10)
    p50, p99 = percentiles(starts)
    print(
        f"agent process{where} exec to first SVID served, {STARTS} starts: p50 {p50:.0f} ms  "
        f"p99 {p99:.0f} ms (interpreter start and imports included; target p50 <= 100 ms)"
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
                stub.FetchJWTSVID(workload_pb2.JWTSVIDRequest(audience=["bench"]), metadata=HEADER, timeout=5)
                jwt.append(time.perf_counter() - t)
        p50, p99 = percentiles(x509)
        print(
            f"cached FetchX509SVID (first message of a new stream), {len(x509)} calls: "
            f"p50 {p50:.2f} ms  p99 {p99:.2f} ms (target p99 <= 5 ms)"
        )
        p50, p99 = percentiles(jwt)
        print(f"cached FetchJWTSVID, {len(jwt)} calls: p50 {p50:.2f} ms  p99 {p99:.2f} ms")
        rss, pss = memory_mb(process.pid)
        print(f"agent{where} memory after load: RSS {rss:.1f} MB (target <= 35 MB), PSS {pss:.1f} MB")
    finally:
        process.terminate()
        process.wait(10)


def import_cost(
    modules: tuple[str, ...], statements: str, env: dict[str, str], options: list[str]
) -> tuple[float, float]:
    """A fresh interpreter's RSS (MB) once `modules` are imported and `statements` run, and ms from exec to
    then (median of 5)."""
    code = (
        f"import time; import {', '.join(('sys', *modules))}; {statements}t = time.perf_counter(); "
        "rss = next(l for l in open('/proc/self/status') if l.startswith('VmRSS:')).split()[1]; "
        "print(t, int(rss) / 1024)"
    )
    samples = []
    for _ in range(5):
        start = time.perf_counter()  # CLOCK_MONOTONIC: the child's perf_counter reads the same clock
        out = subprocess.run([sys.executable, *options, "-c", code], env=env, capture_output=True, check=True)
        done, rss = map(float, out.stdout.split())
        samples.append((rss, (done - start) * 1000))
    return statistics.median(r for r, _ in samples), statistics.median(t for _, t in samples)


def print_floor(env: dict[str, str], options: list[str]) -> None:
    """What each layer the agent stands on costs at import (its pages touched by use come on top)."""
    print("import floor, fresh interpreter, each layer on top of the ones above (median of 5):")
    modules: tuple[str, ...] = ()
    statements = ""
    previous = (0.0, 0.0)
    for name, layer, statement in LAYERS:
        modules += layer
        statements += f"{statement}; " if statement else ""
        rss, ms = import_cost(modules, statements, env, options)
        print(
            f"  {name:38s} RSS {rss:5.1f} MB (+{rss - previous[0]:4.1f})  "
            f"exec to imported {ms:5.0f} ms (+{ms - previous[1]:3.0f})"
        )
        previous = (rss, ms)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=100, help="fresh agent starts (bounded to 1000)")
    parser.add_argument("--image", action="store_true", help="agent processes in the image (root, buildah)")
    parser.add_argument(
        "--python-option",
        action="append",
        default=[],
        metavar="OPTION",
        help="the agent processes' interpreter option, e.g. -OO (development venv only)",
    )
    args = parser.parse_args()
    if args.image and args.python_option:
        parser.error("--python-option: the image's command line is the sidecar's (development venv only)")
    asyncio.run(main(min(args.rounds, 1000), args.image, args.python_option))
