"""kubespiffed's flags: defaults, environment variables, and refusals with a usage error."""

from __future__ import annotations

import datetime as dt

import pytest

from kubespiffe.authority.keys import KeyType
from kubespiffe.server.config import parse_args


def test_defaults_and_derived_names() -> None:
    config = parse_args(["--trust-domain", "Example.ORG", "--namespace", "ks"])
    assert str(config.trust_domain) == "example.org"
    assert config.x509_svid_ttl == dt.timedelta(hours=1) and config.jwt_svid_ttl == dt.timedelta(minutes=5)
    assert config.ca_key_type is KeyType.EC_P256 and config.bundle_endpoint_port == 8445
    assert str(config.server_id) == "spiffe://example.org/kubespiffe/kubespiffed"
    assert config.server_dns_names == (
        "kubespiffed",
        "kubespiffed.ks",
        "kubespiffed.ks.svc",
        "kubespiffed.ks.svc.cluster.local",
    )


def test_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBESPIFFED_TRUST_DOMAIN", "env.example")
    monkeypatch.setenv("KUBESPIFFED_JWT_KEY_TYPE", "rsa-2048")
    monkeypatch.setenv("KUBESPIFFED_BUNDLE_REFRESH_HINT", "30s")
    config = parse_args([])
    assert str(config.trust_domain) == "env.example" and config.jwt_key_type is KeyType.RSA_2048
    assert config.bundle_refresh_hint == dt.timedelta(seconds=30)


@pytest.mark.parametrize(
    "argv",
    [
        ["--trust-domain", "Not A Domain"],
        ["--trust-domain", "td", "--x509-svid-ttl", "0s"],
        ["--trust-domain", "td", "--x509-svid-ttl", "forever"],
        ["--trust-domain", "td", "--jwt-svid-ttl", "48h"],
        ["--trust-domain", "td", "--ca-ttl", "5m"],
        ["--trust-domain", "td", "--ca-key-type", "dsa"],
        ["--trust-domain", "td", "--port", "http"],
        ["--trust-domain", "td", "--federation-min-refresh", "0s"],
        ["--trust-domain", "td", "--port", "70000"],
        ["--trust-domain", "td", "--federation-allowed-networks", "10.0.0.0/99"],
        ["--trust-domain", "td", "--federation-allowed-networks", "10.0.0.1/8"],  # host bits set
        ["--trust-domain", "td", "--federation-allowed-networks", "10.0.0.0/8,private"],
        ["--trust-domain", "td", "--webhook-port", "8446"],  # no --agent-image
        ["--trust-domain", "td", "--webhook-port", "8446", "--agent-image", "has space"],
        ["--trust-domain", "td", "--webhook-port", "8446", "--agent-image", "i", "--agent-resources", "{"],
        ["--trust-domain", "td", "--webhook-port", "8446", "--agent-image", "i", "--agent-resources", "[]"],
        ["--trust-domain", "td", "--webhook-port", "8446", "--agent-image", "i", "--agent-server", "no-port"],
        [
            "--trust-domain",
            "td",
            "--webhook-port",
            "8446",
            "--agent-image",
            "i",
            "--agent-image-pull-policy",
            "x",
        ],
    ],
)
def test_bad_flags_are_usage_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_args(argv)
    assert exited.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_injection_settings_from_flags() -> None:
    config = parse_args(
        [
            "--trust-domain=td",
            "--namespace=ks",
            "--webhook-port=8446",
            "--agent-image=registry.example/kubespiffe:1",
            "--agent-server=10.96.0.20:443",
            '--agent-resources={"limits": {"memory": "96Mi"}}',
        ]
    )
    settings = config.injection()
    assert settings.image == "registry.example/kubespiffe:1" and settings.namespace == "ks"
    assert settings.server == "10.96.0.20:443" and settings.server_name == "kubespiffed"
    assert settings.resources == {"limits": {"memory": "96Mi"}}
    assert parse_args(["--trust-domain=td"]).webhook_port == 0  # off unless asked
