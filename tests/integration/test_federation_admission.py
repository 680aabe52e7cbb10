"""The API server itself (OpenAPI schema + CEL rules in the CRD) refuses invalid FederatedTrustDomains, and
accepts exactly what FederatedTrustDomain.from_object accepts (both halves of every case are checked)."""

from __future__ import annotations

import copy
import uuid
from typing import Any

import pytest
from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.generic_resource import create_global_resource
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.types import PatchType

from kubespiffe.devenv.stack import install
from kubespiffe.registry.federation import FederatedTrustDomain, FederationSpecError

pytestmark = pytest.mark.integration

# Defined here rather than imported from kubespiffe.kube.client, so this test pins the CRD's names too.
FTD = create_global_resource("kubespiffe.io", "v1alpha1", "FederatedTrustDomain", "federatedtrustdomains")

MERGE = PatchType.MERGE
BOOTSTRAP = '{"keys": [], "spiffe_sequence": 1}'
SPIFFE_SPEC: dict[str, Any] = {
    "trustDomain": "partner.example",
    "bundleEndpointURL": "https://bundle.partner.example:8443/bundle?format=spiffe",
    "bundleEndpointProfile": {
        "type": "https_spiffe",
        "endpointSPIFFEID": "spiffe://partner.example/kubespiffe/kubespiffed",
    },
    "trustDomainBundle": BOOTSTRAP,
}
WEB_SPEC: dict[str, Any] = {
    "trustDomain": "web.example",
    "bundleEndpointURL": "https://203.0.113.7/",
    "bundleEndpointProfile": {"type": "https_web"},
}


@pytest.fixture(scope="module")
async def crds(kube: AsyncClient) -> None:
    await install(kube)


def _name() -> str:
    return f"f-{uuid.uuid4().hex[:8]}"


async def _create(kube: AsyncClient, spec: dict[str, Any]) -> Any:
    return await kube.create(FTD(metadata=ObjectMeta(name=_name()), spec=spec))


def _model_refuses(spec: dict[str, Any]) -> bool:
    obj = {
        "apiVersion": "kubespiffe.io/v1alpha1",
        "kind": "FederatedTrustDomain",
        "metadata": {"name": "x", "uid": "u", "generation": 1},
        "spec": spec,
    }
    try:
        FederatedTrustDomain.from_object(obj)
    except FederationSpecError:
        return True
    return False


