"""The demo's real-node path (root): `kubespiffe dev up --node`, then pods that really run.

kubespiffe is installed from its image and Helm chart on a local kubelet; an unmodified pod in a labelled
namespace gets the injected agent and fetches its SVID over the Workload API inside the pod; a pod whose
ServiceAccount no registration names is refused, as kubespiffed's log says.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from lightkube import Client, KubeConfig
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Namespace, Pod, ServiceAccount

from kubespiffe.devenv.nodecluster import NAMESPACE as KUBESPIFFE_NAMESPACE
from kubespiffe.devenv.nodecluster import SELECTOR
from kubespiffe.injection.settings import INJECT_ENABLED, INJECT_LABEL, SIDECAR_NAME
from kubespiffe.kube.client import WorkloadRegistration

NAMESPACE = "demo"


def _say(text: str) -> None:
    print(f"\n\033[1m{text}\033[0m", flush=True)


def _start(directory: Path) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "kubespiffe.cli.main", "dev", "up", "--node", "--dir", str(directory)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.strip() == "ready":
            return proc
    raise RuntimeError(f"`kubespiffe dev up --node` exited ({proc.wait()}) before it was ready")


def _wait(check: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return True
        time.sleep(0.2)
    return False


def _pods(client: Client, namespace: str, **labels: str) -> None:
    print(f"{'NAME':40} {'READY':6} STATUS")
    for pod in client.list(Pod, namespace=namespace, labels=labels or None):
        assert pod.metadata is not None and pod.status is not None
        statuses = [*(pod.status.initContainerStatuses or []), *(pod.status.containerStatuses or [])]
        ready = f"{sum(bool(s.ready) for s in statuses)}/{len(statuses)}"
        print(f"{pod.metadata.name:40} {ready:6} {pod.status.phase}")


def _app(name: str, image: str, account: str) -> Pod:
    """An application pod as its team writes it: nothing about kubespiffe in it."""
    return Pod.from_dict(
        {
            "metadata": {"name": name},
            "spec": {
                "serviceAccountName": account,
                "restartPolicy": "Never",
                "terminationGracePeriodSeconds": 0,
                "containers": [
                    {
                        "name": "app",
                        "image": image,
                        "imagePullPolicy": "Never",
                        "command": ["kubespiffe", "fetch", "x509", "--write", "/tmp"],
                    }
                ],
            },
        }
    )


def _phase(client: Client, name: str) -> str | None:
    pod = client.get(Pod, name, namespace=NAMESPACE)
    return pod.status.phase if pod.status else None


def _show(directory: Path) -> bool:
    client = Client(KubeConfig.from_file(directory / "kubeconfig"), field_manager="kubespiffe-demo")
    image = (directory / "image").read_text().strip()
    _say(f"2. kubectl get pods -n {KUBESPIFFE_NAMESPACE}: kubespiffed from the chart, image {image}")
    _pods(client, KUBESPIFFE_NAMESPACE)
    _say(f"3. namespace {NAMESPACE} labelled {INJECT_LABEL}={INJECT_ENABLED}; a registration for 'frontend'")
    client.create(Namespace(metadata=ObjectMeta(name=NAMESPACE, labels={INJECT_LABEL: INJECT_ENABLED})))
    for account in ("frontend", "unregistered"):
        _wait(lambda: any(True for _ in client.list(ServiceAccount, namespace=NAMESPACE)), 30)
        client.create(ServiceAccount(metadata=ObjectMeta(name=account)), namespace=NAMESPACE)
    client.create(
        WorkloadRegistration(
            metadata=ObjectMeta(name="frontend", namespace=NAMESPACE),
            spec={"serviceAccountNames": ["frontend"]},
        )
    )
    time.sleep(1)
    client.create(_app("frontend", image, "frontend"), namespace=NAMESPACE)
    client.create(_app("unregistered", image, "unregistered"), namespace=NAMESPACE)
    fetched = _wait(lambda: _phase(client, "frontend") in ("Succeeded", "Failed"), 90)
    _say("4. the injected sidecar (the pod spec as created holds only the app container)")
    pod = client.get(Pod, "frontend", namespace=NAMESPACE)
    assert pod.spec is not None
    for init in pod.spec.initContainers or []:
        if init.name == SIDECAR_NAME:
            print(f"initContainers[{init.name}]: restartPolicy={init.restartPolicy} image={init.image}")
            print(f"  command: {' '.join(init.command or [])}")
    app = pod.spec.containers[0]
    print(f"containers[app].env: {json.dumps([e.to_dict() for e in app.env or []])}")
    print(f"containers[app].volumeMounts: {[m.mountPath for m in app.volumeMounts or []]}")
    _say("5. kubectl logs frontend -c app: the SVID fetched inside the pod over the Workload API")
    print("".join(client.log("frontend", namespace=NAMESPACE, container="app")).rstrip())
    succeeded = fetched and _phase(client, "frontend") == "Succeeded"
    _say("6. the unregistered pod: its agent is refused; kubespiffed's log")
    time.sleep(5)
    _pods(client, NAMESPACE)
    refused = False
    for daemon in client.list(Pod, namespace=KUBESPIFFE_NAMESPACE, labels=SELECTOR):
        assert daemon.metadata is not None and daemon.metadata.name is not None
        for line in client.log(daemon.metadata.name, namespace=KUBESPIFFE_NAMESPACE):
            if f"namespace={NAMESPACE}" in line:
                print(line.rstrip())
                refused = refused or ("rejected pod=unregistered" in line)
    return succeeded and refused


def run(directory: Path) -> bool:
    directory.mkdir(parents=True, exist_ok=True)
    _say("1. sudo kubespiffe dev up --node: containerd + kubelet, kubespiffe from its image and Helm chart")
    dev = _start(directory)
    try:
        return _show(directory)
    finally:
        _say("7. stopping (the host is restored)")
        dev.send_signal(signal.SIGINT)
        dev.wait(120)
