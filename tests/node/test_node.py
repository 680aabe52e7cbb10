"""Pods really run on the local node: tokens, native sidecars, pod networking, Deployments, Services."""

from __future__ import annotations

import asyncio
import time

import jwt
import pytest
from lightkube import AsyncClient
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.core_v1 import Node as NodeResource
from lightkube.resources.core_v1 import Pod, Service

from kubespiffe.devenv.controlplane import KUBERNETES_SERVICE_IP, SERVICE_ACCOUNT_ISSUER
from kubespiffe.devenv.node import NODE_IP, Node, NodeError
from tests.node.conftest import Cluster, record
from tests.node.pods import FOREVER, NODE_TESTS, container, logs, pod_manifest, wait_log, wait_phase

pytestmark = NODE_TESTS

HTTP_SERVER = (
    "trap 'exit 0' TERM; mkdir -p /www && echo \"pong from $HOSTNAME\" > /www/index.html && "
    "httpd -f -p 8080 -h /www & wait"
)


def fetch_script(host: str, port: int) -> str:
    """GET / with nc, retried for a few seconds (kube-proxy or the server may still be starting); print the
    body's line. Not wget: Debian's static busybox wget crashes in glibc's resolver even for an IP."""
    get = f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 1 {host} {port} > /tmp/response 2>&1"
    return (
        f"for i in $(seq 100); do {get}; grep pong /tmp/response && exit 0; sleep 0.1; done;"
        " cat /tmp/response; exit 1"
    )


async def test_node_is_ready(cluster: Cluster, kube: AsyncClient) -> None:
    node = await kube.get(NodeResource, cluster.node.name)
    assert node.status is not None and node.status.conditions is not None
    ready = {c.type: c.status for c in node.status.conditions}
    assert ready["Ready"] == "True"
    assert [(a.type, a.address) for a in node.status.addresses or [] if a.type == "InternalIP"] == [
        ("InternalIP", NODE_IP)
    ]
    assert node.status.nodeInfo is not None
    assert cluster.plane.binaries is not None
    assert node.status.nodeInfo.kubeletVersion == cluster.plane.binaries.kubernetes_version
    assert node.status.nodeInfo.containerRuntimeVersion.startswith("containerd://")


def test_second_node_refused(cluster: Cluster) -> None:
    with pytest.raises(NodeError, match="another local node is running"):
        Node(cluster.plane, name="second").start()


async def test_projected_token_is_readable(cluster: Cluster, kube: AsyncClient, namespace: str) -> None:
    """The kubelet mounts a pod-bound token for audience kubespiffe, signed by the API server's key."""
    pod = pod_manifest(
        "token",
        [
            container(
                "app",
                f"cat /var/run/secrets/kubespiffe/token; echo; {FOREVER}",
                volumeMounts=[{"name": "token", "mountPath": "/var/run/secrets/kubespiffe"}],
            )
        ],
        volumes=[
            {
                "name": "token",
                "projected": {
                    "sources": [
                        {
                            "serviceAccountToken": {
                                "audience": "kubespiffe",
                                "expirationSeconds": 600,
                                "path": "token",
                            }
                        }
                    ]
                },
            }
        ],
    )
    created = time.monotonic()
    await kube.create(pod, namespace=namespace)
    running = await wait_phase(kube, "token", namespace, ("Running",))
    record("pod create -> Running", time.monotonic() - created)
    token = (await wait_log(kube, "token", namespace, "ey")).strip()
    public_key = (cluster.plane.dir / "sa.pub").read_bytes()
    claims = jwt.decode(
        token, public_key, algorithms=["RS256"], audience="kubespiffe", issuer=SERVICE_ACCOUNT_ISSUER
    )
    assert claims["sub"] == f"system:serviceaccount:{namespace}:default"
    bound = claims["kubernetes.io"]
    assert bound["pod"] == {"name": "token", "uid": running.metadata.uid}
    assert bound["node"]["name"] == cluster.node.name
    assert claims["exp"] - claims["iat"] == 600