def _with(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A deep copy of `base` with top-level spec fields replaced (None removes one)."""
    spec = copy.deepcopy(base)
    for key, value in changes.items():
        if value is None:
            spec.pop(key, None)
        else:
            spec[key] = value
    return spec


def _profile(**profile: str) -> dict[str, Any]:
    return _with(SPIFFE_SPEC, bundleEndpointProfile=profile)


INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("http url", _with(SPIFFE_SPEC, bundleEndpointURL="http://bundle.partner.example/"), "https://"),
    ("upper-case scheme", _with(WEB_SPEC, bundleEndpointURL="HTTPS://web.example/"), "https://"),
    (
        "userinfo",
        _with(SPIFFE_SPEC, bundleEndpointURL="https://user:pw@bundle.partner.example/"),
        "userinfo",
    ),
    ("bare userinfo", _with(WEB_SPEC, bundleEndpointURL="https://@web.example/"), "userinfo"),
    # Go's request-URI parser does not split off '#', so it would read "host#" as userinfo and "evil" as host.
    (
        "userinfo after a fragment",
        _with(WEB_SPEC, bundleEndpointURL="https://web.example#@evil/"),
        "fragment",
    ),
    ("fragment", _with(WEB_SPEC, bundleEndpointURL="https://web.example/b#x"), "fragment"),
    ("no host", _with(WEB_SPEC, bundleEndpointURL="https:///bundle"), "bundleEndpointURL"),
    ("space in url", _with(WEB_SPEC, bundleEndpointURL="https://web.example/a b"), "bundleEndpointURL"),
    ("bad percent escape", _with(WEB_SPEC, bundleEndpointURL="https://web.example/%zz"), "bundleEndpointURL"),
    (
        "backslash in host",
        _with(WEB_SPEC, bundleEndpointURL="https://web.example\\evil/"),
        "bundleEndpointURL",
    ),
    ("port out of range", _with(WEB_SPEC, bundleEndpointURL="https://web.example:65536/"), "port"),
    (
        "url too long",
        _with(WEB_SPEC, bundleEndpointURL="https://web.example/" + "a" * 2048),
        "bundleEndpointURL",
    ),
    ("upper-case trust domain", _with(WEB_SPEC, trustDomain="Web.Example"), "trustDomain"),
    ("trust domain with scheme", _with(WEB_SPEC, trustDomain="spiffe://web.example"), "trustDomain"),
    ("trust domain too long", _with(WEB_SPEC, trustDomain="a" * 256), "trustDomain"),
    ("unknown profile", _with(WEB_SPEC, bundleEndpointProfile={"type": "https"}), "type"),
    ("https_spiffe without endpointSPIFFEID", _profile(type="https_spiffe"), "endpointSPIFFEID"),
    (
        "endpoint ID in another trust domain",
        _profile(type="https_spiffe", endpointSPIFFEID="spiffe://other.example/kubespiffed"),
        "endpointSPIFFEID must be in trustDomain",
    ),
    (
        "endpoint ID without path",
        _profile(type="https_spiffe", endpointSPIFFEID="spiffe://partner.example"),
        "endpointSPIFFEID",
    ),
    (
        "endpoint ID with trailing slash",
        _profile(type="https_spiffe", endpointSPIFFEID="spiffe://partner.example/"),
        "endpointSPIFFEID",
    ),
    (
        "endpoint ID with dot segment",
        _profile(type="https_spiffe", endpointSPIFFEID="spiffe://partner.example/a/../b"),
        "'.' or '..'",
    ),
    (
        "endpoint ID in upper case",
        _profile(type="https_spiffe", endpointSPIFFEID="SPIFFE://partner.example/a"),
        "endpointSPIFFEID",
    ),
    (
        "https_web with endpointSPIFFEID",
        _with(
            WEB_SPEC,
            bundleEndpointProfile={"type": "https_web", "endpointSPIFFEID": "spiffe://web.example/server"},
        ),
        "only for https_spiffe",
    ),
    (
        "https_spiffe without trustDomainBundle",
        _with(SPIFFE_SPEC, trustDomainBundle=None),
        "trustDomainBundle",
    ),
    ("bundle neither JSON nor PEM", _with(SPIFFE_SPEC, trustDomainBundle="hello"), "trustDomainBundle"),
    (
        "bundle over 256 KiB",
        _with(SPIFFE_SPEC, trustDomainBundle="{" + " " * (256 * 1024)),
        "trustDomainBundle",
    ),
    # Fewer than 256 Ki characters, more than 256 KiB of UTF-8: only the CEL byte count catches it.
    (
        "bundle over 256 KiB of UTF-8",
        _with(SPIFFE_SPEC, trustDomainBundle="{" + "é" * (128 * 1024)),
        "bytes of UTF-8",
    ),
    ("missing url", _with(WEB_SPEC, bundleEndpointURL=None), "bundleEndpointURL"),
]


@pytest.mark.parametrize(("case", "spec", "field"), INVALID, ids=[c[0] for c in INVALID])
async def test_invalid_federated_trust_domain_is_refused_by_the_api_server(
    kube: AsyncClient, crds: None, case: str, spec: dict[str, Any], field: str
) -> None:
    assert _model_refuses(spec), f"{case}: from_object accepts what admission must refuse"
    with pytest.raises(ApiError) as caught:
        await _create(kube, spec)
    assert caught.value.status.code == 422, caught.value.status.message
    assert field in (caught.value.status.message or ""), caught.value.status.message


async def test_object_without_spec_is_refused(kube: AsyncClient, crds: None) -> None:
    with pytest.raises(ApiError) as caught:
        await kube.create(FTD(metadata=ObjectMeta(name=_name())))
    assert caught.value.status.code == 422
    assert "spec" in (caught.value.status.message or "")


VALID: list[tuple[str, dict[str, Any]]] = [
    ("https_spiffe", SPIFFE_SPEC),
    ("https_web", WEB_SPEC),
    ("https_web with a bootstrap bundle", _with(WEB_SPEC, trustDomainBundle="-----BEGIN CERTIFICATE-----\n")),
    ("https_web, host only", _with(WEB_SPEC, bundleEndpointURL="https://web.example")),
    ("port 65535 and escapes", _with(WEB_SPEC, bundleEndpointURL="https://web.example:65535/a%20b?x=1&y=@")),
    ("bundle of exactly 256 KiB", _with(SPIFFE_SPEC, trustDomainBundle="{" + " " * (256 * 1024 - 1))),
]


@pytest.mark.parametrize(("case", "spec"), VALID, ids=[c[0] for c in VALID])
async def test_valid_federated_trust_domain_is_accepted(
    kube: AsyncClient, crds: None, case: str, spec: dict[str, Any]
) -> None:
    assert not _model_refuses(spec), f"{case}: from_object refuses what admission accepts"
    created = await _create(kube, spec)
    assert created.spec == spec
    parsed = FederatedTrustDomain.from_object(created.to_dict())
    assert (parsed.trust_domain.name, parsed.url, parsed.profile) == (
        spec["trustDomain"],
        spec["bundleEndpointURL"],
        spec["bundleEndpointProfile"]["type"],
    )
    await kube.delete(FTD, created.metadata.name)


async def test_trust_domain_cannot_change_but_the_endpoint_can(kube: AsyncClient, crds: None) -> None:
    created = await _create(kube, WEB_SPEC)
    name = created.metadata.name
    moved = await kube.patch(
        FTD, name, {"spec": {"bundleEndpointURL": "https://new.web.example/"}}, patch_type=MERGE
    )
    assert moved.spec["bundleEndpointURL"] == "https://new.web.example/"
    with pytest.raises(ApiError) as caught:
        await kube.patch(FTD, name, {"spec": {"trustDomain": "other.example"}}, patch_type=MERGE)
    assert caught.value.status.code == 422
    assert "trustDomain cannot change" in (caught.value.status.message or "")


async def test_status_subresource_takes_the_fetch_outcome(kube: AsyncClient, crds: None) -> None:
    created = await _create(kube, SPIFFE_SPEC)
    name = created.metadata.name
    status = {
        "observedGeneration": 1,
        "bundle": BOOTSTRAP,
        "sequence": 7,
        "lastRefreshTime": "2030-01-01T00:00:00Z",
        "nextRefreshTime": "2030-01-01T00:05:00Z",
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "Fetched",
                "message": "sequence 7",
                "lastTransitionTime": "2030-01-01T00:00:00Z",
                "observedGeneration": 1,
            }
        ],
    }
    patched = await kube.patch(FTD.Status, name, {"status": status}, patch_type=MERGE)
    assert patched.status == status
    parsed = FederatedTrustDomain.from_object(patched.to_dict())
    assert (parsed.status_bundle, parsed.status_sequence) == (BOOTSTRAP.encode(), 7)
    with pytest.raises(ApiError) as caught:
        await kube.patch(FTD.Status, name, {"status": {"sequence": -1}}, patch_type=MERGE)
    assert caught.value.status.code == 422
