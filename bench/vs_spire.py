"""kubespiffe next to SPIRE 1.13.3 here: one API server, one client, the same TTLs, rounds alternating.

    .venv/bin/python bench/vs_spire.py [--short-rounds 5] [--long-rounds 3] [--requests 2000]

Not part of the test suite. It builds spire-server and spire-agent v1.13.3 from the Go module under
tools/spire (`go get -tool`; cached in ~/.cache/kubespiffe/spire/<version>-<hash>, about 6 minutes cold on
2 cores) and the go-spiffe client under tools/benchclient, then runs on loopback only:

- one local control plane (etcd + kube-apiserver, kubespiffe.devenv) that both sides use;
- kubespiffed (as `kubespiffe dev up` runs it) and one kubespiffe agent process per pod;
- spire-server (SQLite datastore, `memory` key manager, k8s_psat node attestation against that API server
  with the admin kubeconfig, rate limits off) and spire-agent (k8s_psat with a pod-bound token of audience
  `spire-server` for a Node object, `memory` key manager, `unix` workload attestor).

Both issue X.509-SVIDs for 1h and JWT-SVIDs for 5m (kubespiffed's defaults) with P-256 keys. What differs:
- no kubelet, so SPIRE's agent attests workloads with `unix` (uid from SO_PEERCRED and /proc), not `k8s`
  (which asks the kubelet for the node's pods); a real SPIRE deployment adds the kubelet query. SPIRE's
  agent runs once per node and attests every caller; kubespiffe's agent runs in the pod and attests nobody.
- SPIRE registrations are created directly through its admin API (no spire-controller-manager, which
  would add its own reconcile delay); kubespiffe's are WorkloadRegistration objects in the API server.
- SPIRE's CA lives 24h (its default), kubespiffe's 1 year (its default); neither rotates during a run.
Both sides log at WARN (SPIRE's `log_level`, kubespiffe's KUBESPIFFED_LOG_LEVEL/KUBESPIFFE_LOG_LEVEL):
kubespiffed's default INFO writes one line per issuance (about 8% of its CPU per call at 16 clients),
SPIRE logs a signed SVID at DEBUG.

Metrics, each measured by the same go-spiffe program (tools/benchclient) against each side in turn:
- registration -> SVID: a new workload polls its Workload API socket every 20 ms (FetchX509SVID with a new
  client each time) for W seconds without an identity, then its registration is created; the time from
  the create call to the first response carrying the new SPIFFE ID. Short waits W in 2-12 s, long 65-98 s
  (the long rounds of both sides run concurrently, starts staggered). SPIRE's new workload is a process
  under a fresh uid (selector unix:uid:N) on the running agent; kubespiffe's is a new pod with its own
  agent process started at the beginning of W.
- cached FetchX509SVID (a new stream's first message) and FetchJWTSVID (one audience) on one connection.
- X.509 mint: the call an agent makes to its server for one new X.509-SVID, from N clients each with its
  own connection, one reused P-256 CSR. SPIRE: svid.v1 BatchNewX509SVID with one entry, over mTLS with an
  agent SVID (the client attests itself with k8s_psat first, as a second agent on its own Node). kubespiffe:
  issuer MintX509SVID over TLS with the pod's token as bearer token (token verified, pod looked up,
  registrations matched, leaf signed).
- JWT mint through the Workload API: FetchJWTSVID with a new audience on every call, so each agent must
  have its server sign one (SPIRE: agent -> NewJWTSVID; kubespiffe: agent -> MintJWTSVID).
- cold start: agent process exec -> first X.509-SVID served to the workload. SPIRE's agent re-attests at
  every start (k8s_psat; in-memory keys) and syncs; kubespiffe's agent starts the interpreter, imports,
  mints. The driver records exec time, the client (already polling every 2 ms) the time it saw the SVID.
- memory: RSS and PSS (/proc/PID/smaps_rollup) of every process after the load above.

The last figures, with the machine and the commit they came from, are in README.md (Benchmarks).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import platform
import random
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightkube import AsyncClient, KubeConfig
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Node
from stack import percentiles, work_directory  # bench/stack.py (benchmarks run as scripts)

from kubespiffe.devenv.build import cache_root, ensure_tool, repo_root
from kubespiffe.devenv.controlplane import ControlPlane, free_port
from kubespiffe.devenv.stack import Kubespiffed, agent_command, authority_bundle_pem, install
from kubespiffe.devenv.stack import service_account_token as kubespiffed_token
from kubespiffe.devenv.workloads import create_pod, ensure_namespace, pod_token
from kubespiffe.kube.client import WorkloadRegistration
from kubespiffe.proto import issuer_pb2

SPIRE_VERSION = "v1.13.3"
TRUST_DOMAIN = "example.org"
CLUSTER = "bench"
SPIRE_NAMESPACE = "spire"
SPIRE_SA = "spire-agent"
X509_TTL, JWT_TTL = "1h", "5m"  # kubespiffed's defaults
WORKLOAD_UID_BASE = 40000  # SPIRE's new workloads run as uid BASE+i


class Skip(Exception):
    """SPIRE cannot be had on this machine (no Go, or the module proxy is not reachable)."""


def _go_env(cgo: bool) -> dict[str, str]:
    return {**os.environ, "CGO_ENABLED": "1" if cgo else "0", "GOFLAGS": "-mod=mod"}


def _go_build(module_dir: Path, packages: Sequence[str], output: Path, cgo: bool) -> None:
    cmd = ["go", "build", "-trimpath", "-ldflags", "-s -w", "-o", str(output), *packages]
    result = subprocess.run(cmd, cwd=module_dir, env=_go_env(cgo), capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"go build {' '.join(packages)} failed:\n{result.stderr[-3000:]}")


def spire_binaries() -> tuple[Path, Path]:
    """spire-server and spire-agent from tools/spire, built once per go.mod/go.sum (CGO: SQLite)."""
    module_dir = repo_root() / "tools" / "spire"
    digest = hashlib.sha256((module_dir / "go.mod").read_bytes() + (module_dir / "go.sum").read_bytes())
    target = cache_root() / "spire" / f"{SPIRE_VERSION}-{digest.hexdigest()[:12]}"
    server, agent = target / "spire-server", target / "spire-agent"
    if server.exists() and agent.exists():
        return server, agent
    if shutil.which("go") is None:
        raise Skip("`go` is not on PATH; SPIRE is built from its Go module")
    module = f"github.com/spiffe/spire@{SPIRE_VERSION}"
    download = subprocess.run(
        ["go", "mod", "download", module], cwd=module_dir, env=_go_env(True), capture_output=True, text=True
    )
    if download.returncode != 0:
        raise Skip(f"the Go module {module} is not reachable: {download.stderr.strip()[-500:]}")
    print(f"building spire-server and spire-agent {SPIRE_VERSION} (first run only, minutes) ...", flush=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".building-"))
    try:
        packages = [f"github.com/spiffe/spire/cmd/{name}" for name in ("spire-server", "spire-agent")]
        _go_build(module_dir, packages, staging, cgo=True)
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return server, agent


def bench_client() -> Path:
    """tools/benchclient (go-spiffe), built once per source hash."""
    return ensure_tool("benchclient", "spiffe-bench")


def memory_mb(pid: int) -> tuple[float, float]:
    """RSS and PSS of one process in MB (smaps_rollup: PSS splits shared pages among their users)."""
    values = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("Rss", "Pss"):
            values[name] = int(rest.split()[0]) / 1024
    return values["Rss"], values["Pss"]


def tree_memory_mb(pid: int) -> tuple[float, float, int]:
    """RSS and PSS summed over `pid` and its descendants, and how many processes that was."""
    values = []
    for member in descendants(pid):
        try:
            values.append(memory_mb(member))
        except OSError:  # exited meanwhile
            continue
    return sum(r for r, _ in values), sum(p for _, p in values), len(values)


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it (kubespiffed may serve with worker processes)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(parents.get(current, []))
    return found


def processes_mentioning(text: str) -> list[int]:
    """Processes whose command line contains `text` (the control plane's private directory)."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text in cmdline.read_bytes().decode(errors="replace"):
                pids.append(int(cmdline.parent.name))
        except OSError:
            continue
    return [pid for pid in pids if pid != os.getpid()]


@dataclass
class Processes:
    """Every process this benchmark starts, stopped in reverse order whatever happens."""

    running: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, args: Sequence[str], log: Path, **kwargs: Any) -> subprocess.Popen[bytes]:
        """Each in a session of its own, as kubespiffed is (devenv): where the kernel shares CPU time
        out by session (sched_autogroup), each server then gets a share of its own, as its pod's cgroup
        would give it, rather than one shared with the benchmark's client."""
        with log.open("ab") as out:
            proc = subprocess.Popen(
                list(args),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                **kwargs,
            )
        self.running.append(proc)
        return proc

    @staticmethod
    def stop(proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def stop_all(self) -> None:
        for proc in reversed(self.running):
            self.stop(proc)


async def run_client(
    client: Path, *args: str, user: int | None = None, timeout: float = 300
) -> dict[str, Any]:
    """Run one benchclient subcommand and return its JSON document."""
    proc = await asyncio.create_subprocess_exec(
        str(client), *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, user=user
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"spiffe-bench {args[0]} failed: {err.decode().strip()}")
    result: dict[str, Any] = json.loads(out)
    return result


@dataclass
class Spire:
    server: Path
    agent: Path
    work: Path
    port: int = field(default_factory=free_port)
    agent_proc: subprocess.Popen[bytes] | None = None

    @property
    def admin_socket(self) -> Path:
        return self.work / "spire-server" / "api.sock"

    @property
    def socket(self) -> Path:
        return self.work / "spire-agent" / "api.sock"

    @property
    def bundle(self) -> Path:
        return self.work / "spire-bundle.pem"

    @staticmethod
    def agent_id(node_uid: str) -> str:
        return f"spiffe://{TRUST_DOMAIN}/spire/agent/k8s_psat/{CLUSTER}/{node_uid}"

    def write_configs(self, kubeconfig: Path, token_file: Path) -> None:
        (self.work / "spire-server").mkdir(mode=0o755)
        (self.work / "spire-agent").mkdir(mode=0o755)
        (self.work / "spire-server.conf").write_text(f"""
server {{
  bind_address = "127.0.0.1"
  bind_port = "{self.port}"
  socket_path = "{self.admin_socket}"
  trust_domain = "{TRUST_DOMAIN}"
  data_dir = "{self.work / "spire-server"}"
  log_level = "WARN"
  ca_key_type = "ec-p256"
  jwt_key_type = "ec-p256"
  default_x509_svid_ttl = "{X509_TTL}"
  default_jwt_svid_ttl = "{JWT_TTL}"
  ratelimit {{
    attestation = false
    signing = false
  }}
}}
plugins {{
  DataStore "sql" {{
    plugin_data {{
      database_type = "sqlite3"
      connection_string = "{self.work / "spire-server" / "datastore.sqlite3"}"
    }}
  }}
  KeyManager "memory" {{
    plugin_data {{}}
  }}
  NodeAttestor "k8s_psat" {{
    plugin_data {{
      clusters = {{
        "{CLUSTER}" = {{
          service_account_allow_list = ["{SPIRE_NAMESPACE}:{SPIRE_SA}"]
          kube_config_file = "{kubeconfig}"
        }}
      }}
    }}
  }}
}}
""")
        (self.work / "spire-agent.conf").write_text(f"""
agent {{
  data_dir = "{self.work / "spire-agent"}"
  log_level = "WARN"
  server_address = "127.0.0.1"
  server_port = "{self.port}"
  socket_path = "{self.socket}"
  trust_bundle_path = "{self.bundle}"
  trust_domain = "{TRUST_DOMAIN}"
}}
plugins {{
  NodeAttestor "k8s_psat" {{
    plugin_data {{
      cluster = "{CLUSTER}"
      token_path = "{token_file}"
    }}
  }}
  KeyManager "memory" {{
    plugin_data {{}}
  }}
  WorkloadAttestor "unix" {{
    plugin_data {{}}
  }}
}}
""")

    def start_server(self, procs: Processes) -> subprocess.Popen[bytes]:
        proc = procs.start(
            [str(self.server), "run", "-config", str(self.work / "spire-server.conf")],
            self.work / "spire-server.log",
        )
        deadline = time.monotonic() + 60
        while True:
            check = subprocess.run(
                [str(self.server), "healthcheck", "-socketPath", str(self.admin_socket)], capture_output=True
            )
            if check.returncode == 0:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"spire-server did not become healthy; see {self.work / 'spire-server.log'}"
                )
            time.sleep(0.2)
        bundle = subprocess.run(
            [str(self.server), "bundle", "show", "-socketPath", str(self.admin_socket)],
            capture_output=True,
            check=True,
        )
        self.bundle.write_bytes(bundle.stdout)
        return proc

    def start_agent(self, procs: Processes) -> subprocess.Popen[bytes]:
        self.socket.unlink(missing_ok=True)
        self.agent_proc = procs.start(
            [str(self.agent), "run", "-config", str(self.work / "spire-agent.conf")],
            self.work / "spire-agent.log",
        )
        return self.agent_proc


