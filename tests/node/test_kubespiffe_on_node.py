"""kubespiffe as a platform team installs it (its image, `helm install` of its chart), on the real node.

Application pods run go-spiffe's reference client (tools/interop) and know nothing of kubespiffe but
SPIFFE_ENDPOINT_SOCKET: the namespace label alone gets them the injected agent, which attests with the
projected token the kubelet mounts and keeps fresh.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import yaml
from lightkube import AsyncClient, KubeConfig
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Pod, ServiceAccount
from lightkube.resources.rbac_authorization_v1 import ClusterRole, ClusterRoleBinding, Role, RoleBinding

from kubespiffe.devenv import helm
from kubespiffe.devenv.nodecluster import NAMESPACE, SELECTOR
from kubespiffe.devenv.workloads import ensure_namespace
from kubespiffe.injection.settings import INJECTED_ANNOTATION, SIDECAR_NAME
from kubespiffe.injection.sidecar import STARTUP_WAIT
from kubespiffe.kube.client import WorkloadRegistration
from tests.node.conftest import TRUST_DOMAIN, Env, record
from tests.node.pods import NODE_TESTS, dump_tasks, logs, wait_phase, wait_service_account

pytestmark = NODE_TESTS


@pytest.fixture(scope="module")
async def kube(env: Env) -> AsyncIterator[AsyncClient]:
    client = AsyncClient(KubeConfig.from_file(env.cluster.kubeconfig), field_manager="kubespiffe-node-tests")
    yield client
    await client.close()


async def new_namespace(kube: AsyncClient, inject: bool, accounts: tuple[str, ...] = ()) -> str:
    name = f"n-{uuid.uuid4().hex[:10]}"
    await ensure_namespace(kube, name, {"kubespiffe.io/inject": "enabled"} if inject else {})
    await wait_service_account(kube, name)
    for account in accounts:
        await kube.create(ServiceAccount(metadata=ObjectMeta(name=account)), namespace=name)
    return name


async def register(kube: AsyncClient, namespace: str, account: str, ttl: str = "1m") -> None:
    """A WorkloadRegistration for one ServiceAccount, waited on until kubespiffed marks it Ready."""
    registration = WorkloadRegistration(
        metadata=ObjectMeta(name=account, namespace=namespace),
        spec={"serviceAccountNames": [account], "x509SVIDTTL": ttl},
    )
    await kube.create(registration)
    deadline = time.monotonic() + 30
    while True:
        current = await kube.get(WorkloadRegistration, account, namespace=namespace)
        conditions = (current.get("status") or {}).get("conditions") or []
        if any(c["type"] == "Ready" and c["status"] == "True" for c in conditions):
            return
        assert time.monotonic() < deadline, f"registration {namespace}/{account} not Ready: {conditions}"
        await asyncio.sleep(0.1)


def spiffe_id(namespace: str, account: str) -> str:
    return f"spiffe://{TRUST_DOMAIN}/ns/{namespace}/sa/{account}"


def app_pod(name: str, image: str, account: str, args: list[str], restart: str = "Never") -> Pod:
    """What an application team writes: no sidecar, no volumes, no kubespiffe anything."""
    return Pod.from_dict(
        {
            "metadata": {"name": name, "labels": {"app": name}},
            "spec": {
                "serviceAccountName": account,
                "restartPolicy": restart,
                "terminationGracePeriodSeconds": 0,
                "containers": [{"name": "app", "image": image, "imagePullPolicy": "Never", "args": args}],
            },
        }
    )


def output(text: str) -> dict[str, Any]:
    """The one JSON document spiffe-interop prints (the kubelet's log may hold other lines too)."""
    document: dict[str, Any] = json.loads(text.strip().splitlines()[-1])
    return document


async def kubespiffe_cli(env: Env, *args: str) -> subprocess.CompletedProcess[str]:
    """The kubespiffe CLI against the node cluster, as an operator runs it."""
    kubeconfig = str(env.cluster.kubeconfig)
    command = [
        sys.executable,
        "-m",
        "kubespiffe.cli.main",
        *args,
        "--kubeconfig",
        kubeconfig,
        "--namespace",
        NAMESPACE,
    ]
    return await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True, check=False)


async def kubespiffed_logs(kube: AsyncClient) -> str:
    pods = [p async for p in kube.list(Pod, namespace=NAMESPACE, labels=SELECTOR)]
    return "".join(
        [await logs(kube, p.metadata.name, NAMESPACE) for p in pods if p.metadata and p.metadata.name]
    )


