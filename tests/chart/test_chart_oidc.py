"""The chart's OIDC discovery values (oidc.*) and the bundle ConfigMap key: flags kubespiffed's own parser
accepts, the one Secret grant, the Service and port, and the values the schema or the templates refuse."""

from __future__ import annotations

import pytest

from kubespiffe.devenv import helm
from kubespiffe.devenv.oidc import ROLE
from tests.chart.render import Obj, args, container, kinds, one, render
from tests.chart.test_chart import _fails, _parses

pytestmark = pytest.mark.chart

ON = (
    "--set",
    "oidc.enabled=true",
    "--set",
    "oidc.issuer=https://oidc.prod.example.com/cluster-1",
    "--set",
    "oidc.tlsSecretName=oidc-tls",
)


def _role_rules(objects: list[Obj]) -> list[Obj]:
    rules: list[Obj] = one(objects, "Role")["rules"]
    return rules


def test_off_by_default() -> None:
    defaults = render()
    assert not [a for a in args(defaults) if a.startswith("--oidc-")]
    assert "kubespiffed-oidc" not in [o["metadata"]["name"] for o in defaults]
    assert "oidc" not in [p["name"] for p in container(defaults)["ports"]]
    assert one(defaults, "Role")["metadata"]["name"] == ROLE  # devenv/oidc.py adds its rule to this Role


def test_enabled_reaches_kubespiffed() -> None:
    objects = render(*ON)
    config = _parses(args(objects))
    assert config.oidc_port == 8447 and config.oidc_tls_secret == "oidc-tls"
    assert config.jwt_svid_issuer == "https://oidc.prod.example.com/cluster-1"
    assert config.oidc() is not None
    assert {"name": "oidc", "containerPort": 8447} in container(objects)["ports"]
    service = one(objects, "Service", "kubespiffed-oidc")["spec"]
    assert service["ports"] == [{"name": "oidc", "port": 443, "targetPort": "oidc"}]
    assert kinds(objects).count("Service") == kinds(render()).count("Service") + 1


def test_enabled_grants_get_on_its_secret_only() -> None:
    extra = [r for r in _role_rules(render(*ON)) if r not in _role_rules(render())]
    assert extra == [
        {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["oidc-tls"], "verbs": ["get"]}
    ]


def test_jwt_issuer_may_repeat_the_oidc_issuer() -> None:
    same = render(*ON, "--set", "svid.jwtIssuer=https://oidc.prod.example.com/cluster-1")
    assert _parses(args(same)).jwt_svid_issuer == "https://oidc.prod.example.com/cluster-1"


def test_bundle_configmap_key() -> None:
    assert "--bundle-configmap-key=ca.crt" in args(render())
    objects = render("--set", "bundleConfigMapKey=trust-bundle.pem")
    assert _parses(args(objects)).bundle_configmap_key == "trust-bundle.pem"


BAD = [
    (["--set", "oidc.enabled=true", "--set", "oidc.tlsSecretName=t"], "at '/oidc/issuer'"),
    ([*ON, "--set", "oidc.issuer=http://oidc.example.com"], "at '/oidc/issuer'"),
    ([*ON, "--set", "oidc.issuer=https://oidc.example.com?x=1"], "at '/oidc/issuer'"),
    ([*ON, "--set", "oidc.tlsSecretName="], "at '/oidc/tlsSecretName'"),
    ([*ON, "--set", "oidc.port=0"], "at '/oidc/port'"),
    ([*ON, "--set", "oidc.service.type=External"], "at '/oidc/service/type'"),
    ([*ON, "--set", "svid.jwtIssuer=https://other.example"], "svid.jwtIssuer differs from oidc.issuer"),
    (["--set", "oidc.issuers=x"], "additional properties 'issuers' not allowed"),
    (["--set", "bundleConfigMapKey=bundle.spiffe.json"], "at '/bundleConfigMapKey'"),
    (["--set", "bundleConfigMapKey=a/b"], "at '/bundleConfigMapKey'"),
]


@pytest.mark.parametrize(("values", "message"), BAD, ids=[" ".join(v[1::2]) for v, _ in BAD])
def test_refused(values: list[str], message: str) -> None:
    assert message in _fails(*values)


def test_lint_with_oidc_on() -> None:
    result = helm.run("lint", str(helm.chart_dir()), "--strict", *ON, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
