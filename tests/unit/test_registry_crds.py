"""The generated CRDs: committed files in sync, bounded for CEL cost, wired to the models' rules."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubespiffe.registry import crds
from kubespiffe.registry.models import CLUSTER_KIND, NAMESPACED_KIND, Kind, RegistrationSpec, spec_json_names
from kubespiffe.registry.template import DEFAULT_SPIFFE_ID_TEMPLATE, SPIFFE_SHAPE_RE

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "crds"
KINDS: tuple[Kind, ...] = (NAMESPACED_KIND, CLUSTER_KIND)


def schema(kind: Kind) -> dict[str, Any]:
    result: dict[str, Any] = crds.crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return result


def walk(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from walk(child, f"{path}.{name}")
    if "items" in node:
        yield from walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}{{}}")


@pytest.mark.parametrize("kind", KINDS)
def test_committed_crds_equal_generated_output(kind: Kind) -> None:
    committed = (DEPLOY / crds.filename(kind)).read_text()
    assert committed == crds.render(kind), "run: python -m kubespiffe.registry.crds deploy/crds"


def test_main_writes_every_crd(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert crds.main([str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "clusterworkloadregistrations.kubespiffe.io.yaml",
        "federatedtrustdomains.kubespiffe.io.yaml",
        "workloadregistrations.kubespiffe.io.yaml",
    ]
    assert yaml.safe_load((tmp_path / "federatedtrustdomains.kubespiffe.io.yaml").read_text()) == (
        crds.federation_crd()
    )
    assert yaml.safe_load((tmp_path / crds.filename(CLUSTER_KIND)).read_text()) == crds.crd(CLUSTER_KIND)
    assert crds.main([]) == 2
    assert "usage" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("kind", "scope", "short"), [(NAMESPACED_KIND, "Namespaced", "wreg"), (CLUSTER_KIND, "Cluster", "cwreg")]
)
def test_names_scope_and_subresources(kind: Kind, scope: str, short: str) -> None:
    spec = crds.crd(kind)["spec"]
    assert (spec["group"], spec["scope"]) == ("kubespiffe.io", scope)
    assert spec["names"]["shortNames"] == [short]
    assert spec["names"]["categories"] == ["kubespiffe"]
    (version,) = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns["SPIFFE ID Template"] == ".spec.spiffeIDTemplate"
    assert columns["Ready"] == '.status.conditions[?(@.type=="Ready")].status'
    assert columns["Age"] == ".metadata.creationTimestamp"


def test_spec_properties_come_from_the_model_and_namespace_selector_is_cluster_only() -> None:
    names = spec_json_names()
    cluster = schema(CLUSTER_KIND)["properties"]["spec"]["properties"]
    namespaced = schema(NAMESPACED_KIND)["properties"]["spec"]["properties"]
    assert list(cluster) == [names[f.name] for f in fields(RegistrationSpec)]
    assert set(cluster) - set(namespaced) == {"namespaceSelector"}
    assert namespaced["spiffeIDTemplate"]["default"] == DEFAULT_SPIFFE_ID_TEMPLATE
    assert schema(NAMESPACED_KIND)["properties"]["spec"]["default"] == {}


@pytest.mark.parametrize("kind", KINDS)
def test_every_field_is_described_and_bounded(kind: Kind) -> None:
    """The API server estimates CEL cost from maxLength/maxItems/maxProperties; unbounded ones blow it."""
    for path, node in walk(schema(kind)["properties"]["spec"]):
        assert node.get("description"), f"{path} has no description"
        if node["type"] == "string" and "enum" not in node:
            assert "maxLength" in node, f"{path} has no maxLength"
        if node["type"] == "array":
            assert "maxItems" in node, f"{path} has no maxItems"
        if node["type"] == "object" and "additionalProperties" in node:
            assert "maxProperties" in node, f"{path} has no maxProperties"


def rules(kind: Kind) -> dict[str, list[str]]:
    return {
        path: [r["rule"] for r in node.get("x-kubernetes-validations", [])]
        for path, node in walk(schema(kind))
        if "x-kubernetes-validations" in node
    }


def test_cel_rules_cover_templates_ttls_and_selectors() -> None:
    found = rules(CLUSTER_KIND)
    assert set(found) == {
        ".spec.spiffeIDTemplate",
        ".spec.dnsNameTemplates[]",
        ".spec.x509SVIDTTL",
        ".spec.jwtSVIDTTL",
        ".spec.podSelector.matchLabels",
        ".spec.podSelector.matchExpressions[]",
        ".spec.namespaceSelector.matchLabels",
        ".spec.namespaceSelector.matchExpressions[]",
    }
    assert any(SPIFFE_SHAPE_RE in rule for rule in found[".spec.spiffeIDTemplate"])
    assert (
        "duration(self) >= duration('1m') && duration(self) <= duration('720h')"
        in found[".spec.x509SVIDTTL"][0]
    )
    assert (
        "duration(self) >= duration('30s') && duration(self) <= duration('24h')"
        in found[".spec.jwtSVIDTTL"][0]
    )
    assert "!self.contains('*')" in found[".spec.dnsNameTemplates[]"]


def test_cel_literals_refuse_text_that_would_break_out_of_the_quotes() -> None:
    with pytest.raises(ValueError, match="cannot be embedded"):
        crds._lit("a'b")
