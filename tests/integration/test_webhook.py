"""Sidecar injection through a real kube-apiserver calling kubespiffed's webhook.

kubespiffed runs as its ServiceAccount under the shipped RBAC plus the one rule the chart adds with
`injection.enabled` (rendered from the chart, not retyped here). It fills the webhook configuration's
caBundle with its own CA bundle, and the API server then calls it over TLS for every pod created in a
namespace labelled `kubespiffe.io/inject=enabled`.
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import yaml
from lightkube import AsyncClient, KubeConfig
from lightkube.core.exceptions import ApiError
from lightkube.models.admissionregistration_v1 import (
    MutatingWebhook,
    RuleWithOperations,
    WebhookClientConfig,
)
from lightkube.models.core_v1 import Container, EmptyDirVolumeSource, PodSpec, Volume, VolumeMount
from lightkube.models.meta_v1 import LabelSelector, LabelSelectorRequirement, ObjectMeta
from lightkube.resources.admissionregistration_v1 import MutatingWebhookConfiguration
from lightkube.resources.core_v1 import Event, Pod, Secret, ServiceAccount
from lightkube.resources.rbac_authorization_v1 import ClusterRole
from lightkube.types import PatchType

from kubespiffe.constants import ROTATE_ANNOTATION
from kubespiffe.devenv import helm
from kubespiffe.devenv.controlplane import ControlPlane, free_port
from kubespiffe.devenv.stack import NAMESPACE, Kubespiffed, authority_bundle_pem, service_account_token
from kubespiffe.devenv.workloads import ensure_namespace
from kubespiffe.injection import INJECTED_ANNOTATION, SIDECAR_NAME, SOCKET_ENV
from kubespiffe.spiffe.bundle import parse_pem_certificates
from tests.integration.kubespiffed import Running, allow_secret

pytestmark = pytest.mark.integration

WEBHOOK = "kubespiffe-injector"  # the chart's name, which its RBAC rule is limited to
SECRET = "webhook-authority"


async def _grant_chart_webhook_rule(kube: AsyncClient) -> None:
    """Add to the shipped ClusterRole the rule the chart renders for injection, exactly as rendered."""
    rendered = helm.template("--set", "injection.enabled=true", "--show-only", "templates/rbac.yaml")
    roles = [d for d in yaml.safe_load_all(rendered) if d and d["kind"] == "ClusterRole"]
    rules = [r for r in roles[0]["rules"] if r["apiGroups"] == ["admissionregistration.k8s.io"]]
    assert rules and rules[0]["resourceNames"] == [WEBHOOK], rules
    role = await kube.get(ClusterRole, "kubespiffe:kubespiffed")
    current = [r.to_dict() for r in role.rules or []]
    if rules[0] not in current:
        await kube.patch(
            ClusterRole, role.metadata.name, {"rules": [*current, rules[0]]}, patch_type=PatchType.MERGE
        )


@pytest.fixture(scope="module")
async def webhook(
    control_plane: ControlPlane, kube: AsyncClient, kubespiffed: Running
) -> AsyncIterator[Running]:
    """A second kubespiffed, with its own authority (so it leads its own Lease) and the webhook on."""
    await allow_secret(kube, SECRET)
    await _grant_chart_webhook_rule(kube)
    port = free_port()
    daemon = Kubespiffed(
        control_plane,
        extra_args=(
            f"--authority-secret={SECRET}",
            # The API server dials https://localhost:<port>: make that one of the serving SVID's DNS names.
            "--service-name=localhost",
            f"--webhook-port={port}",
            f"--webhook-configuration={WEBHOOK}",
            "--agent-image=localhost/kubespiffe:test",
            "--agent-image-pull-policy=Never",
            "--bundle-endpoint-port=0",
            "--bundle-configmap=",
        ),
    )
    daemon.start(await service_account_token(kube))
    bundle = await authority_bundle_pem(kube, SECRET)
    await asyncio.to_thread(daemon.wait_ready, bundle)
    await kube.create(
        MutatingWebhookConfiguration(
            metadata=ObjectMeta(name=WEBHOOK),
            webhooks=[
                MutatingWebhook(
                    name="inject.kubespiffe.io",
                    admissionReviewVersions=["v1"],
                    sideEffects="None",
                    failurePolicy="Fail",  # a broken webhook fails the test instead of skipping injection
                    timeoutSeconds=10,
                    reinvocationPolicy="IfNeeded",
                    clientConfig=WebhookClientConfig(url=f"https://localhost:{port}/inject"),
                    rules=[
                        RuleWithOperations(
                            operations=["CREATE"], apiGroups=[""], apiVersions=["v1"], resources=["pods"]
                        )
                    ],
                    namespaceSelector=LabelSelector(matchLabels={"kubespiffe.io/inject": "enabled"}),
                    objectSelector=LabelSelector(
                        matchExpressions=[
                            LabelSelectorRequirement(
                                key="kubespiffe.io/inject", operator="NotIn", values=["disabled"]
                            )
                        ]
                    ),
                )
            ],
        )
    )
    running = Running(daemon, bundle)
    running.webhook_port = port  # type: ignore[attr-defined]
    yield running
    await kube.delete(MutatingWebhookConfiguration, WEBHOOK)
    daemon.stop()


async def _ca_bundle(kube: AsyncClient) -> bytes:
    config = await kube.get(MutatingWebhookConfiguration, WEBHOOK)
    assert config.webhooks
    return base64.b64decode(config.webhooks[0].clientConfig.caBundle or "")


async def _wait_ca_bundle(kube: AsyncClient, count: int, timeout: float = 20.0) -> bytes:
    deadline = time.monotonic() + timeout
    while True:
        current = await _ca_bundle(kube)
        if current and len(parse_pem_certificates(current)) == count:
            return current
        if time.monotonic() > deadline:
            raise AssertionError(f"caBundle never held {count} certificates: {current[:80]!r}")
        await asyncio.sleep(0.2)


async def _namespace(kube: AsyncClient, inject: bool) -> str:
    name = f"w-{uuid.uuid4().hex[:10]}"
    await ensure_namespace(kube, name, {"kubespiffe.io/inject": "enabled"} if inject else {})
    # No controller-manager here: the ServiceAccount admission plugin needs "default" to exist.
    await kube.create(ServiceAccount(metadata=ObjectMeta(name="default", namespace=name)))
    return name


def _pod(name: str, labels: dict[str, str] | None = None, **spec: Any) -> Pod:
    containers = spec.pop("containers", [Container(name="app", image="busybox", command=["sleep", "3600"])])
    return Pod(metadata=ObjectMeta(name=name, labels=labels), spec=PodSpec(containers=containers, **spec))


async def test_ca_bundle_is_kubespiffeds_own(kube: AsyncClient, webhook: Running) -> None:
    assert await _wait_ca_bundle(kube, 1) == webhook.bundle_pem


async def test_pod_in_labelled_namespace_gets_the_native_sidecar(kube: AsyncClient, webhook: Running) -> None:
    await _wait_ca_bundle(kube, 1)
    namespace = await _namespace(kube, inject=True)
    pod = await kube.create(_pod("app"), namespace=namespace)
    assert pod.metadata and pod.spec
    assert (pod.metadata.annotations or {}).get(INJECTED_ANNOTATION)
    sidecars = [c for c in pod.spec.initContainers or [] if c.name == SIDECAR_NAME]
    assert len(sidecars) == 1 and sidecars[0].restartPolicy == "Always"
    assert sidecars[0].image == "localhost/kubespiffe:test" and sidecars[0].imagePullPolicy == "Never"
    assert sidecars[0].lifecycle is not None and sidecars[0].lifecycle.postStart is not None
    command = sidecars[0].command or []
    assert command[:2] == ["kubespiffe", "agent"] and "localhost.kubespiffe-system.svc:443" in command
    app = pod.spec.containers[0]
    assert any(e.name == SOCKET_ENV for e in app.env or [])
    assert {v.name for v in pod.spec.volumes or []} >= {
        "kubespiffe-token",
        "kubespiffe-bundle",
        "kubespiffe-socket",
    }


async def test_pods_not_selected_are_left_alone(kube: AsyncClient, webhook: Running) -> None:
    await _wait_ca_bundle(kube, 1)
    plain = await kube.create(_pod("app"), namespace=await _namespace(kube, inject=False))
    opted_out = await kube.create(
        _pod("app", labels={"kubespiffe.io/inject": "disabled"}),
        namespace=await _namespace(kube, inject=True),
    )
    for pod in (plain, opted_out):
        assert pod.spec and not pod.spec.initContainers
        assert INJECTED_ANNOTATION not in ((pod.metadata and pod.metadata.annotations) or {})


async def test_unpatchable_pod_is_admitted_unchanged_with_a_warning_event(
    kube: AsyncClient, webhook: Running
) -> None:
    await _wait_ca_bundle(kube, 1)
    namespace = await _namespace(kube, inject=True)
    app = Container(
        name="app",
        image="busybox",
        volumeMounts=[VolumeMount(name="mine", mountPath="/run/spiffe")],  # the agent's socket directory
    )
    pod = await kube.create(
        _pod("clash", containers=[app], volumes=[Volume(name="mine", emptyDir=EmptyDirVolumeSource())]),
        namespace=namespace,
    )
    assert pod.spec and not pod.spec.initContainers and [c.name for c in pod.spec.containers] == ["app"]
    deadline = time.monotonic() + 10
    while True:
        events = [e async for e in kube.list(Event, namespace=namespace)]
        found = [e for e in events if e.reason == "SidecarNotInjected" and e.involvedObject.name == "clash"]
        if found:
            assert found[0].type == "Warning" and "/run/spiffe" in (found[0].message or "")
            break
        assert time.monotonic() < deadline, "no SidecarNotInjected event"
        await asyncio.sleep(0.2)


def _post(port: int, bundle_pem: bytes, body: bytes) -> tuple[int, bytes]:
    context = ssl.create_default_context(cadata=bundle_pem.decode())
    request = urllib.request.Request(
        f"https://localhost:{port}/inject", data=body, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=5, context=context) as response:  # noqa: S310
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"[]",
        json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}).encode(),
    ],
    ids=["empty", "not-json", "not-an-object", "no-request"],
)
async def test_malformed_review_is_a_400_and_nothing_is_patched(webhook: Running, body: bytes) -> None:
    status, text = await asyncio.to_thread(_post, webhook.webhook_port, webhook.bundle_pem, body)  # type: ignore[attr-defined]
    assert status == 400 and b"malformed AdmissionReview" in text and b"patch" not in text


async def test_ca_bundle_follows_rotation(kube: AsyncClient, webhook: Running) -> None:
    """The prepared CA is in the caBundle before it signs anything (here: before the test ends)."""
    await _wait_ca_bundle(kube, 1)
    await kube.patch(
        Secret,
        SECRET,
        {"metadata": {"annotations": {ROTATE_ANNOTATION: "now"}}},
        namespace=NAMESPACE,
        patch_type=PatchType.MERGE,
    )
    rotated = await _wait_ca_bundle(kube, 2)
    assert webhook.bundle_pem in rotated or parse_pem_certificates(webhook.bundle_pem)[
        0
    ] in parse_pem_certificates(rotated)
    # Injection keeps working on the same serving certificate (the prepared CA signs nothing yet).
    pod = await kube.create(_pod("after-rotation"), namespace=await _namespace(kube, inject=True))
    assert pod.spec and any(c.name == SIDECAR_NAME for c in pod.spec.initContainers or [])


async def test_kubespiffed_reaches_only_its_own_webhook_configuration(
    control_plane: ControlPlane, kube: AsyncClient, webhook: Running
) -> None:
    """As kubespiffed's ServiceAccount: its configuration is readable, any other is forbidden."""
    config = yaml.safe_load(control_plane.token_kubeconfig(await service_account_token(kube)))
    as_kubespiffed = AsyncClient(KubeConfig.from_dict(config))
    try:
        assert (await as_kubespiffed.get(MutatingWebhookConfiguration, WEBHOOK)).metadata is not None
        with pytest.raises(ApiError) as refused:
            await as_kubespiffed.get(MutatingWebhookConfiguration, "someone-elses")
        assert refused.value.status.code == 403
    finally:
        await as_kubespiffed.close()