async def test_injected_app_fetches_svid(env: Env, kube: AsyncClient) -> None:
    """The namespace label alone: the agent is injected, starts first, and the app gets its SVID."""
    namespace = await new_namespace(kube, inject=True, accounts=("app",))
    await register(kube, namespace, "app")
    created = time.monotonic()
    await kube.create(app_pod("fetch", env.interop_image, "app", ["fetch-x509"]), namespace=namespace)
    await wait_phase(kube, "fetch", namespace, ("Succeeded",), timeout=90)
    record("pod created -> app exited with its SVID", time.monotonic() - created)
    fetched = output(await logs(kube, "fetch", namespace, container="app"))
    assert [s["id"] for s in fetched["svids"]] == [spiffe_id(namespace, "app")]
    assert fetched["bundles"] == {TRUST_DOMAIN: 1}
    pod = await kube.get(Pod, "fetch", namespace=namespace)
    assert pod.metadata is not None and pod.spec is not None
    assert INJECTED_ANNOTATION in (pod.metadata.annotations or {})
    (sidecar,) = pod.spec.initContainers or []
    assert sidecar.name == SIDECAR_NAME and sidecar.restartPolicy == "Always"
    assert env.cluster.image is not None and sidecar.image == env.cluster.image.name
    (app,) = pod.spec.containers
    assert {e.name for e in app.env or []} == {"SPIFFE_ENDPOINT_SOCKET"}


async def test_namespace_without_label_is_not_injected(env: Env, kube: AsyncClient) -> None:
    namespace = await new_namespace(kube, inject=False, accounts=("app",))
    await kube.create(
        app_pod("plain", env.interop_image, "app", ["fetch-x509", "-timeout", "2s"]), namespace=namespace
    )
    await wait_phase(kube, "plain", namespace, ("Failed",), timeout=60)
    pod = await kube.get(Pod, "plain", namespace=namespace)
    assert pod.metadata is not None and pod.spec is not None
    assert not pod.spec.initContainers
    assert [v.name for v in pod.spec.volumes or [] if v.name.startswith("kubespiffe")] == []
    assert INJECTED_ANNOTATION not in (pod.metadata.annotations or {})
    assert "socket address is not configured" in await logs(kube, "plain", namespace)


async def test_unregistered_pod_is_refused(env: Env, kube: AsyncClient) -> None:
    """Injected, but no registration names its ServiceAccount: no SVID, and kubespiffed says why."""
    namespace = await new_namespace(kube, inject=True, accounts=("stranger",))
    await kube.create(app_pod("stranger", env.interop_image, "stranger", ["fetch-x509"]), namespace=namespace)
    who = f"pod=stranger namespace={namespace}"
    deadline = time.monotonic() + 60
    while who not in (text := await kubespiffed_logs(kube)):
        assert time.monotonic() < deadline, "kubespiffed never logged the unregistered pod"
        await asyncio.sleep(0.5)
    line = next(entry for entry in text.splitlines() if who in entry)
    assert "rejected" in line and "no registration matches this pod" in line, line
    pod = await kube.get(Pod, "stranger", namespace=namespace)
    statuses = (pod.status.containerStatuses if pod.status else None) or []
    assert all(s.state is None or s.state.running is None for s in statuses), (
        "the app started without an SVID"
    )
    # The kubelet is inside the sidecar's postStart hook (waiting for an SVID) and holds the pod's deletion
    # until it ends: bounded by the hook's wait (STARTUP_WAIT) and the grace period.
    deleted = time.monotonic()
    await kube.delete(Pod, "stranger", namespace=namespace, grace_period=5)
    while [p async for p in kube.list(Pod, namespace=namespace)]:
        took = time.monotonic() - deleted
        assert took < STARTUP_WAIT + 5 + 10, f"the pod was still there {took:.0f} s after its deletion"
        await asyncio.sleep(0.5)


