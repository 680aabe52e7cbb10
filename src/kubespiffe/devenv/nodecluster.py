"""kubespiffe installed the way a platform team installs it, on the real local node: image, chart, pods.

`NodeCluster` starts a `Node` (containerd, kubelet, ...) with its control plane, imports the image built
from deploy/Dockerfile (devenv/image.py), runs `helm install` of deploy/helm/kubespiffe with that image
(pullPolicy Never) and sidecar injection on, and waits until kubespiffed's pods are Ready. Used by
`kubespiffe dev up --node`, tests/node, bench/node_injection.py and bench/podcert_node.py. Root only (the
node and the image build need it).

There is no cluster DNS on the local node, so the agent cannot resolve kubespiffed.<namespace>.svc: the
chart's Service gets a fixed ClusterIP and the injected agent dials that address (injection.agent.server),
while still checking kubespiffed's certificate for the Service's DNS name and SPIFFE ID.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml
from lightkube import AsyncClient, Client, KubeConfig
from lightkube.core.exceptions import ApiError
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.core_v1 import Namespace, Pod

from kubespiffe.devenv import helm, image
from kubespiffe.devenv.controlplane import ControlPlane
from kubespiffe.devenv.node import LOCK_FILE, Node, NodeError
from kubespiffe.devenv.stack import authority_bundle_pem
from kubespiffe.injection.settings import INJECT_ENABLED, INJECT_LABEL
from kubespiffe.server.config import ServerConfig

# A fixed address in the node's Service range (controlplane.SERVICE_CIDR) for kubespiffed's Service.
KUBESPIFFED_CLUSTER_IP = "10.96.0.100"
NAMESPACE = helm.NAMESPACE
DEPLOYMENT = "kubespiffed"
SELECTOR = {"app.kubernetes.io/name": "kubespiffe", "app.kubernetes.io/component": "kubespiffed"}


def pod_certificate_signer_supported() -> bool:
    """Whether this kubespiffed has --pod-certificate-signer (the image is built from this tree)."""
    return any(field.name == "pod_certificate_signer" for field in dataclasses.fields(ServerConfig))


def chart_values(image_ref: str, trust_domain: str, replicas: int = 2) -> dict[str, Any]:
    """The values `dev up --node` installs with: the local image, injection on, agents dial the fixed IP."""
    repository, tag = image_ref.rsplit(":", 1)
    values: dict[str, Any] = {
        "trustDomain": trust_domain,
        "replicas": replicas,
        "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
        "service": {"clusterIP": KUBESPIFFED_CLUSTER_IP},
        "injection": {
            "enabled": True,
            "agent": {"server": f"{KUBESPIFFED_CLUSTER_IP}:443", "image": {"pullPolicy": "Never"}},
        },
    }
    if pod_certificate_signer_supported():
        values["podCertificates"] = {"enabled": True}
    return values


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def refuse_if_running() -> None:
    """Fail fast (before a minute of builds) when another local node holds the machine's node lock."""
    if os.geteuid() != 0:
        raise NodeError(
            "`kubespiffe dev up --node` needs root: containerd, the kubelet and iptables change the machine "
            "(without --node, `kubespiffe dev up` runs kubespiffed next to a control plane, no root needed)"
        )
    if LOCK_FILE.exists():
        holder = LOCK_FILE.read_text().strip() or "?"
        if holder.isdigit() and Path(f"/proc/{holder}").exists():
            raise NodeError(f"another local node is running on this machine (pid {holder}); one at a time")


