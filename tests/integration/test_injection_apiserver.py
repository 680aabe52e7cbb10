"""A real kube-apiserver accepts what the injector produces, and would refuse what it declines to produce.

No webhook is registered here (the HTTP adapter is tested elsewhere): each test runs `review` on the
AdmissionReview the API server would send, applies the returned JSON Patch as the API server does, and
creates or updates the Pod. The namespaces enforce the `restricted` Pod Security Standard, so the
sidecar must satisfy it too.
"""

from __future__ import annotations

import base64
import copy
import json
import uuid
from typing import Any

import jsonpatch
import pytest
from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Pod, ServiceAccount

from kubespiffe.devenv.workloads import ensure_namespace
from kubespiffe.injection import (
    INJECTED_ANNOTATION,
    SIDECAR_NAME,
    SOCKET_ENV,
    InjectionSettings,
    Patch,
    mutate,
    review,
)

pytestmark = pytest.mark.integration

SETTINGS = InjectionSettings(image="registry.invalid/kubespiffe:test", namespace="kubespiffe-system")
LABELS = {"kubespiffe.io/inject": "enabled", "pod-security.kubernetes.io/enforce": "restricted"}
RESTRICTED = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "runAsNonRoot": True,
    "runAsUser": 1000,
    "seccompProfile": {"type": "RuntimeDefault"},
}


@pytest.fixture
async def enabled(kube: AsyncClient) -> str:
    """A namespace labelled for injection and restricted, with the ServiceAccount the pods use."""
    name = f"inj-{uuid.uuid4().hex[:10]}"
    await ensure_namespace(kube, name, LABELS)
    await kube.create(ServiceAccount(metadata=ObjectMeta(name="web", namespace=name)))
    return name


def container(name: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, "image": "registry.invalid/app:1", "securityContext": dict(RESTRICTED), **fields}


def pod_dict(namespace: str, **spec: Any) -> dict[str, Any]:
    spec.setdefault("containers", [container("app")])
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"p-{uuid.uuid4().hex[:8]}", "namespace": namespace},
        "spec": {"serviceAccountName": "web", "automountServiceAccountToken": False, **spec},
    }


def admission(pod: dict[str, Any], operation: str = "CREATE", **extra: Any) -> dict[str, Any]:
    request = {
        "uid": str(uuid.uuid4()),
        "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "namespace": pod["metadata"]["namespace"],
        "operation": operation,
        "object": pod,
        **extra,
    }
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}


