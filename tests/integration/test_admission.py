"""The API server itself (OpenAPI schema + CEL rules in the CRDs) refuses invalid registrations."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.apiextensions_v1 import CustomResourceDefinition

from kubespiffe.devenv.stack import install
from kubespiffe.kube.client import ClusterWorkloadRegistration, WorkloadRegistration

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def crds(kube: AsyncClient) -> None:
    await install(kube)


async def _create(kube: AsyncClient, spec: dict[str, Any], namespace: str | None) -> Any:
    name = f"r-{uuid.uuid4().hex[:8]}"
    resource = WorkloadRegistration if namespace else ClusterWorkloadRegistration
    return await kube.create(resource(metadata=ObjectMeta(name=name, namespace=namespace), spec=spec))


INVALID_NAMESPACED: list[tuple[str, dict[str, Any], str]] = [
    (
        "unknown placeholder",
        {"spiffeIDTemplate": "spiffe://{trustDomain}/ns/{namespace}/{color}"},
        "placeholder",
    ),
    ("unbalanced brace", {"spiffeIDTemplate": "spiffe://{trustDomain}/ns/{namespace/x"}, "spiffeIDTemplate"),
    ("not spiffe scheme", {"spiffeIDTemplate": "https://{trustDomain}/ns/{namespace}"}, "spiffe://"),
    (
        "empty path segment",
        {"spiffeIDTemplate": "spiffe://{trustDomain}/ns//{namespace}"},
        "spiffeIDTemplate",
    ),
    ("trailing slash", {"spiffeIDTemplate": "spiffe://{trustDomain}/ns/{namespace}/"}, "spiffeIDTemplate"),
    ("bad ttl", {"x509SVIDTTL": "forever"}, "x509SVIDTTL"),
    ("negative ttl", {"x509SVIDTTL": "-1h"}, "x509SVIDTTL"),
    ("ttl too long", {"x509SVIDTTL": "9000h"}, "x509SVIDTTL"),
    ("jwt ttl too short", {"jwtSVIDTTL": "1s"}, "jwtSVIDTTL"),
    ("bad dns name", {"dnsNameTemplates": ["bad_name!.example"]}, "dnsNameTemplates"),
    ("wildcard dns", {"dnsNameTemplates": ["*.example.org"]}, "dnsNameTemplates"),
    ("bad federated td", {"federatesWith": ["Not A Domain"]}, "federatesWith"),
    ("bad service account", {"serviceAccountNames": ["UPPER"]}, "serviceAccountNames"),
    (
        "bad selector operator",
        {"podSelector": {"matchExpressions": [{"key": "a", "operator": "Near"}]}},
        "operator",
    ),
    ("hint too long", {"hint": "x" * 2000}, "hint"),
]


@pytest.mark.parametrize(
    ("case", "spec", "field"), INVALID_NAMESPACED, ids=[c[0] for c in INVALID_NAMESPACED]
)
async def test_invalid_registration_is_refused_by_the_api_server(
    kube: AsyncClient, crds: None, namespace: str, case: str, spec: dict[str, Any], field: str
) -> None:
    with pytest.raises(ApiError) as caught:
        await _create(kube, spec, namespace)
    assert caught.value.status.code == 422, caught.value.status.message
    assert field in (caught.value.status.message or ""), caught.value.status.message


async def test_valid_registrations_are_accepted_with_defaults(
    kube: AsyncClient, crds: None, namespace: str
) -> None:
    created = await _create(
        kube,
        {
            "serviceAccountNames": ["web"],
            "podSelector": {"matchLabels": {"app": "web"}},
            "dnsNameTemplates": ["{podName}.{namespace}.svc", "web.example.org"],
            "x509SVIDTTL": "1h30m",
            "jwtSVIDTTL": "5m",
            "federatesWith": ["partner.example"],
            "hint": "external",
        },
        namespace,
    )
    assert created["spec"]["spiffeIDTemplate"] == "spiffe://{trustDomain}/ns/{namespace}/sa/{serviceAccount}"
    cluster = await _create(
        kube,
        {
            "spiffeIDTemplate": "spiffe://{trustDomain}/node/{nodeName}/{label:app.kubernetes.io/name}",
            "namespaceSelector": {"matchExpressions": [{"key": "team", "operator": "Exists"}]},
        },
        None,
    )
    assert cluster["spec"]["namespaceSelector"]["matchExpressions"][0]["operator"] == "Exists"


async def test_namespace_selector_is_refused_on_namespaced_registrations(
    kube: AsyncClient, crds: None, namespace: str
) -> None:
    """Not in the namespaced schema: kubectl's strict field validation (its default) refuses it."""
    http = kube._client._client  # lightkube cannot pass fieldValidation; kubectl sends Strict
    response = await http.post(
        f"/apis/kubespiffe.io/v1alpha1/namespaces/{namespace}/workloadregistrations",
        params={"fieldValidation": "Strict"},
        json={
            "apiVersion": "kubespiffe.io/v1alpha1",
            "kind": "WorkloadRegistration",
            "metadata": {"name": "with-ns-selector"},
            "spec": {"namespaceSelector": {"matchLabels": {"a": "b"}}},
        },
    )
    assert response.status_code == 400, response.text
    assert 'unknown field \\"spec.namespaceSelector' in response.text


async def test_crds_have_printer_columns_and_status(kube: AsyncClient, crds: None) -> None:
    for name in ("workloadregistrations.kubespiffe.io", "clusterworkloadregistrations.kubespiffe.io"):
        crd = await kube.get(CustomResourceDefinition, name)
        assert crd.spec is not None
        version = crd.spec.versions[0]
        columns = {c.name for c in version.additionalPrinterColumns or []}
        assert {"Ready", "Age"} <= columns
        assert version.subresources is not None and version.subresources.status is not None
