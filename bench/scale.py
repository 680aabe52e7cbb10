"""kubespiffed with 10,000 pods and 1,000 registrations in the API server: memory, startup, issuance, relist.

    .venv/bin/python bench/scale.py [--pods 10000] [--registrations 1000] [--rate 100]

Not part of the test suite. Runs a real control plane (no kubelet: pods are plain API objects, created
with bounded concurrency before kubespiffed starts), spread over namespaces of 100 pods, each namespace with
registrations selecting its pods by an `app` label. Then it reports, next to issue 9's targets:

- startup -> ready: kubespiffed exec until /readyz answers 200 (its caches listed); MintX509SVID at once
  for a second (ready means able to issue); then ready -> settled: until its CPU use stays under 10 % for
  2 s (it writes every registration's status after /readyz says 200, so load measured before that is not
  steady state);
- RSS and PSS of kubespiffed (with any worker processes) once ready, after steady load, and after a relist;
- issuance in steady state: MintX509SVID from tools/benchclient at a fixed rate (an open loop: every call is
  scheduled in advance, so a stall shows as latency rather than as fewer calls), p50/p99/max;
- issuance while kubespiffed relists: the same paced load while kubespiffed's TCP connections to the API
  server are aborted (`ss -K`, as a load balancer reset or a network blip does; the API server stays up).
  Every watch fails and every watch cache lists again (10,000 pods among them). lightkube resumes a watch
  that merely timed out from its last resourceVersion, so there is no periodic relist to wait for. Reported
  over the 30 s run and over the 5 s after the reset, with kubespiffed's own log line for the pod relist
  (objects, seconds, changes);
- then the API server itself is restarted (same flags, keys and etcd: an upgrade), --downtime seconds
  down, under the same load; whether kubespiffed rides it out is reported.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from lightkube import AsyncClient, KubeConfig
from lightkube.core.exceptions import ApiError
from lightkube.models.core_v1 import Container, PodSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Namespace, Pod, ServiceAccount
from stack import percentiles, work_directory  # bench/stack.py (benchmarks run as scripts)
from vs_spire import bench_client, descendants, machine, tree_memory_mb

from kubespiffe.devenv.controlplane import ControlPlane
from kubespiffe.devenv.stack import Kubespiffed, authority_bundle_pem, install, service_account_token
from kubespiffe.devenv.workloads import pod_token
from kubespiffe.kube.client import WorkloadRegistration
from kubespiffe.proto import issuer_pb2

PODS_PER_NAMESPACE = 100
APPS = 10  # label values per namespace; registrations per namespace select one each
CONCURRENCY = 32
RELIST_WINDOW = 5.0  # seconds after the connection reset counted as "during the relist" (it takes ~1 s)


async def bounded(count: int, make: Any) -> None:
    """Run make(i) for i in range(count), at most CONCURRENCY at a time."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(count):
        queue.put_nowait(i)

    async def worker() -> None:
        while not queue.empty():
            await make(queue.get_nowait())

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))


