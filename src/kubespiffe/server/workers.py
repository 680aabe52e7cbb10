"""`--workers N`: the issuer API served by N processes that share its port.

Why processes: a MintX509SVID call spends nearly all its time holding the GIL (gRPC's asyncio layer,
verifying the CSR, building and signing the leaf), so one process signs with one core at most. Each worker
binds the issuer API's port with SO_REUSEPORT (grpc sets it on Linux by default) and the kernel spreads
new connections over the processes listening; a connection, and so an agent, stays with one process.
The kernel picks by a hash of the connection's addresses, not by load: 16 connections over 2 processes
came out 12/4, 11/5, 9/7 in bench/issuance.py, and the busier process's callers wait longer (its p99),
since each process gets about an equal share of the CPU. Many agents even this out; a few busy ones do not.
Handing the CSR check to a thread (cryptography releases the GIL there) cost about 200 us more CPU per
call than it freed, so each call stays on its process's event loop.

The first process, the primary, is kubespiffed as with one worker: it creates or loads the authority,
takes part in leader election, and alone does the Lease holder's work (rotation, status, ConfigMaps,
federation fetches, the webhook's caBundle, pod certificates) and serves the HTTPS endpoints. It then
starts N-1 workers (`python -c '...workers import main; main()'`) that only serve the issuer API: each follows
the authority Secret, watches pods, namespaces, ServiceAccounts, registrations and FederatedTrustDomains
itself and verifies tokens itself, so memory grows with N (docs/concepts.md gives figures).

A worker reads its settings pickled on stdin, from the primary over a private pipe, and keeps stdin open:
end of file means the primary is gone, and the worker stops, so no orphan keeps answering on the port with
keys it no longer follows. It writes `ready` on stdout once its caches are synced and its port is bound
(no connection reaches it before), then its metrics every 5 s: the primary's /metrics carries every
process's samples, labelled `worker` (0 for the primary). A worker that exits is started again after
`RESTART_DELAY`; one that exits before it was ready `MAX_START_FAILURES` times in a row stops kubespiffed
(WorkerFailed), since a worker that cannot start will not start on the next try either. SIGTERM to the
primary stops the workers first, each with the same 5 s grace for calls in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import sys

from prometheus_client import REGISTRY, Counter, disable_created_metrics, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector, CollectorRegistry

from kubespiffe.errors import KubespiffeError
from kubespiffe.server.config import ServerConfig

log = logging.getLogger("kubespiffed.workers")

RESTART_DELAY = 1.0
MAX_START_FAILURES = 3
STOP_TIMEOUT = 10.0
READY = b"ready\n"
METRICS_INTERVAL = 5.0

RESTARTS = Counter("kubespiffe_worker_restarts_total", "issuer API worker processes started again")


class WorkerFailed(KubespiffeError):
    """A worker process cannot start; kubespiffed stops rather than retrying forever."""


class WorkerPool:
    """Workers 1..count (the primary is worker 0), kept running until `stop`."""

    def __init__(self, config: ServerConfig, count: int) -> None:
        self._config = config
        self._count = count
        self._processes: dict[int, asyncio.subprocess.Process] = {}
        self._stopping = False
        self.ready: dict[int, int] = {}
        """Worker index -> pid of its process, once ready."""
        self.metrics: dict[int, bytes] = {}
        """Worker index -> its latest metrics (text exposition), sent every METRICS_INTERVAL."""

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            for index in range(1, self._count + 1):
                group.create_task(self._keep(index))

    async def _keep(self, index: int) -> None:
        failures = 0
        while not self._stopping:
            process = await self._start(index)
            assert process.stdout is not None
            line = await process.stdout.readline()
            if line == READY:
                failures = 0
                self.ready[index] = process.pid
                log.info("worker %d ready pid=%d", index, process.pid)
                await self._read_metrics(index, process.stdout)
            code = await process.wait()
            self.ready.pop(index, None)
            self.metrics.pop(index, None)
            self._processes.pop(index, None)
            if self._stopping:
                return
            if line != READY:
                failures += 1
                if failures >= MAX_START_FAILURES:
                    raise WorkerFailed(f"worker {index} exited before it was ready {failures} times")
            log.error(
                "worker %d (pid %d) exited with %s; starting it again in %.0f s",
                index,
                process.pid,
                code,
                RESTART_DELAY,
            )
            RESTARTS.inc()
            await asyncio.sleep(RESTART_DELAY)

    async def _read_metrics(self, index: int, stdout: asyncio.StreamReader) -> None:
        """Frames `metrics <length>` + text, until the worker's stdout ends (it exited)."""
        while header := await stdout.readline():
            name, _, size = header.partition(b" ")
            if name != b"metrics" or not size.strip().isdigit():
                log.error("worker %d wrote %r on its control pipe; ignoring the rest", index, header[:40])
                await stdout.read()
                return
            try:
                self.metrics[index] = await stdout.readexactly(int(size))
            except asyncio.IncompleteReadError:  # it exited mid-frame
                return

    def exposition(self) -> bytes:
        """/metrics for the whole replica: each family once, the primary's samples with worker="0" and
        each worker's (as last sent) with its index, so sums over `worker` count every process."""
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Merged(self.metrics))
        return generate_latest(registry)

    async def _start(self, index: int) -> asyncio.subprocess.Process:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",  # not `-m` this module: it would run as __main__ and be imported a second time by app
            "from kubespiffe.server.workers import main; main()",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            # Its own process group: a terminal's Ctrl-C reaches the primary only, which then stops the
            # workers. The primary's session still: where the kernel groups CPU time by session
            # (sched_autogroup, processes outside any CPU cgroup), N workers in N sessions took N shares.
            process_group=0,
        )
        assert process.stdin is not None
        payload = pickle.dumps((index, self._config))
        process.stdin.write(len(payload).to_bytes(8, "big") + payload)
        await process.stdin.drain()
        self._processes[index] = process
        return process

    async def stop(self) -> None:
        """SIGTERM to every worker; each gets its grace, then SIGKILL after STOP_TIMEOUT."""
        self._stopping = True
        processes = list(self._processes.values())
        for process in processes:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
        for process in processes:
            try:
                await asyncio.wait_for(process.wait(), STOP_TIMEOUT)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()