@dataclass
class Bench:
    client: Path
    kube: AsyncClient
    plane: ControlPlane
    daemon: Kubespiffed
    spire: Spire
    procs: Processes
    work: Path
    ks_bundle: Path
    agent_a: str  # SPIRE agent ID of the node its agent runs on
    ks_agent: subprocess.Popen[bytes] | None = None
    spire_server: subprocess.Popen[bytes] | None = None
    serial: int = 0

    @property
    def ks_socket(self) -> Path:
        return self.work / "ks-agent.sock"

    def start_ks_agent(self, token_file: Path, socket: Path, log: str) -> subprocess.Popen[bytes]:
        socket.unlink(missing_ok=True)
        return self.procs.start(
            agent_command(self.daemon.address, token_file, self.ks_bundle, socket), self.work / log
        )

    async def wait_id(
        self, socket: Path, spiffe_id: str, *, user: int | None = None, poll: str = "20ms"
    ) -> asyncio.Task[dict[str, Any]]:
        """Start a polling client in the background; the task's result is its JSON document."""
        return asyncio.create_task(
            run_client(
                self.client,
                "wait-id",
                "-socket",
                f"unix://{socket}",
                "-id",
                spiffe_id,
                "-poll",
                poll,
                "-timeout",
                "150s",
                user=user,
                timeout=160,
            )
        )

    # --- registration -> SVID ---------------------------------------------------------------------------

    async def spire_registration(self, wait: float) -> float:
        self.serial += 1
        uid = WORKLOAD_UID_BASE + self.serial
        spiffe_id = f"spiffe://{TRUST_DOMAIN}/workload-{self.serial}"
        waiter = await self.wait_id(self.spire.socket, spiffe_id, user=uid)
        await asyncio.sleep(wait)
        created = await run_client(
            self.client,
            "spire-entry",
            "-socket",
            f"unix://{self.spire.admin_socket}",
            "-id",
            spiffe_id,
            "-parent",
            self.agent_a,
            "-selector",
            f"unix:uid:{uid}",
        )
        seen = await waiter
        return float(seen["seen_ns"] - created["created_ns"]) / 1e9

    async def ks_registration(self, wait: float) -> float:
        self.serial += 1
        namespace = f"workload-{self.serial}"
        await ensure_namespace(self.kube, namespace)
        pod = await create_pod(self.kube, namespace, "app-0", "app")
        token_file = self.work / f"{namespace}.token"
        token_file.write_text(await pod_token(self.kube, pod))
        socket = self.work / f"{namespace}.sock"
        agent = self.start_ks_agent(token_file, socket, f"{namespace}-agent.log")
        try:
            waiter = await self.wait_id(socket, f"spiffe://{TRUST_DOMAIN}/ns/{namespace}/sa/app")
            await asyncio.sleep(wait)
            created = time.time_ns()
            await self.kube.create(
                WorkloadRegistration(metadata=ObjectMeta(name="app", namespace=namespace), spec={})
            )
            seen = await waiter
        finally:
            self.procs.stop(agent)
        return float(seen["seen_ns"] - created) / 1e9

    # --- cold start ---------------------------------------------------------------------------------------

    async def cold_start(self, side: str, token_file: Path) -> float:
        if side == "spire":
            assert self.spire.agent_proc is not None
            self.procs.stop(self.spire.agent_proc)
            socket, spiffe_id = self.spire.socket, f"spiffe://{TRUST_DOMAIN}/bench"
        else:
            assert self.ks_agent is not None
            self.procs.stop(self.ks_agent)
            socket, spiffe_id = self.ks_socket, f"spiffe://{TRUST_DOMAIN}/ns/bench/sa/bench"
        socket.unlink(missing_ok=True)
        waiter = await self.wait_id(socket, spiffe_id, poll="2ms")
        await asyncio.sleep(0.5)  # the client is up and polling before the clock starts
        started = time.time_ns()
        if side == "spire":
            self.spire.start_agent(self.procs)
        else:
            self.ks_agent = self.start_ks_agent(token_file, self.ks_socket, "ks-agent.log")
        seen = await waiter
        return float(seen["seen_ns"] - started) / 1e9


