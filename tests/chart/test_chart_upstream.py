"""The chart's upstream authority values (upstreamAuthority.*): flags kubespiffed's parser accepts, a grant
only when configured and only on what is configured, and the values the schema or the templates refuse."""

from __future__ import annotations

import pytest

from tests.chart.render import Obj, args, one, render
from tests.chart.test_chart import _fails, _parses

pytestmark = pytest.mark.chart


def _role_rules(objects: list[Obj]) -> list[Obj]:
    rules: list[Obj] = one(objects, "Role")["rules"]
    return rules


def _cluster_rules(objects: list[Obj]) -> list[Obj]:
    rules: list[Obj] = one(objects, "ClusterRole")["rules"]
    return rules


def test_off_by_default() -> None:
    defaults = render()
    assert not [a for a in args(defaults) if a.startswith("--upstream-")]
    rules = _role_rules(defaults) + _cluster_rules(defaults)
    assert all("cert-manager.io" not in r["apiGroups"] for r in rules)


def test_secret_reaches_kubespiffed_and_grants_get_on_that_secret_only() -> None:
    objects = render("--set", "upstreamAuthority.secret=corp-ca")
    config = _parses(args(objects))
    assert config.upstream_ca_secret == "corp-ca" and config.upstream_issuer() is None
    extra = [r for r in _role_rules(objects) if r not in _role_rules(render())]
    assert extra == [
        {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["corp-ca"], "verbs": ["get"]}
    ]
    assert _cluster_rules(objects) == _cluster_rules(render())


def test_cert_manager_issuer_reaches_kubespiffed_and_grants_certificaterequests_in_the_namespace() -> None:
    objects = render("--set", "upstreamAuthority.certManagerIssuer=ClusterIssuer/corp-ca")
    config = _parses(args(objects))
    issuer = config.upstream_issuer()
    assert (issuer.kind, issuer.name, issuer.group) == ("ClusterIssuer", "corp-ca", "cert-manager.io")
    extra = [r for r in _role_rules(objects) if r not in _role_rules(render())]
    assert extra == [
        {
            "apiGroups": ["cert-manager.io"],
            "resources": ["certificaterequests"],
            "verbs": ["create", "get", "delete"],
        }
    ]
    assert _cluster_rules(objects) == _cluster_rules(render())


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            ["--set", "upstreamAuthority.secret=a", "--set", "upstreamAuthority.certManagerIssuer=Issuer/b"],
            "set secret or certManagerIssuer, not both",
        ),
        (["--set", "upstreamAuthority.secret=Not_A_Name"], "upstreamAuthority/secret"),
        (["--set", "upstreamAuthority.certManagerIssuer=corp-ca"], "upstreamAuthority/certManagerIssuer"),
        (["--set", "upstreamAuthority.other=x"], "additional properties 'other' not allowed"),
    ],
    ids=["both", "bad Secret name", "issuer without kind", "unknown key"],
)
def test_bad_values_are_refused(values: list[str], message: str) -> None:
    assert message in _fails(*values)
