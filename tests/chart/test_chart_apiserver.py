"""The rendered chart against a real kube-apiserver: every object is accepted by a server-side dry run
(`kubectl apply --dry-run=server`), and kubespiffed's pod passes Pod Security admission at `restricted`.

The ServiceMonitor is not sent: the local control plane has no Prometheus Operator CRDs, so the API server
would answer 404 for its kind whatever the object says. Its fields are checked in test_chart.py.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
from lightkube import AsyncClient
from lightkube.codecs import from_dict, load_all_yaml
from lightkube.core.exceptions import ApiError
from lightkube.resources.apiextensions_v1 import CustomResourceDefinition
from lightkube.resources.core_v1 import Pod, ServiceAccount

import kubespiffe.kube.client  # noqa: F401 (registers FederatedTrustDomain with lightkube)
from kubespiffe.devenv import helm
from kubespiffe.devenv.workloads import ensure_namespace
from tests.chart.render import Obj, one, render, render_all

pytestmark = pytest.mark.chart

FIELD_MANAGER = "kubespiffe-chart-test"
NOT_SENT = {"ServiceMonitor"}  # no CRD on the local control plane (see the module docstring)


@pytest.fixture(scope="module")
async def crds(kube: AsyncClient) -> None:
    """The chart's crds/, installed as helm installs them: for real, before anything that uses them."""
    names = []
    for path in sorted((helm.chart_dir() / "crds").glob("*.yaml")):
        for crd in load_all_yaml(path.read_text()):
            await kube.apply(crd, field_manager=FIELD_MANAGER, force=True)
            assert crd.metadata is not None and crd.metadata.name
            names.append(crd.metadata.name)
    for name in names:
        await kube.wait(CustomResourceDefinition, name, for_conditions=["Established"])


async def _restricted_namespace(kube: AsyncClient) -> str:
    name = f"chart-{uuid.uuid4().hex[:8]}"
    labels = {
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/enforce-version": "latest",
    }
    await ensure_namespace(kube, name, labels)
    return name


@pytest.mark.parametrize("renderer", [render, render_all], ids=["defaults", "all-options"])
async def test_rendered_objects_pass_a_server_side_dry_run(
    kube: AsyncClient, crds: None, renderer: Callable[..., list[Obj]]
) -> None:
    namespace = await _restricted_namespace(kube)
    objects = renderer(namespace=namespace)
    sent = []
    for obj in objects:
        if obj["kind"] in NOT_SENT:
            continue
        resource: Any = from_dict(obj)
        try:
            await kube.apply(resource, field_manager=FIELD_MANAGER, force=True, dry_run=True)
        except ApiError as exc:
            pytest.fail(f"{obj['kind']} {obj['metadata']['name']} refused: {exc.status.message}")
        sent.append(obj["kind"])
    skipped = sorted(o["kind"] for o in objects if o["kind"] in NOT_SENT)
    assert skipped == ([] if renderer is render else ["ServiceMonitor"])
    assert len(sent) + len(skipped) == len(objects)


@pytest.mark.parametrize("renderer", [render, render_all], ids=["defaults", "all-options"])
async def test_kubespiffed_pod_is_admitted_at_pss_restricted(
    kube: AsyncClient, renderer: Callable[..., list[Obj]]
) -> None:
    """Pod Security admission judges Pods, not Deployments: dry-run the Deployment's pod itself."""
    namespace = await _restricted_namespace(kube)
    objects = renderer(namespace=namespace)
    # The ServiceAccount admission plugin refuses pods whose ServiceAccount does not exist: create it.
    await kube.create(from_dict(one(objects, "ServiceAccount")))
    template = one(objects, "Deployment")["spec"]["template"]
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {**template["metadata"], "name": "kubespiffed-0", "namespace": namespace},
        "spec": template["spec"],
    }
    await kube.create(Pod.from_dict(pod), dry_run=True)

    # The control: the same pod without the container's securityContext is refused, so the check above
    # really ran under `restricted`.
    del pod["spec"]["containers"][0]["securityContext"]
    with pytest.raises(ApiError) as refused:
        await kube.create(Pod.from_dict(pod), dry_run=True)
    assert refused.value.status.code == 403
    assert 'violates PodSecurity "restricted:latest"' in (refused.value.status.message or "")
    assert isinstance(await kube.get(ServiceAccount, "kubespiffed", namespace=namespace), ServiceAccount)