def process_tree_cpu(pid: int) -> float:
    """User + system seconds of `pid` and its descendants (kubespiffed's workers) so far."""
    total = 0.0
    for member in descendants(pid):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


async def metered_client(
    client: Path, server_pid: int, *args: str, port: int | None = None
) -> dict[str, Any]:
    """`run_client` for a mint command, plus the CPU the server (its process tree) and the client spent
    per call and how busy the whole machine was meanwhile. The client's CPU includes its setup (one
    handshake per connection, SPIRE's node attestation), a small share of thousands of calls.

    Also per call: the client's context switches, and the TCP segments sent on the machine (both ends,
    plus the control plane's own traffic, a few hundred a second). The same Go client spends more CPU
    per call against one server than another when it is woken more often per call.

    With `port`, also how the client's connections to it were spread over the server's processes, read
    once the run is under way: the kernel spreads connections over kubespiffed's --workers processes
    (SO_REUSEPORT) by a hash, so one process may serve 11 of 16 clients and the other 5."""
    cpu, busy, segments = process_tree_cpu(server_pid), machine_busy(), tcp_segments_sent()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    running = asyncio.create_task(run_client(client, *args))
    spread: list[int] = []
    if port is not None:
        await asyncio.wait([running], timeout=0.3)  # every client connected (each makes a first call)
        spread = connections_per_process(server_pid, port)
    result = await running
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy_after = machine_busy()
    calls = int(result["calls"])
    result["server_us_per_call"] = (process_tree_cpu(server_pid) - cpu) / calls * 1e6
    client_cpu = (after.ru_utime - children.ru_utime) + (after.ru_stime - children.ru_stime)
    result["client_us_per_call"] = client_cpu / calls * 1e6
    result["machine_busy"] = (busy_after[0] - busy[0]) / max(1, busy_after[1] - busy[1])
    result["connections_per_process"] = spread
    switches = (after.ru_nvcsw - children.ru_nvcsw) + (after.ru_nivcsw - children.ru_nivcsw)
    result["client_switches_per_call"] = switches / calls
    result["segments_per_call"] = (tcp_segments_sent() - segments) / calls
    return result