async def test_mtls_survives_kubespiffed_pod_loss_and_ca_rotation(env: Env, kube: AsyncClient) -> None:
    """Two injected pods do mTLS once a second for 50 s, with 1-minute SVIDs (renewed at 30 s), while one
    kubespiffed pod is deleted and then the CA is rotated: every handshake succeeds, and renewals happen."""
    namespace = await new_namespace(kube, inject=True, accounts=("server", "client"))
    await register(kube, namespace, "server")
    await register(kube, namespace, "client")
    server = app_pod(
        "server",
        env.interop_image,
        "server",
        [
            "mtls-server",
            "-listen",
            "0.0.0.0:8443",
            "-authorize",
            spiffe_id(namespace, "client"),
            "-timeout",
            "5m",
        ],
        restart="Always",
    )
    await kube.create(server, namespace=namespace)
    running = await wait_phase(kube, "server", namespace, ("Running",), timeout=90)
    assert running.status is not None and running.status.podIP
    client_args = [
        "mtls-client",
        "-connect",
        f"{running.status.podIP}:8443",
        "-authorize",
        spiffe_id(namespace, "server"),
        "-count",
        "50",
        "-interval",
        "1s",
        "-timeout",
        "3m",
    ]
    await kube.create(app_pod("client", env.interop_image, "client", client_args), namespace=namespace)
    await wait_phase(kube, "client", namespace, ("Running",), timeout=90)

    victims = [p async for p in kube.list(Pod, namespace=NAMESPACE, labels=SELECTOR)]
    assert victims and victims[0].metadata is not None and victims[0].metadata.name
    await kube.delete(Pod, victims[0].metadata.name, namespace=NAMESPACE)
    await asyncio.sleep(8)
    rotate = await kubespiffe_cli(env, "ca", "rotate")
    assert rotate.returncode == 0, rotate.stderr

    await wait_phase(kube, "client", namespace, ("Succeeded",), timeout=120)
    results = output(await logs(kube, "client", namespace, container="app"))["results"]
    failed = [r for r in results if "error" in r]
    if failed:  # what each side's injected agent saw: renewals, bundle updates, stream errors, and tasks
        replicas = [p async for p in kube.list(Pod, namespace=NAMESPACE, labels=SELECTOR)]
        for name in ("server", "client"):
            dump_tasks(await kube.get(Pod, name, namespace=namespace), "agent")
        for replica in replicas:
            dump_tasks(replica, "kubespiffed")
        await asyncio.sleep(1)
        agents = {
            pod: await logs(kube, pod, namespace, container=SIDECAR_NAME) for pod in ("server", "client")
        }
        for replica in replicas:
            assert replica.metadata is not None and replica.metadata.name
            name = replica.metadata.name
            agents[f"kubespiffed {name}"] = await logs(kube, name, NAMESPACE)
        detail = "\n".join(f"--- {pod}:\n{text[-12000:]}" for pod, text in agents.items())
        raise AssertionError(f"{len(failed)} of {len(results)} handshakes failed: {failed[:3]}\n{detail}")
    assert all(r["body"] == f"hello {spiffe_id(namespace, 'client')}" for r in results)
    serials = [r["client_svid_serial"] for r in results]
    renewals = sum(1 for a, b in itertools.pairwise(serials) if a != b)
    assert renewals >= 1, "the client's SVID was never renewed during 50 s of a 1-minute SVID"
    show = (await kubespiffe_cli(env, "ca", "show")).stdout
    assert "retired" in show or "prepared" in show, f"the rotation did not take: {show}"
    await asyncio.to_thread(env.cluster.wait_ready)  # the deleted replica is back


async def test_kubespiffed_rbac_is_the_charts(env: Env, kube: AsyncClient) -> None:
    """kubespiffed runs with exactly the RBAC `helm template` renders for the values installed."""
    rendered = helm.template(
        "--values", str(env.cluster.directory / "values.yaml"), "--show-only", "templates/rbac.yaml"
    )
    kinds = ("ClusterRole", "Role", "ClusterRoleBinding", "RoleBinding")
    expected = {
        (doc["kind"], doc["metadata"].get("namespace"), doc["metadata"]["name"]): doc.get("rules")
        or doc["subjects"]
        for doc in yaml.safe_load_all(rendered)
        if doc and doc["kind"] in kinds
    }
    subject = {"kind": "ServiceAccount", "name": "kubespiffed", "namespace": NAMESPACE}
    found: dict[tuple[str, str | None, str], Any] = {}
    for binding_kind in (ClusterRoleBinding, RoleBinding):
        async for binding in kube.list(binding_kind, namespace="*" if binding_kind is RoleBinding else None):
            subjects = [s.to_dict() for s in binding.subjects or []]
            if not any({k: s.get(k) for k in subject} == subject for s in subjects):
                continue
            meta = binding.metadata
            found[(binding_kind.__name__, meta.namespace, meta.name)] = subjects
            ref = binding.roleRef
            namespace = None if ref.kind == "ClusterRole" else meta.namespace
            role = await kube.get(
                ClusterRole if ref.kind == "ClusterRole" else Role, ref.name, namespace=namespace
            )
            found[(ref.kind, namespace, ref.name)] = [r.to_dict() for r in role.rules or []]
    assert _normal(found) == _normal(expected)


def _normal(objects: dict[tuple[str, str | None, str], Any]) -> dict[tuple[str, str | None, str], str]:
    return {key: json.dumps(value, sort_keys=True) for key, value in objects.items()}