async def test_native_sidecar_starts_before_app(kube: AsyncClient, namespace: str) -> None:
    """An init container with restartPolicy Always keeps running beside the app, which starts after it."""
    shared = [{"name": "shared", "mountPath": "/shared"}]
    pod = pod_manifest(
        "sidecar",
        [
            container(
                "app",
                f"test -f /shared/sidecar-up && echo app-after-sidecar || echo app-first; {FOREVER}",
                volumeMounts=shared,
            )
        ],
        initContainers=[
            container(
                "sidecar",
                f"touch /shared/sidecar-up; echo sidecar-up; {FOREVER}",
                restartPolicy="Always",
                volumeMounts=shared,
                startupProbe={"exec": {"command": ["test", "-f", "/shared/sidecar-up"]}, "periodSeconds": 1},
            )
        ],
        volumes=[{"name": "shared", "emptyDir": {}}],
    )
    await kube.create(pod, namespace=namespace)
    await wait_phase(kube, "sidecar", namespace, ("Running",))
    assert "app-after-sidecar" in await wait_log(kube, "sidecar", namespace, "app-", container="app")
    assert "sidecar-up" in await logs(kube, "sidecar", namespace, container="sidecar")
    status = (await kube.get(Pod, "sidecar", namespace=namespace)).status
    assert status is not None and status.initContainerStatuses is not None
    (sidecar,) = status.initContainerStatuses
    assert sidecar.state is not None and sidecar.state.running is not None and sidecar.started


async def test_pods_reach_each_other(kube: AsyncClient, namespace: str) -> None:
    await kube.create(pod_manifest("server", [container("httpd", HTTP_SERVER)]), namespace=namespace)
    server = await wait_phase(kube, "server", namespace, ("Running",))
    assert server.status is not None and server.status.podIP is not None
    assert server.status.podIP.startswith("10.244.0.") and server.status.podIP != NODE_IP
    script = fetch_script(server.status.podIP, 8080)
    await kube.create(pod_manifest("client", [container("nc", script)], restart="Never"), namespace=namespace)
    await wait_phase(kube, "client", namespace, ("Succeeded",))
    assert (await logs(kube, "client", namespace)).strip() == "pong from server"


async def test_deployment_creates_pods(kube: AsyncClient, namespace: str) -> None:
    """The controller-manager's Deployment and ReplicaSet controllers and the scheduler at work."""
    labels = {"app": "sleeper"}
    template = pod_manifest("unused", [container("sleep", FOREVER)], labels=labels).to_dict()
    del template["metadata"]["name"]
    deployment = Deployment.from_dict(
        {
            "metadata": {"name": "sleeper"},
            "spec": {"replicas": 2, "selector": {"matchLabels": labels}, "template": template},
        }
    )
    await kube.create(deployment, namespace=namespace)
    deadline = time.monotonic() + 60
    while True:
        current = await kube.get(Deployment, "sleeper", namespace=namespace)
        if current.status is not None and current.status.readyReplicas == 2:
            break
        assert time.monotonic() < deadline, f"deployment not ready: {current.status}"
        await asyncio.sleep(0.1)
    pods = [p async for p in kube.list(Pod, namespace=namespace, labels=labels)]
    assert len(pods) == 2
    assert all(p.spec is not None and p.spec.nodeName for p in pods)


async def test_service_cluster_ip_reaches_pod(kube: AsyncClient, namespace: str) -> None:
    """kube-proxy's iptables rules: a pod reaches another through the Service's ClusterIP."""
    await kube.create(
        pod_manifest("backend", [container("httpd", HTTP_SERVER)], labels={"app": "backend"}),
        namespace=namespace,
    )
    service = Service.from_dict(
        {
            "metadata": {"name": "backend"},
            "spec": {"selector": {"app": "backend"}, "ports": [{"port": 80, "targetPort": 8080}]},
        }
    )
    created = await kube.create(service, namespace=namespace)
    assert created.spec is not None and created.spec.clusterIP is not None
    await wait_phase(kube, "backend", namespace, ("Running",))
    script = fetch_script(created.spec.clusterIP, 80)
    await kube.create(pod_manifest("client", [container("nc", script)], restart="Never"), namespace=namespace)
    await wait_phase(kube, "client", namespace, ("Succeeded",))
    assert (await logs(kube, "client", namespace)).strip() == "pong from backend"


async def test_pod_reaches_api_server(kube: AsyncClient, namespace: str) -> None:
    """The `kubernetes` Service has the API server (on the bridge address) as its endpoint."""
    script = f"nc -w 2 {KUBERNETES_SERVICE_IP} 443 < /dev/null && echo connected"
    await kube.create(pod_manifest("api", [container("nc", script)], restart="Never"), namespace=namespace)
    await wait_phase(kube, "api", namespace, ("Succeeded",))
    assert (await logs(kube, "api", namespace)).strip() == "connected"
