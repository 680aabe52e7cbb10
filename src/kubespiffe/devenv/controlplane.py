"""Run a real etcd + kube-apiserver on loopback, configured as a cluster that issues pod-bound tokens.

By default there is no kubelet, scheduler or controller-manager: callers create Pods and request their
tokens through the TokenRequest API exactly as a kubelet would. The ServiceAccount issuer, TokenRequest, RBAC,
the Node authorizer and the PodCertificateRequest / ClusterTrustBundle APIs are all on.

With `with_nodes=True` (started by kubespiffe.devenv.node.Node, which makes the node's bridge first) the API
server listens on the bridge address NODE_ADDRESS instead of loopback and advertises it, so the `kubernetes`
Service gets endpoints and pods reach the API server the way they do in any cluster (in-cluster config:
KUBERNETES_SERVICE_HOST, the first Service IP, in the serving certificate). It also reaches kubelets (logs,
exec). The bridge is private to this machine: nothing listens on an external interface.
"""

from __future__ import annotations

import base64
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import yaml

from kubespiffe.devenv import pki
from kubespiffe.devenv.build import ControlPlaneBinaries, ensure_binaries

SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
SERVICE_CIDR = "10.96.0.0/16"
# The `kubernetes` Service's ClusterIP: the first address of SERVICE_CIDR (kube-apiserver picks it).
KUBERNETES_SERVICE_IP = "10.96.0.1"
# The node's bridge address (kubespiffe.devenv.node): the node IP, and where a with_nodes API server listens.
NODE_ADDRESS = "10.244.0.1"
FEATURE_GATES = "ClusterTrustBundle=true,ClusterTrustBundleProjection=true,PodCertificateRequest=true"
RUNTIME_CONFIG = (
    "certificates.k8s.io/v1beta1/clustertrustbundles=true,"
    "certificates.k8s.io/v1beta1/podcertificaterequests=true"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _runtime_dir(name: str) -> Path:
    """Keys and etcd data go to tmpfs when the machine has one, so nothing is left on a real disk."""
    shm = Path("/dev/shm")
    base = shm if shm.is_dir() and os.access(shm, os.W_OK) else None
    return Path(tempfile.mkdtemp(prefix=f"kubespiffe-{name}-", dir=base))


def kubeconfig(server: str, ca_pem: bytes, user: dict[str, str], name: str = "kubespiffe-dev") -> str:
    """A one-context kubeconfig with everything embedded (no file references)."""
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": name,
                "cluster": {
                    "server": server,
                    "certificate-authority-data": base64.b64encode(ca_pem).decode(),
                },
            }
        ],
        "users": [{"name": name, "user": user}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
        "current-context": name,
    }
    return yaml.safe_dump(doc, sort_keys=False)