async def populate(kube: AsyncClient, pods: int, registrations: int) -> float:
    namespaces = max(1, -(-pods // PODS_PER_NAMESPACE))
    per_namespace = -(-registrations // namespaces)
    start = time.monotonic()

    async def namespace(n: int) -> None:
        name = f"scale-{n:03d}"
        await kube.create(Namespace(metadata=ObjectMeta(name=name)))
        await kube.create(ServiceAccount(metadata=ObjectMeta(name="app", namespace=name)))

    await bounded(namespaces, namespace)

    async def registration(i: int) -> None:
        n, k = divmod(i, per_namespace)
        spec = {
            "podSelector": {"matchLabels": {"app": f"a{k % APPS}"}},
            "spiffeIDTemplate": f"spiffe://{{trustDomain}}/ns/{{namespace}}/app/a{k % APPS}/r{k}",
        }
        meta = ObjectMeta(name=f"r{k}", namespace=f"scale-{n:03d}")
        await kube.create(WorkloadRegistration(metadata=meta, spec=spec))

    await bounded(registrations, registration)

    async def pod(i: int) -> None:
        n, k = divmod(i, PODS_PER_NAMESPACE)
        meta = ObjectMeta(name=f"pod-{k}", namespace=f"scale-{n:03d}", labels={"app": f"a{k % APPS}"})
        spec = PodSpec(
            serviceAccountName="app",
            automountServiceAccountToken=False,
            containers=[Container(name="app", image="registry.invalid/app:latest")],
        )
        for attempt in range(5):
            try:
                await kube.create(Pod(metadata=meta, spec=spec))
                return
            except ApiError as exc:
                if exc.status.code not in (429, 500, 503, 504) or attempt == 4:
                    raise
                await asyncio.sleep(0.5)

    await bounded(pods, pod)
    return time.monotonic() - start


def memory(daemon: Kubespiffed) -> tuple[float, float, int]:
    assert daemon.process is not None
    return tree_memory_mb(daemon.process.pid)


async def paced_mint(client: Path, daemon: Kubespiffed, work: Path, rate: float, seconds: float) -> list[Any]:
    """MintX509SVID at `rate` per second from 4 clients for `seconds`; every call's start and latency."""
    proc = await asyncio.create_subprocess_exec(
        str(client), "issuer-mint", "-addr", daemon.address, "-bundle", str(work / "bundle.pem"),
        "-token-file", str(work / "pod.token"), "-descriptor", str(work / "issuer.desc"),
        "-clients", "4", "-rate", str(rate), "-duration", f"{seconds}s", "-timeout", f"{seconds + 60}s",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"spiffe-bench issuer-mint failed: {err.decode().strip()}")
    samples: list[Any] = json.loads(out)["samples"]
    return samples


def describe(samples: list[Any]) -> str:
    ok = [s["ms"] / 1000 for s in samples if not s.get("error")]
    failed = len(samples) - len(ok)
    if not ok:
        return f"{len(samples)} calls, all failed"
    p50, p99 = percentiles(ok)
    slowest = max(ok) * 1000
    calls = f"{len(samples)} calls, {failed} failed"
    return f"p50 {p50:.1f} ms  p99 {p99:.1f} ms  max {slowest:.0f} ms  ({calls})"


def worst(samples: list[Any]) -> str:
    """The one-second slice with the slowest call: when it was (from the first call) and its p99/max."""
    if not samples:
        return "-"
    first = min(s["start_ns"] for s in samples)
    slices: dict[int, list[float]] = {}
    for s in samples:
        slices.setdefault(int((s["start_ns"] - first) // 1e9), []).append(s["ms"])
    second, values = max(slices.items(), key=lambda item: max(item[1]))
    return f"+{second} s: {len(values)} calls, max {max(values):.0f} ms"


def restart_apiserver(plane: ControlPlane, downtime: float, admin: Path) -> float:
    """Stop kube-apiserver (SIGTERM, SIGKILL after 15 s) and start it with the same arguments (keys,
    certificates and etcd unchanged); returns how long after the new start it said ready.

    ControlPlane has no restart of its own (starting it anew would make new ServiceAccount keys and so
    invalidate every token), so this replaces its process in place; ControlPlane.stop() still stops it.
    """
    procs = plane._procs
    assert plane.binaries is not None
    apiserver = str(plane.binaries.kube_apiserver)
    index = next(i for i, p in enumerate(procs) if isinstance(p.args, list) and p.args[0] == apiserver)
    old = procs[index]
    old.terminate()
    try:
        old.wait(15)
    except subprocess.TimeoutExpired:  # seen with 10,000 pods: it stops serving but does not exit
        old.kill()
        old.wait()
    time.sleep(downtime)
    with (plane.log_dir / f"{plane.name}-kube-apiserver.log").open("ab") as log:
        procs[index] = subprocess.Popen(
            old.args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    context = ssl.create_default_context(cadata=plane.ca_pem.decode())
    context.load_cert_chain(admin.with_suffix(".crt"), admin.with_suffix(".key"))
    started = time.monotonic()
    while time.monotonic() - started < 120:
        try:
            url = f"{plane.server}/readyz"  # https, loopback
            with urllib.request.urlopen(url, timeout=2, context=context) as resp:  # noqa: S310
                if resp.status == 200:
                    return time.monotonic() - started
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError("kube-apiserver did not come back")


def exit_cause(log: Path, offset: int) -> str:
    """The exception that ended kubespiffed (its last traceback after `offset`) and its deepest own frame."""
    lines = relist_lines(log, offset, "")
    starts = [i for i, line in enumerate(lines) if "Traceback (most recent call last)" in line]
    fatal = [i for i in starts if "Exception Group" in lines[i]] or starts
    if not fatal:
        return "see the log"
    frame, error = "", ""
    for line in lines[fatal[-1] :]:
        if 'File "' in line and "/src/kubespiffe/" in line:
            frame = line.split("/src/kubespiffe/")[-1].strip()
        match = re.search(r"\b([A-Za-z0-9_.]*(?:Error|Exception)): (.*)", line)
        if match and "Event loop is closed" not in line and "TaskGroup" not in line:
            error = f"{match.group(1)}: {match.group(2)[:50]}"
    return f"{error} at {frame}"


def relist_lines(log: Path, offset: int, word: str = "relist") -> list[str]:
    """kubespiffed's log lines after `offset` that mention `word`."""
    with log.open("rb") as f:
        f.seek(offset)
        text = f.read().decode(errors="replace")
    return [line for line in text.splitlines() if word in line.lower()]


def cpu_seconds(daemon: Kubespiffed) -> float:
    """User + system CPU time of kubespiffed (and its workers) so far."""
    assert daemon.process is not None
    total = 0.0
    for pid in descendants(daemon.process.pid):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def peak_rss_mb(daemon: Kubespiffed) -> float:
    """VmHWM: the most kubespiffed's main process was ever resident (a relist's peak included)."""
    assert daemon.process is not None
    for line in Path(f"/proc/{daemon.process.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def cpu_trace(daemon: Kubespiffed, seconds: float) -> list[tuple[int, float]]:
    """kubespiffed's CPU use per half second: (Unix ns, CPU seconds used in that half second)."""
    trace, last = [], cpu_seconds(daemon)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        await asyncio.sleep(0.5)
        now = cpu_seconds(daemon)
        trace.append((time.time_ns(), now - last))
        last = now
    return trace


def cpu_summary(trace: list[tuple[int, float]], since_ns: int) -> str:
    """The median half second and the busiest ones (relative to `since_ns`), as % of one core."""
    used = sorted(u for _, u in trace)
    top = sorted(trace, key=lambda item: -item[1])[:3]
    busiest = ", ".join(f"+{(t - since_ns) / 1e9:.1f} s {u * 200:.0f} %" for t, u in sorted(top))
    return f"median {used[len(used) // 2] * 200:.0f} %; busiest {busiest}"


def reset_connections(daemon: Kubespiffed, plane: ControlPlane) -> int:
    """Abort kubespiffed's TCP connections to kube-apiserver (`ss -K`, sock_diag): every watch fails."""
    assert daemon.process is not None
    pids = {f"pid={pid}," for pid in descendants(daemon.process.pid)}
    server = f"127.0.0.1:{plane.port}"
    listing = subprocess.run(
        ["ss", "-tnpH", "state", "established", "dst", server], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    local = [line.split()[2] for line in listing if any(pid in line for pid in pids)]
    for address in local:
        subprocess.run(["ss", "-K", "-tn", "src", address, "dst", server], capture_output=True, check=True)
    return len(local)


async def settle(daemon: Kubespiffed, since: float, limit: float = 180) -> str:
    """Wait until kubespiffed is idle: /readyz answers before it has written every registration's status.
    Returns the time from `since` (monotonic) to the start of the idle 2 s."""
    quiet, last = 0, cpu_seconds(daemon)
    while time.monotonic() - since < limit:
        await asyncio.sleep(0.5)
        now = cpu_seconds(daemon)
        quiet = quiet + 1 if now - last < 0.05 else 0
        last = now
        if quiet >= 4:
            return f"{time.monotonic() - since - 2:.1f} s"
    return f"not idle after {limit:.0f} s"


def report(label: str, value: str, target: str) -> None:
    load = f"load {os.getloadavg()[0]:.1f}"
    print(f"{label:<58} {value:<70} {load:<9} {'target: ' + target if target else ''}", flush=True)


async def main(args: argparse.Namespace, work: Path) -> None:
    client = bench_client()
    print(f"machine: {machine()}; load average {os.getloadavg()[0]:.1f}")
    with ControlPlane("scale", log_dir=work) as plane:
        kubeconfig = work / "admin.kubeconfig"
        kubeconfig.write_text(plane.admin_kubeconfig())
        kube = AsyncClient(KubeConfig.from_file(kubeconfig))
        daemon = Kubespiffed(
            plane, log_path=work / "kubespiffed.log", extra_args=(f"--workers={args.workers}",)
        )
        try:
            await install(kube)
            took = await populate(kube, args.pods, args.registrations)
            print(
                f"created {args.pods} pods, {args.registrations} registrations in {took:.0f} s; work {work}"
            )
            print(f"issuance: MintX509SVID at {args.rate:.0f}/s from 4 clients (tools/benchclient, paced)")
            pod = await kube.get(Pod, "pod-0", namespace="scale-000")
            (work / "pod.token").write_text(await pod_token(kube, pod, expiration_seconds=3600))
            (work / "issuer.desc").write_bytes(issuer_pb2.DESCRIPTOR.serialized_pb)
            token = await service_account_token(kube)
            started = time.monotonic()
            daemon.start(token)
            bundle = await authority_bundle_pem(kube, timeout=120)
            (work / "bundle.pem").write_bytes(bundle)
            await asyncio.to_thread(daemon.wait_ready, bundle, 300)
            ready_at = time.monotonic()
            report("startup -> ready (exec to /readyz 200)", f"{ready_at - started:.1f} s", "reported")
            rss, pss, count = memory(daemon)
            report(
                "kubespiffed RSS when ready",
                f"{rss:.0f} MB (PSS {pss:.0f} MB, {count} process(es))",
                "<= 150 MB",
            )
            # Ready means able to issue: calls at once, while the registration statuses are being written.
            first = await paced_mint(client, daemon, work, 20, 1)
            report("issuance in the first second after ready", describe(first), "0 failed")
            settled = await settle(daemon, ready_at)
            report(
                "ready -> settled (CPU < 10 % for 2 s: registration statuses written)", settled, "reported"
            )
            steady = await paced_mint(client, daemon, work, args.rate, args.seconds)
            report("issuance, steady state", describe(steady), "p99 <= 15 ms")
            rss, pss, count = memory(daemon)
            report("kubespiffed RSS after steady load", f"{rss:.0f} MB (PSS {pss:.0f} MB)", "<= 150 MB")

            # Every watch kubespiffed holds breaks at once (its connections to the API server reset, as a
            # load balancer or a network blip does; the API server stays up) and each cache lists again.
            log = work / "kubespiffed.log"
            offset = log.stat().st_size
            begin = time.time_ns()
            trace_task = asyncio.create_task(cpu_trace(daemon, 30))
            minting = asyncio.create_task(paced_mint(client, daemon, work, args.rate, 30))
            await asyncio.sleep(10)
            reset_at = time.time_ns()
            reset = reset_connections(daemon, plane)
            samples = await minting
            trace = await trace_task
            relists = relist_lines(log, offset)
            report(
                f"issuance, {reset} API connections reset, {len(relists)} watches relist (30 s)",
                describe(samples),
                "no stall",
            )
            during = [s for s in samples if reset_at <= s["start_ns"] < reset_at + RELIST_WINDOW * 1e9]
            label = f"  issuance in the {RELIST_WINDOW:.0f} s after the reset (the relist)"
            report(label, describe(during), "no stall")
            report("  worst second", worst(samples), "(reset at +10 s)")
            for line in relist_lines(log, offset, "podview listed"):
                print(f"  kubespiffed: {line.split(' INFO ', 1)[-1]}")
            report("  kubespiffed CPU per 0.5 s", cpu_summary(trace, begin), "")
            rss, pss, count = memory(daemon)
            report("kubespiffed RSS after the relist", f"{rss:.0f} MB (PSS {pss:.0f} MB)", "<= 150 MB")
            report("kubespiffed peak RSS (VmHWM) so far", f"{peak_rss_mb(daemon):.0f} MB", "<= 150 MB")

            # The relist an API server restart forces (an upgrade): every watch breaks at once.
            log = work / "kubespiffed.log"
            offset = log.stat().st_size
            minting = asyncio.create_task(paced_mint(client, daemon, work, args.rate, args.downtime + 40))
            await asyncio.sleep(5)
            restart_at = time.time_ns()
            back = await asyncio.to_thread(restart_apiserver, plane, args.downtime, plane.dir / "admin")
            samples = await minting
            window = [s for s in samples if s["start_ns"] >= restart_at]
            report(
                f"issuance, kube-apiserver restarted ({args.downtime:.0f} s down, ready after {back:.1f} s)",
                describe(window),
                "no stall",
            )
            report("  worst second", worst(window), "")
            assert daemon.process is not None
            if daemon.process.poll() is not None:
                report(
                    f"  kubespiffed EXITED (code {daemon.process.returncode})", exit_cause(log, offset), ""
                )
            else:
                rss, pss, count = memory(daemon)
                report("kubespiffed RSS after the restart", f"{rss:.0f} MB (PSS {pss:.0f} MB)", "<= 150 MB")
                report("kubespiffed peak RSS (VmHWM)", f"{peak_rss_mb(daemon):.0f} MB", "<= 150 MB")
            print(f"kubespiffed log lines about watches after the restart: {len(relist_lines(log, offset))}")
            print(f"load average at the end: {os.getloadavg()[0]:.1f} (other work here skews figures)")
        finally:
            daemon.stop()
            await kube.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pods", type=int, default=10000, help="pods (max 20000)")
    parser.add_argument("--registrations", type=int, default=1000, help="registrations (max 5000)")
    parser.add_argument("--rate", type=float, default=100, help="issuances per second (max 1000)")
    parser.add_argument("--seconds", type=float, default=20, help="steady-state measurement (max 120)")
    parser.add_argument("--workers", type=int, default=1, help="kubespiffed --workers (max 16)")
    parser.add_argument(
        "--downtime", type=float, default=3, help="seconds kube-apiserver stays down (max 30)"
    )
    cli = parser.parse_args()
    cli.pods, cli.registrations = min(cli.pods, 20000), min(cli.registrations, 5000)
    cli.rate, cli.seconds, cli.downtime = min(cli.rate, 1000), min(cli.seconds, 120), min(cli.downtime, 30)
    cli.workers = min(cli.workers, 16)
    with work_directory("kubespiffe-scale-") as work:
        asyncio.run(main(cli, work))
