"""A real Kubernetes node on this machine: containerd, kubelet, kube-proxy, scheduler, controller-manager.

Tests that need pods to actually run (projected token volumes, sidecars, Services) start one `Node` with
a `ControlPlane(with_nodes=True)`: `Node.start()` makes the pod bridge first and then starts the control
plane listening on the bridge address (pods reach it through the `kubernetes` Service), and `stop()` stops
it again. Root only, one per machine: the kubelet and kube-proxy change
machine-global state (sysctls, iptables, cgroup roots, /var/lib/kubelet). A snapshot of that state is
taken and written to /run before anything changes, and teardown puts the machine back from it, whether
the run ends normally, by exception, SIGINT/SIGTERM, or (at the next start) after a crash.

Networking stays on the machine: pods sit on a private bridge whose address is also the node IP (so the
kubelet never listens on an external interface); there is no default route in pods, no masquerading,
and forwarded traffic may only go from the bridge back into the bridge.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import ipaddress
import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import yaml
from lightkube import Client, KubeConfig
from lightkube.resources.core_v1 import Node as NodeResource

from kubespiffe.devenv import hostpackages, hoststate, images, pki
from kubespiffe.devenv.build import NodeBinaries, ensure_node_binaries
from kubespiffe.devenv.controlplane import (
    FEATURE_GATES,
    NODE_ADDRESS,
    SERVICE_CIDR,
    ControlPlane,
    free_port,
)

LOCK_FILE = Path("/run/kubespiffe-node.lock")
RECORD_FILE = Path("/run/kubespiffe-node.json")
CLUSTER_CIDR = "10.244.0.0/16"
POD_SUBNET = "10.244.0.0/24"
NODE_IP = NODE_ADDRESS
OWN_COMMENT = "kubespiffe-node"
_DEFERRED = (signal.SIGINT, signal.SIGTERM)
_GATES = dict(gate.split("=") for gate in FEATURE_GATES.split(","))


class NodeError(RuntimeError):
    """The node cannot start here (not root, another node running, packages missing) or failed to."""


@dataclass
class NodeRecord:
    """Everything teardown needs, on disk under /run so a later start can clean up after a crash."""

    before: hoststate.HostSnapshot
    directory: str
    bridge: str
    pids: list[int] = field(default_factory=list)

    def save(self) -> None:
        RECORD_FILE.write_text(json.dumps({**asdict(self), "before": asdict(self.before)}))

    @classmethod
    def load(cls) -> NodeRecord:
        data = json.loads(RECORD_FILE.read_text())
        return cls(**{**data, "before": hoststate.HostSnapshot(**data["before"])})


def _run(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


def _require_root() -> None:
    if os.geteuid() != 0:
        raise NodeError("a local node needs root (containerd, the kubelet and iptables change the machine)")


def _refuse_running_kubelet() -> None:
    running = [pid for pid in hoststate.node_processes() if hoststate.comm(pid) == "kubelet"]
    if running:
        raise NodeError(
            f"a kubelet is already running on this machine (pid {running[0]}); one node at a time"
        )


def _refuse_overlapping_routes() -> None:
    """The node's pod and Service ranges must be free on this machine, or pod traffic could go astray."""
    out = subprocess.run(["ip", "-j", "route", "show"], capture_output=True, text=True, check=True).stdout
    ours = [ipaddress.ip_network(CLUSTER_CIDR), ipaddress.ip_network(SERVICE_CIDR)]
    for route in json.loads(out):
        if route.get("dst", "default") == "default":
            continue
        dst = ipaddress.ip_network(route["dst"], strict=False)
        if any(dst.overlaps(network) for network in ours):
            raise NodeError(f"route {dst} dev {route.get('dev')} overlaps the node's networks; refusing")


def _harness_base() -> str:
    """/var/tmp (a real disk) unless it is overlayfs, e.g. a container's root: containerd's overlayfs
    snapshotter cannot stack on overlayfs, so tmpfs it is then. KUBESPIFFE_NODE_DIR overrides."""
    override = os.environ.get("KUBESPIFFE_NODE_DIR")
    if override:
        return override
    return "/dev/shm" if hoststate.filesystem_type("/var/tmp") == "overlay" else "/var/tmp"