class ControlPlane:
    """One local control plane. Use as a context manager or call start()/stop()."""

    def __init__(
        self, name: str = "cluster", log_dir: Path | None = None, *, with_nodes: bool = False
    ) -> None:
        self.name = name
        self.with_nodes = with_nodes
        self.dir = _runtime_dir(name)
        self.log_dir = log_dir or self.dir
        self.ca = pki.ClusterCA()
        self.port = free_port()
        self.address = NODE_ADDRESS if with_nodes else "127.0.0.1"
        self.server = f"https://{self.address}:{self.port}"
        self._procs: list[subprocess.Popen[bytes]] = []
        self.binaries: ControlPlaneBinaries | None = None
        # For restarts (fault tests): the same ports, data, keys and flags; API servers keyed by port.
        self._etcd_ports: tuple[int, int] = (free_port(), free_port())
        self._apiservers: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def service_account_key(self) -> Path:
        """The key the API server signs ServiceAccount tokens with (tests forge tokens with it)."""
        return self.dir / "sa.key"

    @property
    def ca_pem(self) -> bytes:
        return self.ca.cert_pem

    @property
    def ca_file(self) -> Path:
        return self.dir / "ca.crt"

    def client_kubeconfig(self, common_name: str, organization: str | None = None) -> str:
        """A kubeconfig authenticating with a client certificate (e.g. `system:node:<name>`)."""
        pair = self.ca.issue(common_name, organization=organization)
        user = {
            "client-certificate-data": base64.b64encode(pair.cert_pem).decode(),
            "client-key-data": base64.b64encode(pair.key_pem).decode(),
        }
        return kubeconfig(self.server, self.ca_pem, user)

    def admin_kubeconfig(self) -> str:
        return self.client_kubeconfig("kubespiffe-devenv-admin", "system:masters")

    def token_kubeconfig(self, token: str) -> str:
        return kubeconfig(self.server, self.ca_pem, {"token": token})

    @property
    def running(self) -> bool:
        return bool(self._procs) and all(proc.poll() is None for proc in self._procs)

    def start(self, timeout: float = 90.0) -> None:
        if self.with_nodes and not _address_is_local(self.address):
            raise RuntimeError(
                f"{self.address} is not on this machine: a with_nodes control plane is started by "
                "kubespiffe.devenv.node.Node, after it has made the node's bridge"
            )
        self.binaries = ensure_binaries()
        try:
            self._start_etcd(timeout)
            self._start_apiserver(timeout)
        except BaseException:
            self.stop()
            raise
        (self.dir / "admin.kubeconfig").write_text(self.admin_kubeconfig())
        (self.dir / "admin.kubeconfig").chmod(0o600)

    def _spawn(self, args: list[str], log_name: str) -> subprocess.Popen[bytes]:
        log = (self.log_dir / log_name).open("ab")
        proc = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
        log.close()
        self._procs.append(proc)
        return proc

    def _start_etcd(self, timeout: float) -> None:
        assert self.binaries is not None
        client, peer = self._etcd_ports
        self.etcd_url = f"http://127.0.0.1:{client}"
        proc = self._spawn(
            [
                str(self.binaries.etcd),
                "--name=devenv",
                f"--data-dir={self.dir / 'etcd'}",
                f"--listen-client-urls={self.etcd_url}",
                f"--advertise-client-urls={self.etcd_url}",
                f"--listen-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-cluster=devenv=http://127.0.0.1:{peer}",
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
            f"{self.name}-etcd.log",
        )
        self._etcd = proc
        self._wait(lambda: _http_ok(f"{self.etcd_url}/health"), proc, timeout, "etcd")

    def _start_apiserver(self, timeout: float, port: int | None = None) -> None:
        assert self.binaries is not None
        port = port or self.port
        ca_file = self.ca_file
        ca_file.write_bytes(self.ca_pem)
        # With nodes, pods dial the `kubernetes` Service's ClusterIP (in-cluster config) and reach this
        # address through kube-proxy; the certificate names both.
        ips = (self.address, KUBERNETES_SERVICE_IP) if self.with_nodes else (self.address,)
        serving = self.ca.issue(
            "kube-apiserver",
            server_names=("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"),
            server_ips=ips,
        )
        tls_cert, tls_key = pki.write_pair(self.dir, "apiserver", serving)
        sa_key, sa_pub = self.service_account_key, self.dir / "sa.pub"
        if not sa_key.exists():  # a restart keeps the key: every token issued so far stays valid
            pki.write_service_account_keys(self.dir)
        proc = self._spawn(
            [
                str(self.binaries.kube_apiserver),
                f"--advertise-address={self.address}",
                f"--bind-address={self.address}",
                f"--secure-port={port}",
                f"--etcd-servers={self.etcd_url}",
                f"--etcd-prefix=/{self.name}",
                f"--tls-cert-file={tls_cert}",
                f"--tls-private-key-file={tls_key}",
                f"--client-ca-file={ca_file}",
                f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
                f"--service-account-key-file={sa_pub}",
                f"--service-account-signing-key-file={sa_key}",
                "--authorization-mode=Node,RBAC",
                "--enable-admission-plugins=NodeRestriction",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                # With nodes: the `kubernetes` Service's endpoints are this server (the lease reconciler);
                # without, there is no pod network to reach it from (and a loopback endpoint is invalid).
                f"--endpoint-reconciler-type={'lease' if self.with_nodes else 'none'}",
                "--enable-priority-and-fairness=false",
                "--profiling=false",
                f"--cert-dir={self.dir / 'certs'}",
                f"--feature-gates={FEATURE_GATES}",
                f"--runtime-config={RUNTIME_CONFIG}",
                "--v=1",
                *self._kubelet_flags(),
            ],
            f"{self.name}-kube-apiserver{'' if port == self.port else f'-{port}'}.log",
        )
        self._apiservers[port] = proc
        admin = self.ca.issue("kubespiffe-devenv-admin", organization="system:masters")
        cert, key = pki.write_pair(self.dir, "admin", admin)
        context = ssl.create_default_context(cadata=self.ca_pem.decode())
        context.load_cert_chain(cert, key)
        url = f"https://{self.address}:{port}/readyz"
        self._wait(lambda: _http_ok(url, context), proc, timeout, "kube-apiserver")

    def stop_apiserver(self, port: int | None = None) -> None:
        """Stop one kube-apiserver (default: the main one) alone; etcd, keys and certificates stay."""
        self._halt(self._apiservers.pop(port or self.port))

    def start_apiserver(self, port: int | None = None, timeout: float = 90.0) -> str:
        """Start the main kube-apiserver again after stop_apiserver(), or another one on `port` that shares
        etcd and keys (an HA control plane's second server); returns its URL. stop() stops it too."""
        self._start_apiserver(timeout, port)
        return f"https://{self.address}:{port or self.port}"

    def stop_etcd(self) -> None:
        """Stop etcd alone (the API servers keep running and fail until start_etcd())."""
        self._halt(self._etcd)

    def start_etcd(self, timeout: float = 90.0) -> None:
        """Start etcd again on the same ports and data directory."""
        self._start_etcd(timeout)

    def _halt(self, proc: subprocess.Popen[bytes]) -> None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        self._procs.remove(proc)

    def _kubelet_flags(self) -> list[str]:
        """How the API server reaches kubelets for logs/exec: by InternalIP (node names do not resolve here),
        verifying their serving certificates against the cluster CA and presenting a client certificate."""
        if not self.with_nodes:
            return []
        client = self.ca.issue("kube-apiserver-kubelet-client", organization="system:masters")
        cert, key = pki.write_pair(self.dir, "kubelet-client", client)
        return [
            "--kubelet-preferred-address-types=InternalIP",
            f"--kubelet-client-certificate={cert}",
            f"--kubelet-client-key={key}",
            f"--kubelet-certificate-authority={self.ca_file}",
        ]

    def _wait(
        self, probe: Callable[[], bool], proc: subprocess.Popen[bytes], timeout: float, what: str
    ) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{what} exited with {proc.returncode}; see {self.log_dir}/{self.name}-{what}.log"
                )
            if probe():
                return
            time.sleep(0.2)
        raise RuntimeError(f"{what} not ready after {timeout:.0f}s; see {self.log_dir}")

    def stop(self) -> None:
        for proc in reversed(self._procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self._procs.clear()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> ControlPlane:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _address_is_local(address: str) -> bool:
    """Whether an interface of this machine carries `address` (can a server bind it?)."""
    try:
        with socket.socket() as sock:
            sock.bind((address, 0))
    except OSError:
        return False
    return True


def _http_ok(url: str, context: ssl.SSLContext | None = None) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as resp:  # noqa: S310 (loopback URL)
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False