def admit(document: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """What the API server does with our answer: apply the patch, collect the warnings."""
    response = review(document, SETTINGS, LABELS)["response"]
    assert response["allowed"] is True
    pod: dict[str, Any] = document["request"]["object"]
    if "patch" in response:
        assert response["patchType"] == "JSONPatch"
        pod = jsonpatch.apply_patch(pod, json.loads(base64.b64decode(response["patch"])))
    return pod, response.get("warnings", [])


async def test_injected_pod_is_accepted_and_stored_with_the_native_sidecar(
    kube: AsyncClient, enabled: str
) -> None:
    original = pod_dict(
        enabled,
        initContainers=[container("setup", command=["true"])],
        containers=[
            container("app", env=[{"name": "ENDPOINT", "value": "$(SPIFFE_ENDPOINT_SOCKET)"}]),
            container("worker", volumeMounts=[{"name": "data", "mountPath": "/run"}]),
        ],
        volumes=[{"name": "data", "emptyDir": {}}],
    )
    original["metadata"]["annotations"] = {"example.com/kept": "kept"}
    patched, warnings = admit(admission(original))
    assert warnings == []

    await kube.create(Pod.from_dict(patched))
    stored = await kube.get(Pod, patched["metadata"]["name"], namespace=enabled)
    spec = stored.spec
    assert [c.name for c in spec.initContainers] == ["setup", SIDECAR_NAME]
    sidecar = spec.initContainers[1]
    assert sidecar.restartPolicy == "Always"
    assert sidecar.command == SETTINGS.agent_command()
    assert sidecar.lifecycle.postStart.exec.command == [
        *("kubespiffe", "probe", "--socket", "/run/spiffe/agent.sock", "--wait", "20")
    ]
    assert sidecar.securityContext.runAsUser == 65532 and sidecar.securityContext.readOnlyRootFilesystem
    assert spec.initContainers[0].volumeMounts is None and spec.initContainers[0].env is None
    volumes = {v.name: v for v in spec.volumes}
    token = volumes["kubespiffe-token"].projected.sources[0].serviceAccountToken
    assert (token.audience, token.expirationSeconds, token.path) == ("kubespiffe", 600, "token")
    assert volumes["kubespiffe-bundle"].configMap.name == "kubespiffe-bundle"
    assert volumes["kubespiffe-socket"].emptyDir.medium == "Memory"
    for app in spec.containers:
        assert (app.env[0].name, app.env[0].value) == (SOCKET_ENV, "unix:///run/spiffe/agent.sock")
        socket = [m for m in app.volumeMounts if m.name == "kubespiffe-socket"]
        assert [(m.mountPath, m.readOnly) for m in socket] == [("/run/spiffe", True)]
    assert stored.metadata.annotations == {"example.com/kept": "kept", INJECTED_ANNOTATION: SETTINGS.version}

    # What the server stored (with its defaults filled in) is recognised as done: a reinvocation or a
    # re-applied manifest changes nothing.
    again, warnings = admit(admission(stored.to_dict()))
    assert again == stored.to_dict() and warnings == []


async def test_debug_container_of_an_injected_pod_is_wired_and_accepted(
    kube: AsyncClient, enabled: str
) -> None:
    created, _ = admit(admission(pod_dict(enabled)))
    await kube.create(Pod.from_dict(created))
    name = created["metadata"]["name"]
    # A first debug container added while the webhook was not called: it stays unwired, and the API
    # server forbids changing it later, so the next review must leave it alone.
    running = (await kube.get(Pod, name, namespace=enabled)).to_dict()
    running["spec"]["ephemeralContainers"] = [container("unwired", targetContainerName="app")]
    await kube.replace(Pod.Ephemeralcontainers.from_dict(running), name, namespace=enabled)
    running = (await kube.get(Pod, name, namespace=enabled)).to_dict()

    debugged = copy.deepcopy(running)
    debugged["spec"]["ephemeralContainers"].append(
        container("debugger", targetContainerName="app", stdin=True, tty=True)
    )
    update = admission(debugged, "UPDATE", subResource="ephemeralcontainers", oldObject=running)
    patched, warnings = admit(update)
    assert warnings == [] and patched != debugged

    await kube.replace(Pod.Ephemeralcontainers.from_dict(patched), name, namespace=enabled)
    stored = await kube.get(Pod, name, namespace=enabled)
    unwired, debugger = stored.spec.ephemeralContainers
    assert unwired.env is None and unwired.volumeMounts is None
    assert (debugger.env[0].name, debugger.volumeMounts[0].mountPath) == (SOCKET_ENV, "/run/spiffe")


CLASHES: list[tuple[str, dict[str, Any], dict[str, Any], str]] = [
    # (case, spec that is refused, the same spec without the clash, what the server says to a naive patch)
    (
        "volume name",
        {"volumes": [{"name": "kubespiffe-socket", "emptyDir": {}}]},
        {"volumes": [{"name": "mine", "emptyDir": {}}]},
        "Duplicate value",
    ),
    (
        "mount path",
        {
            "volumes": [{"name": "mine", "emptyDir": {}}],
            "containers": [container("app", volumeMounts=[{"name": "mine", "mountPath": "/run/spiffe"}])],
        },
        {
            "volumes": [{"name": "mine", "emptyDir": {}}],
            "containers": [container("app", volumeMounts=[{"name": "mine", "mountPath": "/data"}])],
        },
        "must be unique",
    ),
    (
        "container name",
        {"initContainers": [container(SIDECAR_NAME, command=["true"])]},
        {"initContainers": [container("setup", command=["true"])]},
        "Duplicate value",
    ),
]


@pytest.mark.parametrize(("case", "clashing", "clean", "error"), CLASHES, ids=[c[0] for c in CLASHES])
async def test_refused_pod_is_created_unchanged_where_a_naive_patch_is_rejected(
    kube: AsyncClient, enabled: str, case: str, clashing: dict[str, Any], clean: dict[str, Any], error: str
) -> None:
    pod = pod_dict(enabled, **clashing)
    admitted, warnings = admit(admission(pod))
    assert admitted == pod
    assert len(warnings) == 1 and warnings[0].startswith("kubespiffe: sidecar not injected:")
    await kube.create(Pod.from_dict(admitted))
    stored = await kube.get(Pod, pod["metadata"]["name"], namespace=enabled)
    assert not any(
        c.name == SIDECAR_NAME and c.restartPolicy == "Always" for c in stored.spec.initContainers or []
    )
    assert INJECTED_ANNOTATION not in (stored.metadata.annotations or {})

    # The refusal is needed: the patch made for the clean twin, applied to this pod, is invalid.
    twin = pod_dict(enabled, **clean)
    decision = mutate(twin, enabled, SETTINGS)
    assert isinstance(decision, Patch)
    naive = jsonpatch.apply_patch(pod, list(decision.ops))
    naive["metadata"]["name"] += "-naive"
    with pytest.raises(ApiError) as refused:
        await kube.create(Pod.from_dict(naive))
    assert refused.value.status.code == 422 and error in (refused.value.status.message or "")


async def test_conflicting_socket_env_is_refused_and_the_pod_created_unchanged(
    kube: AsyncClient, enabled: str
) -> None:
    pod = pod_dict(
        enabled, containers=[container("app", env=[{"name": SOCKET_ENV, "value": "unix:///x.sock"}])]
    )
    admitted, warnings = admit(admission(pod))
    assert admitted == pod and "SPIFFE_ENDPOINT_SOCKET" in warnings[0]
    await kube.create(Pod.from_dict(admitted))
    stored = await kube.get(Pod, pod["metadata"]["name"], namespace=enabled)
    assert stored.spec.initContainers is None
    assert [(e.name, e.value) for e in stored.spec.containers[0].env] == [(SOCKET_ENV, "unix:///x.sock")]