class Node:
    """One node named `name` joined to `plane`. Use as a context manager or call start()/stop()."""

    def __init__(
        self, plane: ControlPlane, name: str = "kubespiffe-node", log_dir: Path | None = None
    ) -> None:
        if not plane.with_nodes:
            raise ValueError("start the ControlPlane with with_nodes=True so it can reach the kubelet")
        self.plane = plane
        self.name = name
        self.bridge = f"kspf{secrets.token_hex(3)}"
        self.log_dir = log_dir or plane.log_dir
        self.timings: dict[str, float] = {}
        self.before: hoststate.HostSnapshot | None = None
        self.veths: list[str] = []
        self._dir: Path | None = None
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._record: NodeRecord | None = None
        self._lock_fd: int | None = None
        self._previous_sigterm: Any = None
        self._owns_plane = False

    @property
    def dir(self) -> Path:
        if self._dir is None:
            raise RuntimeError("the node is not started")
        return self._dir

    @property
    def socket(self) -> Path:
        return self.dir / "containerd.sock"

    def start(self, timeout: float = 60.0) -> None:
        began = time.monotonic()
        _require_root()
        self._lock()
        try:
            if RECORD_FILE.exists():
                teardown(NodeRecord.load(), {})  # a previous run died without cleaning up
            _refuse_running_kubelet()
            _refuse_overlapping_routes()
            missing = hostpackages.missing()
            if missing:
                raise NodeError(f"missing Debian packages {' '.join(missing)}: run scripts/bootstrap as root")
            binaries = ensure_node_binaries()
            archives = (images.pause_archive(), images.busybox_archive())
            self.before = hoststate.HostSnapshot.take()
            self._dir = Path(tempfile.mkdtemp(prefix="kubespiffe-node-", dir=_harness_base()))
            self._record = NodeRecord(self.before, str(self._dir), self.bridge)
            self._record.save()
            self._catch_sigterm()
            atexit.register(self.stop)
            self._network()
            if not self.plane.running:  # it listens on the bridge: started only now
                self._owns_plane = True
                self.plane.start()
            self._configure()
            containerd_started = time.monotonic()
            self._start_containerd(timeout)
            for archive in archives:
                self.import_image(archive)
            self._start_components(binaries)
            self._wait_ready(timeout)
            now = time.monotonic()
            self.timings["containerd_to_ready"] = now - containerd_started
            self.timings["setup"] = now - began
        except BaseException:
            self.stop()
            raise

    def _lock(self) -> None:
        fd = os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = LOCK_FILE.read_text().strip() or "?"
            raise NodeError(f"another local node is running on this machine (pid {holder})") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            LOCK_FILE.unlink(missing_ok=True)  # while still holding it: leave no file behind
            os.close(self._lock_fd)
            self._lock_fd = None

    def _catch_sigterm(self) -> None:
        """SIGTERM ends the run the way Ctrl-C does, so `with` blocks and fixtures tear the node down."""
        if threading.current_thread() is not threading.main_thread():
            return

        def interrupt(signum: int, frame: FrameType | None) -> None:
            raise KeyboardInterrupt(f"signal {signum}")

        self._previous_sigterm = signal.signal(signal.SIGTERM, interrupt)

    def _network(self) -> None:
        """The pod bridge (its address is the node IP), a route keeping ClusterIPs on it, a forward guard."""
        bridge = self.bridge
        _run("ip", "link", "add", "name", bridge, "type", "bridge")
        _run("ip", "addr", "add", f"{NODE_IP}/24", "dev", bridge)
        _run("ip", "link", "set", bridge, "up")
        _run("ip", "route", "add", SERVICE_CIDR, "dev", bridge, "src", NODE_IP)
        # Pods reach Services through the host (DNAT by kube-proxy, then forwarded back into the bridge).
        # Nothing else may be forwarded in or out of the bridge: no pod traffic leaves the machine. The mangle
        # table sees packets before kube-proxy's filter rules (which accept established/marked traffic).
        for rule in (["-i", bridge, "!", "-o", bridge], ["!", "-i", bridge, "-o", bridge]):
            _run(
                "iptables",
                "-t",
                "mangle",
                "-I",
                "FORWARD",
                "1",
                *rule,
                "-m",
                "comment",
                "--comment",
                OWN_COMMENT,
                "-j",
                "DROP",
            )
        hoststate.write_sysctl("net/ipv4/ip_forward", "1")

    def _configure(self) -> None:
        directory = self.dir
        for sub in ("cni/net.d", "pki", "kubelet", "logs"):
            (directory / sub).mkdir(parents=True)
        ca = self.plane.ca
        (directory / "pki/ca.crt").write_bytes(ca.cert_pem)
        (directory / "pki/ca.key").write_bytes(ca.key_pem)
        (directory / "pki/ca.key").chmod(0o600)
        pki.write_pair(
            directory / "pki",
            "kubelet",
            ca.issue(self.name, server_names=(self.name,), server_ips=(NODE_IP,)),
        )
        for user, common_name, organization in (
            ("kubelet", f"system:node:{self.name}", "system:nodes"),
            ("controller-manager", "system:kube-controller-manager", "system:masters"),
            ("scheduler", "system:kube-scheduler", None),
            ("proxy", "system:kube-proxy", None),
        ):
            path = directory / f"{user}.kubeconfig"
            path.write_text(self.plane.client_kubeconfig(common_name, organization))
            path.chmod(0o600)
        (directory / "cni/net.d/10-kubespiffe.conflist").write_text(json.dumps(self._cni_config(), indent=2))
        (directory / "containerd.toml").write_text(self._containerd_config())
        (directory / "kubelet.yaml").write_text(yaml.safe_dump(self._kubelet_config()))
        (directory / "kube-proxy.yaml").write_text(yaml.safe_dump(self._proxy_config()))

    def _cni_config(self) -> dict[str, Any]:
        return {
            "cniVersion": "1.0.0",
            "name": "kubespiffe-node",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": self.bridge,
                    "isGateway": False,
                    "ipMasq": False,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": POD_SUBNET, "rangeStart": "10.244.0.10", "gateway": NODE_IP}]],
                        "routes": [{"dst": SERVICE_CIDR, "gw": NODE_IP}],
                        "dataDir": str(self.dir / "cni/ipam"),
                    },
                }
            ],
        }

    def _containerd_config(self) -> str:
        """containerd 1.6 config (version 2): everything under the harness directory, pause image local."""
        d = self.dir
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        return f"""version = 2
root = "{d}/containerd/root"
state = "{d}/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]

[grpc]
  address = "{self.socket}"

[ttrpc]
  address = "{self.socket}.ttrpc"

[{cri}]
  sandbox_image = "{images.PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false
  Root = "{d}/runc"

[{cri}.cni]
  bin_dir = "/usr/lib/cni"
  conf_dir = "{d}/cni/net.d"

[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/containerd/opt"
"""

    def _kubelet_config(self) -> dict[str, Any]:
        pki_dir = self.dir / "pki"
        return {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": NODE_IP,
            "healthzBindAddress": "127.0.0.1",
            "readOnlyPort": 0,
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(pki_dir / "ca.crt")},
            },
            "authorization": {"mode": "Webhook"},
            "tlsCertFile": str(pki_dir / "kubelet.crt"),
            "tlsPrivateKeyFile": str(pki_dir / "kubelet.key"),
            "containerRuntimeEndpoint": f"unix://{self.socket}",
            "cgroupDriver": "cgroupfs",
            "failCgroupV1": False,
            "failSwapOn": False,
            "featureGates": {gate: value == "true" for gate, value in _GATES.items()},
            "evictionHard": {
                "memory.available": "50Mi",
                "nodefs.available": "1%",
                "nodefs.inodesFree": "1%",
                "imagefs.available": "1%",
            },
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "clusterDomain": "cluster.local",
            "resolvConf": "",
            "volumePluginDir": str(self.dir / "kubelet-plugins"),
            "serializeImagePulls": False,
            "shutdownGracePeriod": "0s",
            "nodeStatusReportFrequency": "10s",
        }

    def _proxy_config(self) -> dict[str, Any]:
        return {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "mode": "iptables",
            "clientConnection": {"kubeconfig": str(self.dir / "proxy.kubeconfig")},
            "hostnameOverride": self.name,
            "bindAddress": NODE_IP,
            "healthzBindAddress": f"127.0.0.1:{free_port()}",
            "metricsBindAddress": f"127.0.0.1:{free_port()}",
            "clusterCIDR": CLUSTER_CIDR,
            "detectLocalMode": "ClusterCIDR",
            "nodePortAddresses": [f"{NODE_IP}/32"],
            "iptables": {"localhostNodePorts": False, "minSyncPeriod": "0s", "syncPeriod": "30s"},
            # Zero means "leave the kernel's value": kube-proxy would otherwise raise conntrack sysctls.
            "conntrack": {
                "maxPerCore": 0,
                "min": 0,
                "tcpEstablishedTimeout": "0s",
                "tcpCloseWaitTimeout": "0s",
            },
            "oomScoreAdj": 0,
        }

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        log = (self.log_dir / f"node-{name}.log").open("ab")
        proc = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
        log.close()
        self._procs[name] = proc
        assert self._record is not None
        self._record.pids.append(proc.pid)
        self._record.save()
        return proc

    def _start_containerd(self, timeout: float) -> None:
        proc = self._spawn("containerd", ["containerd", "--config", str(self.dir / "containerd.toml")])
        deadline = time.monotonic() + timeout
        while not self._ctr_ok():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise NodeError(f"containerd did not start; see {self.log_dir}/node-containerd.log")
            time.sleep(0.05)

    def _ctr(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ctr", "--address", str(self.socket), "--namespace", "k8s.io", *args],
            capture_output=True,
            text=True,
            check=False,
        )

    def _ctr_ok(self) -> bool:
        return self.socket.exists() and self._ctr("version").returncode == 0

    def import_image(self, archive: Path) -> None:
        """Load a docker-archive or OCI archive into the node's image store (pods: imagePullPolicy Never)."""
        result = self._ctr("images", "import", str(archive))
        if result.returncode != 0:
            raise NodeError(f"ctr images import {archive} failed: {result.stderr.strip()}")

    def _start_components(self, binaries: NodeBinaries) -> None:
        d, plane = self.dir, self.plane
        gates = f"--feature-gates={FEATURE_GATES}"
        self._spawn(
            "kube-controller-manager",
            [
                str(binaries.kube_controller_manager),
                f"--kubeconfig={d / 'controller-manager.kubeconfig'}",
                "--secure-port=0",
                "--leader-elect=false",
                "--use-service-account-credentials=false",
                f"--service-account-private-key-file={plane.service_account_key}",
                f"--root-ca-file={d / 'pki/ca.crt'}",
                f"--cluster-signing-cert-file={d / 'pki/ca.crt'}",
                f"--cluster-signing-key-file={d / 'pki/ca.key'}",
                "--controllers=*",
                gates,
                "--v=1",
            ],
        )
        self._spawn(
            "kube-scheduler",
            [
                str(binaries.kube_scheduler),
                f"--kubeconfig={d / 'scheduler.kubeconfig'}",
                "--secure-port=0",
                "--leader-elect=false",
                gates,
                "--v=1",
            ],
        )
        self._spawn(
            "kubelet",
            [
                str(binaries.kubelet),
                f"--config={d / 'kubelet.yaml'}",
                f"--kubeconfig={d / 'kubelet.kubeconfig'}",
                f"--root-dir={d / 'kubelet'}",
                f"--hostname-override={self.name}",
                f"--node-ip={NODE_IP}",
                "--v=1",
            ],
        )
        self._spawn("kube-proxy", [str(binaries.kube_proxy), f"--config={d / 'kube-proxy.yaml'}", "--v=1"])

    def client(self) -> Client:
        config = yaml.safe_load(self.plane.admin_kubeconfig())
        return Client(KubeConfig.from_dict(config), field_manager="kubespiffe-node")

    def _wait_ready(self, timeout: float) -> None:
        client = self.client()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self._procs.items():
                if proc.poll() is not None:
                    raise NodeError(
                        f"{name} exited with {proc.returncode}; see {self.log_dir}/node-{name}.log"
                    )
            with contextlib.suppress(Exception):
                node = client.get(NodeResource, self.name)
                conditions = (node.status.conditions if node.status else None) or []
                if any(c.type == "Ready" and c.status == "True" for c in conditions):
                    return
            time.sleep(0.1)
        raise NodeError(
            f"node {self.name} not Ready after {timeout:.0f}s; see {self.log_dir}/node-kubelet.log"
        )

    def stop(self) -> None:
        """Tear everything down (idempotent). Raises if any step failed, after attempting all of them."""
        record, self._record = self._record, None
        try:
            if record is not None:
                began = time.monotonic()
                with _signals_deferred():
                    try:
                        if self._owns_plane:  # before the bridge it listens on goes
                            self._owns_plane = False
                            self.plane.stop()
                    finally:
                        self.veths = teardown(record, self._procs)
                self.timings["teardown"] = time.monotonic() - began
        finally:
            self._procs.clear()
            self._dir = None
            atexit.unregister(self.stop)
            if self._previous_sigterm is not None:
                signal.signal(signal.SIGTERM, self._previous_sigterm)
                self._previous_sigterm = None
            self._unlock()

    def check_clean(self) -> None:
        """After stop(): assert the machine is as it was before start()."""
        if self.before is None:
            raise RuntimeError("the node was never started")
        hoststate.check_clean(self.before, self.bridge, self.veths)

    def __enter__(self) -> Node:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Let teardown finish when SIGINT/SIGTERM arrive during it (a second Ctrl-C), then re-raise."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, _: received.append(signum)) for sig in _DEFERRED}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if received:
        raise KeyboardInterrupt(f"signal {received[0]} during teardown")