def tcp_segments_sent() -> int:
    """TCP segments this network namespace has sent (/proc/net/snmp OutSegs): on loopback, both ends'."""
    header, values = (
        line.split() for line in Path("/proc/net/snmp").read_text().splitlines() if line.startswith("Tcp:")
    )
    return int(values[header.index("OutSegs")])


def connections_per_process(pid: int, port: int) -> list[int]:
    """Established connections to local `port` held by each process of `pid`'s tree, most first."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "01" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # ESTABLISHED
                    inodes.add(f"socket:[{fields[9]}]")
    counts = []
    for member in descendants(pid):
        held = 0
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{member}/fd").iterdir():
                with contextlib.suppress(OSError):
                    held += os.readlink(fd) in inodes
        if held:
            counts.append(held)
    return sorted(counts, reverse=True)


def _cpu_cell(runs: list[dict[str, Any]]) -> str:
    def med(key: str) -> float:
        return statistics.median(float(r[key]) for r in runs)

    return f"{med('server_us_per_call'):.0f} + {med('client_us_per_call'):.0f} ({med('machine_busy'):.0%})"


def _wakeups_cell(runs: list[dict[str, Any]]) -> str:
    def med(key: str) -> float:
        return statistics.median(float(r[key]) for r in runs)

    return f"{med('client_switches_per_call'):.1f} / {med('segments_per_call'):.1f}"


def summary(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
    return f"{statistics.median(values) * scale:.{digits}f} / {max(values) * scale:.{digits}f}"


def ratio(spire: float, ks: float) -> str:
    return f"{ks / spire:.2f}" if spire else "-"


def machine() -> str:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    mem = int(Path("/proc/meminfo").read_text().split()[1]) // (1024 * 1024)
    git = ["git", "-C", str(repo_root())]
    commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout
    dirty = subprocess.run([*git, "status", "--porcelain", "src"], capture_output=True, text=True).stdout
    state = " + uncommitted changes in src/" if dirty.strip() else ""
    try:
        grouped = Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip() == "1"
    except OSError:
        grouped = False
    return (
        f"{model}, {os.cpu_count()} cores, {mem} GB, Linux {platform.release()}"
        f"{' (CPU shared by session: sched_autogroup)' if grouped else ''}, "
        f"kubespiffe {commit.strip() or '?'}{state}"
    )


async def setup_and_run(
    args: argparse.Namespace, server_bin: Path, agent_bin: Path, client: Path, work: Path
) -> None:
    work.chmod(0o755)  # SPIRE's per-round workloads run under their own uids and need the sockets
    # A copy the per-round uids can execute (the cache under ~ may not be traversable for them).
    shutil.copy2(client, work / "spiffe-bench")
    client = work / "spiffe-bench"
    procs = Processes()
    # The same log level as SPIRE's configuration (WARN) for kubespiffed, its workers and the agents.
    os.environ.update(KUBESPIFFED_LOG_LEVEL="WARNING", KUBESPIFFE_LOG_LEVEL="WARNING")
    with ControlPlane("vs-spire", log_dir=work) as plane:
        kubeconfig = work / "admin.kubeconfig"
        kubeconfig.write_text(plane.admin_kubeconfig())
        kube = AsyncClient(KubeConfig.from_file(kubeconfig))
        daemon = Kubespiffed(plane, extra_args=(f"--workers={args.workers}",))
        try:
            await install(kube)
            daemon.start(await kubespiffed_token(kube))
            ks_bundle = work / "ks-bundle.pem"
            ks_bundle.write_bytes(await authority_bundle_pem(kube))
            await asyncio.to_thread(daemon.wait_ready, ks_bundle.read_bytes())
            await ensure_namespace(kube, "bench")
            await kube.create(
                WorkloadRegistration(metadata=ObjectMeta(name="bench", namespace="bench"), spec={})
            )
            ks_token = work / "ks.token"
            ks_token.write_text(
                await pod_token(
                    kube, await create_pod(kube, "bench", "bench-0", "bench"), expiration_seconds=3600
                )
            )

            await ensure_namespace(kube, SPIRE_NAMESPACE)
            nodes, tokens = {}, {}
            for name in ("node-a", "node-b"):
                node = await kube.create(Node(metadata=ObjectMeta(name=name)))
                assert node.metadata is not None and node.metadata.uid is not None
                nodes[name] = node.metadata.uid
                pod = await create_pod(kube, SPIRE_NAMESPACE, f"spire-agent-{name}", SPIRE_SA, node_name=name)
                tokens[name] = work / f"spire-{name}.token"
                tokens[name].write_text(await pod_token(kube, pod, "spire-server", 3600))
            spire = Spire(server_bin, agent_bin, work)
            spire.write_configs(kubeconfig, tokens["node-a"])
            bench = Bench(
                client, kube, plane, daemon, spire, procs, work, ks_bundle, Spire.agent_id(nodes["node-a"])
            )
            bench.spire_server = spire.start_server(procs)
            uid = os.getuid()
            for spiffe_id, parent in (
                (f"spiffe://{TRUST_DOMAIN}/bench", bench.agent_a),
                (f"spiffe://{TRUST_DOMAIN}/bench-mint", Spire.agent_id(nodes["node-b"])),
            ):
                await run_client(
                    client,
                    "spire-entry",
                    "-socket",
                    f"unix://{spire.admin_socket}",
                    "-id",
                    spiffe_id,
                    "-parent",
                    parent,
                    "-selector",
                    f"unix:uid:{uid}",
                )
            spire.start_agent(procs)
            bench.ks_agent = bench.start_ks_agent(ks_token, bench.ks_socket, "ks-agent.log")
            for socket, spiffe_id in (
                (spire.socket, f"spiffe://{TRUST_DOMAIN}/bench"),
                (bench.ks_socket, f"spiffe://{TRUST_DOMAIN}/ns/bench/sa/bench"),
            ):
                await (await bench.wait_id(socket, spiffe_id))
            print(f"both sides serve SVIDs; work directory {work}", flush=True)
            await measure(bench, args, ks_token, tokens["node-b"])
        finally:
            procs.stop_all()
            daemon.stop()
            await kube.close()


async def measure(bench: Bench, args: argparse.Namespace, ks_token: Path, mint_token: Path) -> None:
    rows: list[tuple[str, str, str, str]] = []
    sides = ("spire", "kubespiffe")

    cold: dict[str, list[float]] = {side: [] for side in sides}
    fetch: dict[str, dict[str, list[float]]] = {side: {"x509_ms": [], "jwt_ms": []} for side in sides}
    if not args.mint_only:
        for _ in range(args.cold_rounds):
            for side in sides:
                cold[side].append(await bench.cold_start(side, ks_token))
        print(f"cold start done: {cold}", flush=True)
        for _ in range(2):
            for side, socket in (("spire", bench.spire.socket), ("kubespiffe", bench.ks_socket)):
                result = await run_client(
                    bench.client, "fetch-loop", "-socket", f"unix://{socket}", "-n", str(args.fetches)
                )
                for key in ("x509_ms", "jwt_ms"):
                    fetch[side][key].extend(v / 1000 for v in result[key])

    descriptor = bench.work / "issuer.desc"
    descriptor.write_bytes(issuer_pb2.DESCRIPTOR.serialized_pb)
    mint_x509: dict[tuple[str, int], list[dict[str, Any]]] = {}
    mint_jwt: dict[tuple[str, int], list[dict[str, Any]]] = {}
    spire_addr = f"127.0.0.1:{bench.spire.port}"
    assert bench.spire_server is not None and bench.daemon.process is not None
    servers = {"spire": bench.spire_server.pid, "kubespiffe": bench.daemon.process.pid}
    spire_mint = (
        "spire-mint",
        "-addr",
        spire_addr,
        "-bundle",
        str(bench.spire.bundle),
        "-token-file",
        str(mint_token),
        "-cluster",
        CLUSTER,
    )
    ks_mint = (
        "issuer-mint",
        "-addr",
        bench.daemon.address,
        "-bundle",
        str(bench.ks_bundle),
        "-token-file",
        str(ks_token),
        "-descriptor",
        str(descriptor),
    )
    for clients in (1, 4, 16):
        for _ in range(args.mint_rounds):
            for side, command in (("spire", spire_mint), ("kubespiffe", ks_mint)):
                mint_x509.setdefault((side, clients), []).append(
                    await metered_client(
                        bench.client,
                        servers[side],
                        *command,
                        "-clients",
                        str(clients),
                        "-n",
                        str(args.requests),
                        port=bench.daemon.port if side == "kubespiffe" else None,
                    )
                )
            if args.mint_only:
                continue
            for side, socket in (("spire", bench.spire.socket), ("kubespiffe", bench.ks_socket)):
                mint_jwt.setdefault((side, clients), []).append(
                    await run_client(
                        bench.client,
                        "jwt-mint",
                        "-socket",
                        f"unix://{socket}",
                        "-clients",
                        str(clients),
                        "-n",
                        str(args.requests // 4),
                    )
                )
        print(f"mint at {clients} clients done", flush=True)

    short: dict[str, list[float]] = {side: [] for side in sides}
    for _ in range(args.short_rounds):
        wait = random.uniform(2, 12)
        short["spire"].append(await bench.spire_registration(wait))
        short["kubespiffe"].append(await bench.ks_registration(wait))
    print(f"short waits done: {short}", flush=True)

    async def staggered(delay: float, side: str, wait: float) -> float:
        await asyncio.sleep(delay)
        call = bench.spire_registration if side == "spire" else bench.ks_registration
        return await call(wait)

    order = [side for _ in range(args.long_rounds) for side in sides]
    waits = [random.uniform(65, 98) for _ in order]
    results = await asyncio.gather(
        *(staggered(i, side, w) for i, (side, w) in enumerate(zip(order, waits, strict=True)))
    )
    long: dict[str, list[float]] = {side: [] for side in sides}
    for side, value in zip(order, results, strict=True):
        long[side].append(value)
    print(f"long waits done: {long}", flush=True)

    for label, values in (("2-12", short), ("65-98", long)):
        if values["spire"] and values["kubespiffe"]:
            s, k = values["spire"], values["kubespiffe"]
            rows.append(
                (
                    f"registration -> SVID, unregistered {label} s before: median / max (s)",
                    summary(s),
                    summary(k),
                    f"{statistics.median(k) / statistics.median(s):.2f} / {max(k) / max(s):.2f}",
                )
            )
    for key, name in (("x509_ms", "cached FetchX509SVID"), ("jwt_ms", "cached FetchJWTSVID")):
        if not fetch["spire"][key]:
            continue
        s50, s99 = percentiles(fetch["spire"][key])
        k50, k99 = percentiles(fetch["kubespiffe"][key])
        rows.append(
            (
                f"{name} p50 / p99 (ms)",
                f"{s50:.2f} / {s99:.2f}",
                f"{k50:.2f} / {k99:.2f}",
                f"{k50 / s50:.2f} / {k99 / s99:.2f}",
            )
        )
    for label, table in (("X.509 mint at the server", mint_x509), ("JWT mint via Workload API", mint_jwt)):
        for clients in (1, 4, 16) if table else ():
            spire_runs, ks_runs = table[("spire", clients)], table[("kubespiffe", clients)]

            def med(key: str, runs: list[dict[str, Any]]) -> float:
                return statistics.median(float(r[key]) for r in runs)

            s_rate, k_rate = med("per_second", spire_runs), med("per_second", ks_runs)
            rows.append(
                (
                    f"{label}, {clients} clients: per s (p50 / p99 ms)",
                    f"{s_rate:,.0f} ({med('p50_ms', spire_runs):.1f} / {med('p99_ms', spire_runs):.1f})",
                    f"{k_rate:,.0f} ({med('p50_ms', ks_runs):.1f} / {med('p99_ms', ks_runs):.1f})",
                    ratio(s_rate, k_rate),
                )
            )
            if clients > 1 and ks_runs[0].get("connections_per_process"):
                spreads = ", ".join("/".join(map(str, r["connections_per_process"])) for r in ks_runs)
                rows.append(
                    (
                        f"{label}, {clients} clients: kubespiffed connections per process (+1: the agent)",
                        "",
                        spreads,
                        "",
                    )
                )
            if "server_us_per_call" in spire_runs[0]:
                rows.append(
                    (
                        f"{label}, {clients} clients: CPU us per call, server + client (machine busy)",
                        _cpu_cell(spire_runs),
                        _cpu_cell(ks_runs),
                        ratio(med("server_us_per_call", spire_runs), med("server_us_per_call", ks_runs)),
                    )
                )
                rows.append(
                    (
                        f"{label}, {clients} clients: per call, the client's context switches / TCP segments",
                        _wakeups_cell(spire_runs),
                        _wakeups_cell(ks_runs),
                        "",
                    )
                )
    if cold["spire"]:
        rows.append(
            (
                "agent process exec -> first SVID: median / max (ms)",
                summary(cold["spire"], 1000, 1),
                summary(cold["kubespiffe"], 1000, 1),
                ratio(statistics.median(cold["spire"]), statistics.median(cold["kubespiffe"])),
            )
        )

    assert (
        bench.spire_server is not None and bench.spire.agent_proc is not None and bench.ks_agent is not None
    )
    assert bench.daemon.process is not None
    server_mem = memory_mb(bench.spire_server.pid)
    agent_mem = memory_mb(bench.spire.agent_proc.pid)
    ks_rss, ks_pss, ks_count = tree_memory_mb(bench.daemon.process.pid)
    ks_agent_mem = memory_mb(bench.ks_agent.pid)
    rows.append(
        (
            "server RSS / PSS (MB)",
            f"{server_mem[0]:.0f} / {server_mem[1]:.0f}",
            f"{ks_rss:.0f} / {ks_pss:.0f}" + (f" ({ks_count} processes)" if ks_count > 1 else ""),
            ratio(server_mem[0], ks_rss),
        )
    )
    rows.append(
        (
            "agent RSS / PSS after load (MB)",
            f"{agent_mem[0]:.0f} / {agent_mem[1]:.0f} per node",
            f"{ks_agent_mem[0]:.0f} / {ks_agent_mem[1]:.0f} per pod",
            ratio(agent_mem[0], ks_agent_mem[0]),
        )
    )
    shared = [memory_mb(pid) for pid in processes_mentioning(str(bench.plane.dir))]
    rows.append(
        (
            "shared control plane (etcd + kube-apiserver) RSS / PSS (MB)",
            f"{sum(r for r, _ in shared):.0f} / {sum(p for _, p in shared):.0f}",
            "(same)",
            "",
        )
    )

    print()
    print(f"machine: {machine()}; load average over the last 15 min {os.getloadavg()[2]:.1f}")
    print(
        f"SPIRE {SPIRE_VERSION} vs kubespiffe (kubespiffed --workers={args.workers}); X.509 {X509_TTL}, "
        f"JWT {JWT_TTL}; ratio = kubespiffe / SPIRE (rates: above 1 favours kubespiffe; times: below 1)"
    )
    print()
    print("| metric | SPIRE | kubespiffe | ratio |")
    print("|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print()
    print("X.509 mint: SPIRE = svid.v1 BatchNewX509SVID (one entry) over mTLS with a k8s_psat agent SVID;")
    print("            kubespiffe = issuer MintX509SVID over TLS + pod token (verify, pod, match, sign).")
    print("JWT mint:   FetchJWTSVID with a new audience per call through each agent (agent -> server).")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--short-rounds", type=int, default=5, help="per side, waits of 2-12 s (max 20)")
    parser.add_argument("--long-rounds", type=int, default=3, help="per side, waits of 65-98 s (max 10)")
    parser.add_argument("--cold-rounds", type=int, default=5, help="agent restarts per side (max 50)")
    parser.add_argument("--fetches", type=int, default=1000, help="cached fetches per loop (max 20000)")
    parser.add_argument("--requests", type=int, default=2000, help="X.509 mints per run (max 20000)")
    parser.add_argument("--workers", type=int, default=1, help="kubespiffed --workers (issuer API processes)")
    parser.add_argument(
        "--mint-rounds", type=int, default=2, help="X.509 mint runs per side and client count"
    )
    parser.add_argument(
        "--mint-only",
        action="store_true",
        help="only the X.509 mint (no cold start, cached fetch, JWT mint or registration rounds)",
    )
    args = parser.parse_args()
    args.short_rounds = min(args.short_rounds, 20)
    args.long_rounds = min(args.long_rounds, 10)
    args.cold_rounds = min(args.cold_rounds, 50)
    args.fetches = min(args.fetches, 20000)
    args.requests = min(args.requests, 20000)
    args.workers = min(args.workers, 16)
    args.mint_rounds = max(1, min(args.mint_rounds, 10))
    if args.mint_only:
        args.short_rounds = args.long_rounds = args.cold_rounds = 0
    try:
        server, agent = spire_binaries()
    except Skip as exc:
        print(f"SKIPPED: {exc}", file=sys.stderr)
        return 0
    with work_directory("kubespiffe-vs-spire-") as work:
        asyncio.run(setup_and_run(args, server, agent, bench_client(), work))
    return 0


if __name__ == "__main__":
    sys.exit(main())