class _Merged(Collector):
    def __init__(self, workers: dict[int, bytes]) -> None:
        self._workers = dict(workers)

    def collect(self) -> list[Metric]:
        families = {family.name: family for family in REGISTRY.collect()}
        for family in families.values():
            family.samples = [s._replace(labels={**s.labels, "worker": "0"}) for s in family.samples]
        for index, text in sorted(self._workers.items()):
            for family in text_string_to_metric_families(text.decode()):
                merged = families.setdefault(
                    family.name, Metric(family.name, family.documentation, family.type)
                )
                label = str(index)
                merged.samples += [s._replace(labels={**s.labels, "worker": label}) for s in family.samples]
        return list(families.values())


async def publish_metrics() -> None:
    """A worker's metrics to the primary on stdout, every METRICS_INTERVAL (after `announce_ready`).

    Never blocks the worker: a snapshot the primary has not read yet is not followed by another."""
    loop = asyncio.get_running_loop()
    transport, _ = await loop.connect_write_pipe(asyncio.Protocol, sys.stdout)
    while True:
        if not transport.get_write_buffer_size():
            text = generate_latest()
            transport.write(b"metrics %d\n" % len(text) + text)
        await asyncio.sleep(METRICS_INTERVAL)


async def primary_gone() -> None:
    """Returns when stdin, the pipe from the primary, reaches end of file: the primary exited."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while await reader.read(4096):
        pass


def announce_ready() -> None:
    sys.stdout.buffer.write(READY)
    sys.stdout.buffer.flush()


def _read_exactly(size: int) -> bytes:
    """From stdin, unbuffered, so nothing past the settings is consumed before `primary_gone` reads."""
    data = b""
    while len(data) < size:
        chunk = os.read(sys.stdin.fileno(), size - len(data))
        if not chunk:
            raise SystemExit("kubespiffed worker: stdin ended before the settings (start it with --workers)")
        data += chunk
    return data


def main() -> None:
    """A worker: settings from stdin (never a terminal: only the primary starts workers)."""
    size = int.from_bytes(_read_exactly(8), "big")
    index, config = pickle.loads(_read_exactly(size))  # noqa: S301 (the primary's own pipe)
    if not isinstance(config, ServerConfig) or not isinstance(index, int):
        raise SystemExit("kubespiffed worker: stdin must carry (index, ServerConfig) from the primary")
    logging.basicConfig(
        level=os.environ.get("KUBESPIFFED_LOG_LEVEL", "INFO").upper(),
        format=f"%(asctime)s %(levelname)s %(name)s worker={index} %(message)s",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpx2").setLevel(logging.WARNING)
    # `_created` samples would come back from the text format as families of their own.
    disable_created_metrics()  # type: ignore[no-untyped-call]
    from kubespiffe.server.app import run_worker  # app imports this module

    asyncio.run(run_worker(config, index))