def _stop_process(proc: subprocess.Popen[bytes] | None, pid: int, grace: float) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds; by Popen when we have it, else by pid (crash recovery)."""
    if proc is not None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return
    if hoststate.comm(pid) in hoststate.NODE_COMMANDS:
        hoststate.kill_pids([pid], signal.SIGTERM)
        if hoststate.wait_gone([pid], grace):
            hoststate.kill_pids([pid])
            hoststate.wait_gone([pid], grace)


def _shims(directory: str) -> list[int]:
    """containerd-shim processes of this node: their command line names our containerd socket."""
    found = []
    for pid in hoststate.node_processes():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if hoststate.comm(pid) == "containerd-shim" and directory in cmdline:
            found.append(pid)
    return found


def _kill_shims(directory: str) -> None:
    hoststate.kill_pids(_shims(directory))
    if hoststate.wait_gone(_shims(directory), 5.0):
        raise NodeError("containerd shims survived SIGKILL")


def _delete_link(name: str) -> None:
    """Delete a network link unless it is already gone (a veth dies with its pod's netns)."""
    if name in hoststate.links():
        result = subprocess.run(["ip", "link", "del", name], capture_output=True, text=True, check=False)
        if result.returncode != 0 and name in hoststate.links():
            raise NodeError(f"ip link del {name}: {result.stderr.strip()}")


def _bridge_ports(bridge: str) -> list[str]:
    out = subprocess.run(
        ["ip", "-j", "link", "show", "master", bridge], capture_output=True, text=True, check=False
    ).stdout
    return [link["ifname"] for link in json.loads(out or "[]")]


def teardown(record: NodeRecord, procs: dict[str, subprocess.Popen[bytes]]) -> list[str]:
    """Undo a node from its record: every step runs even if an earlier one failed; errors are raised last.

    Returns the veth names that were on the bridge, so check_clean can confirm they are gone.
    """
    errors: list[str] = []
    before, directory = record.before, record.directory
    by_pid = {proc.pid: proc for proc in procs.values()}
    containerd = procs.get("containerd")
    veths = _bridge_ports(record.bridge)

    def step(what: str, action: Any, *args: Any) -> None:
        try:
            action(*args)
        except Exception as exc:  # teardown must go on; everything is reported at the end
            errors.append(f"{what}: {exc}")

    # Components first (they would recreate what is removed), containerd after its containers.
    for pid in reversed(record.pids):
        if containerd is None or pid != containerd.pid:
            step(f"stop pid {pid}", _stop_process, by_pid.get(pid), pid, 5.0)
    step("pod cgroups", hoststate.undo_cgroups, before)
    for pid in record.pids:
        step(f"stop pid {pid}", _stop_process, by_pid.get(pid), pid, 5.0)
    step("shims", _kill_shims, directory)
    step("netns", hoststate.undo_netns, before)
    for veth in _bridge_ports(record.bridge):  # normally gone with their netns already
        step(f"veth {veth}", _delete_link, veth)
    step("bridge", _delete_link, record.bridge)
    step(
        "mounts",
        hoststate.unmount_under,
        [directory, "/var/lib/kubelet", "/run/containerd", "/run/netns"],
        before.mounts,
    )
    step("iptables", hoststate.undo_iptables, before, OWN_COMMENT)
    step("sysctls", hoststate.undo_sysctls, before)
    mounts = hoststate.mount_points()
    for path in [*(p for p in hoststate.GLOBAL_PATHS if p not in before.paths), directory]:
        if any(hoststate.is_under(m, [path]) for m in mounts):
            errors.append(f"{path}: still has mounts, not removed")
        elif os.path.lexists(path):
            step(f"remove {path}", shutil.rmtree, path)
    if errors:
        raise NodeError("node teardown incomplete:\n  " + "\n  ".join(errors))
    RECORD_FILE.unlink(missing_ok=True)
    return veths