class NodeCluster:
    """Control plane + node + kubespiffe from its chart; files under `directory`. A context manager."""

    def __init__(
        self,
        directory: Path,
        trust_domain: str = "example.org",
        *,
        replicas: int = 2,
        values: Mapping[str, Any] | None = None,
        extra_images: tuple[Path, ...] = (),
    ) -> None:
        self.directory = directory
        self.trust_domain = trust_domain
        self.replicas = replicas
        self.extra_values = dict(values or {})
        self.extra_images = extra_images
        self.log_dir = directory / "logs"
        self.plane = ControlPlane("node", log_dir=self.log_dir, with_nodes=True)
        self.node = Node(self.plane, log_dir=self.log_dir)
        self.image: image.ImageRef | None = None
        self.timings: dict[str, float] = {}

    @property
    def kubeconfig(self) -> Path:
        return self.directory / "kubeconfig"

    def client(self) -> Client:
        return Client(KubeConfig.from_file(self.kubeconfig), field_manager="kubespiffe-devenv")

    def async_client(self) -> AsyncClient:
        return AsyncClient(KubeConfig.from_file(self.kubeconfig), field_manager="kubespiffe-devenv")

    def start(self) -> None:
        refuse_if_running()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(exist_ok=True)
        began = time.monotonic()
        reason = image.missing_requirements()
        if reason is not None:
            raise NodeError(reason)
        helm.ensure_helm()  # built by scripts/bootstrap; a fresh machine pays ~9 minutes here
        self.image = image.build_image()
        archive = image.cached_archive(self.image)
        self.timings["image"] = time.monotonic() - began
        _say(f"image {self.image.name}; starting the node (logs in {self.log_dir}) ...")
        try:
            self.node.start()
            self.timings["node"] = self.node.timings["setup"]
            stamp = time.monotonic()
            for path in (archive, *self.extra_images):
                self.node.import_image(path)
            self.timings["import"] = time.monotonic() - stamp
            _write_private(self.kubeconfig, self.plane.admin_kubeconfig())
            stamp = time.monotonic()
            self._install()
            self.wait_ready()
            self.wait_injecting()
            self.timings["install_to_ready"] = time.monotonic() - stamp
            bundle = asyncio.run(self._bundle())
            (self.directory / "bundle.pem").write_bytes(bundle)
            (self.directory / "image").write_text(self.image.name + "\n")
        except BaseException:
            self.stop()
            raise

    def _install(self) -> None:
        assert self.image is not None
        values = _merge(chart_values(self.image.name, self.trust_domain, self.replicas), self.extra_values)
        values_file = self.directory / "values.yaml"
        values_file.write_text(yaml.safe_dump(values, sort_keys=False))
        result = helm.run(
            "install",
            helm.RELEASE,
            str(helm.chart_dir()),
            "--namespace",
            NAMESPACE,
            "--create-namespace",
            "--kubeconfig",
            str(self.kubeconfig),
            "--values",
            str(values_file),
            check=False,
        )
        if result.returncode != 0:
            raise NodeError(f"helm install failed:\n{result.stderr.strip()}")

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Until the Deployment has all replicas Ready; on timeout, say what the pods are doing."""
        client = self.client()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            deployment = client.get(Deployment, DEPLOYMENT, namespace=NAMESPACE)
            status = deployment.status
            if status is not None and (status.readyReplicas or 0) >= self.replicas:
                return
            time.sleep(0.2)
        raise NodeError(f"kubespiffed not Ready after {timeout:.0f}s:\n{self.describe_kubespiffed()}")

    def wait_injecting(self, timeout: float = 60.0) -> None:
        """Until a pod created in a labelled namespace gets the sidecar (a server-side dry run).

        Ready pods are not enough: the webhook's caBundle and kube-proxy's rules for the Service follow a
        moment later, and with failurePolicy Ignore a pod created in between would silently go without.
        """
        client = self.client()
        check = "kubespiffe-injection-check"
        client.create(Namespace(metadata=ObjectMeta(name=check, labels={INJECT_LABEL: INJECT_ENABLED})))
        pod = Pod.from_dict(
            {
                "metadata": {"name": "check"},
                "spec": {
                    "containers": [{"name": "app", "image": "none"}],
                    "automountServiceAccountToken": False,
                },
            }
        )
        deadline = time.monotonic() + timeout
        try:
            while True:
                with contextlib.suppress(ApiError):  # e.g. the ServiceAccount `default` not made yet
                    created = client.create(pod, namespace=check, dry_run=True)
                    if created.spec is not None and created.spec.initContainers:
                        return
                if time.monotonic() > deadline:
                    raise NodeError(f"pods are not injected {timeout:.0f}s after kubespiffed was Ready")
                time.sleep(0.2)
        finally:
            client.delete(Namespace, check)

    def describe_kubespiffed(self) -> str:
        """Each kubespiffed pod's container state and the end of its logs, from the kubelet's log files."""
        lines = []
        for pod in self.client().list(Pod, namespace=NAMESPACE, labels=SELECTOR):
            assert pod.metadata is not None
            for status in (pod.status.containerStatuses if pod.status else None) or []:
                lines.append(f"{pod.metadata.name}: restarts={status.restartCount} state={status.state}")
            for log in sorted(Path("/var/log/pods").glob(f"{NAMESPACE}_{pod.metadata.name}_*/*/*.log")):
                lines.append(f"  {log.parent.name}/{log.name}:")
                lines += ["    " + line for line in log.read_text(errors="replace").splitlines()[-12:]]
        return "\n".join(lines)

    async def _bundle(self) -> bytes:
        client = self.async_client()
        try:
            return await authority_bundle_pem(client)
        finally:
            await client.close()

    def pod_volume(self, pod_uid: str, volume: str, kind: str = "projected") -> Path:
        """Where the kubelet writes a pod's volume on this machine (what the containers see mounted)."""
        return self.node.dir / "kubelet" / "pods" / pod_uid / "volumes" / f"kubernetes.io~{kind}" / volume

    def stop(self) -> None:
        """Stop the node and its control plane, restoring the host (see Node.stop)."""
        self.node.stop()

    def check_clean(self) -> None:
        self.node.check_clean()

    def __enter__(self) -> NodeCluster:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def pod_cgroup(pod_uid: str, controller: str) -> Path:
    """The pod's cgroup (v1, cgroupfs driver) under `controller`; its containers' cgroups are below it."""
    found = list(Path("/sys/fs/cgroup", controller).glob(f"kubepods*/**/pod{pod_uid}"))
    if len(found) != 1:
        raise NodeError(f"pod {pod_uid}: expected one {controller} cgroup, found {found}")
    return found[0]


def pod_processes(pod_uid: str) -> list[str]:
    """The command name of every process in the pod, the sandbox's pause included, sorted."""
    names = []
    for procs in pod_cgroup(pod_uid, "pids").rglob("cgroup.procs"):
        for pid in procs.read_text().split():
            with contextlib.suppress(FileNotFoundError):  # exited meanwhile
                names.append(Path(f"/proc/{pid}/comm").read_text().strip())
    return sorted(names)


def pod_memory_bytes(pod_uid: str) -> int:
    """The pod cgroup's memory in use (all its containers and the sandbox; page cache included)."""
    return int((pod_cgroup(pod_uid, "memory") / "memory.usage_in_bytes").read_text())


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
