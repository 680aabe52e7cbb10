"""deploy/helm/kubespiffe rendered by a real helm (v4, built from tools/helm): lint, schema refusals, the
flags kubespiffed gets (parsed by kubespiffed's own parser), RBAC, CRDs and Pod Security fields."""

from __future__ import annotations

import filecmp
import json
from typing import Any

import pytest
import yaml

from kubespiffe.devenv import helm
from kubespiffe.devenv.build import repo_root
from kubespiffe.server.config import parse_args
from tests.chart.render import ALL_OPTIONS, Obj, args, container, kinds, one, render, render_all

pytestmark = pytest.mark.chart

# Flags the chart may pass that kubespiffed does not have yet (the PodCertificateRequest signer's).
NOT_YET_IN_KUBESPIFFED = ("--pod-certificate-signer=",)
NAMESPACED = {"ServiceAccount", "Role", "RoleBinding", "Service", "Deployment", "PodDisruptionBudget"}


def _fails(*values: str) -> str:
    """helm template's error output for values that must be refused."""
    result = helm.run("template", helm.RELEASE, str(helm.chart_dir()), *values, check=False)
    assert result.returncode != 0, f"helm template accepted {values}"
    return result.stderr


def _parses(flags: list[str]) -> Any:
    """kubespiffed's own parser on the flags the chart renders (the Deployment sets the namespace by env)."""
    kept = [flag for flag in flags if not flag.startswith(NOT_YET_IN_KUBESPIFFED)]
    return parse_args([*kept, f"--namespace={helm.NAMESPACE}"])


@pytest.mark.parametrize("extra", [(), ("--strict",), ("--strict", "-f", str(ALL_OPTIONS))])
def test_lint_is_clean(extra: tuple[str, ...]) -> None:
    result = helm.run("lint", str(helm.chart_dir()), *extra, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[WARNING]" not in result.stdout and "[ERROR]" not in result.stdout, result.stdout
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout


DEFAULT_KINDS = (
    "ClusterRole ClusterRoleBinding Deployment PodDisruptionBudget Role RoleBinding Service Service"
)
ALL_KINDS = (
    "ClusterRole ClusterRoleBinding Deployment FederatedTrustDomain FederatedTrustDomain "
    "MutatingWebhookConfiguration PodDisruptionBudget Role RoleBinding Service Service ServiceAccount "
    "ServiceMonitor ValidatingAdmissionPolicy ValidatingAdmissionPolicyBinding"
)


@pytest.mark.parametrize(
    ("objects", "expected"),
    [
        (
            render,
            f"{DEFAULT_KINDS} ServiceAccount ValidatingAdmissionPolicy ValidatingAdmissionPolicyBinding",
        ),
        (render_all, ALL_KINDS),
    ],
    ids=["defaults", "all-options"],
)
def test_template_renders_named_objects(objects: Any, expected: str) -> None:
    rendered: list[Obj] = objects()
    assert kinds(rendered) == expected.split()
    for obj in rendered:
        assert obj["apiVersion"] and obj["kind"] and obj["metadata"]["name"], obj
        if obj["kind"] in NAMESPACED | {"ServiceMonitor"}:
            assert obj["metadata"]["namespace"] == helm.NAMESPACE, obj["metadata"]
    # Every template renders YAML that survives a round trip (no stray tabs, no templating leftovers).
    assert "{{" not in helm.template("-f", str(ALL_OPTIONS))


def test_rbac_manifest_is_the_rendered_chart() -> None:
    committed = (repo_root() / "deploy" / "manifests" / "rbac.yaml").read_text()
    assert committed == helm.rbac_manifest(), "run: python -m kubespiffe.devenv.helm rbac"


def _rules(objects: list[Obj], kind: str) -> list[Obj]:
    rules: list[Obj] = one(objects, kind)["rules"]
    return rules


def test_rbac_defaults_rule_for_rule() -> None:
    shipped = [d for d in yaml.safe_load_all((repo_root() / "deploy/manifests/rbac.yaml").read_text()) if d]
    rendered = render()
    for kind in ("ClusterRole", "Role"):
        assert _rules(rendered, kind) == _rules(shipped, kind)
    for kind in ("ClusterRoleBinding", "RoleBinding"):
        assert one(rendered, kind)["subjects"] == one(shipped, kind)["subjects"]
        assert one(rendered, kind)["roleRef"] == one(shipped, kind)["roleRef"]


def test_optional_grants_are_named_and_off_by_default() -> None:
    defaults, everything = render(), render_all()
    extra = [r for r in _rules(everything, "ClusterRole") if r not in _rules(defaults, "ClusterRole")]
    certificates = ["certificates.k8s.io"]
    assert extra == [
        # bundleConfigMap renamed: the patch grant follows the name.
        {
            "apiGroups": [""],
            "resources": ["configmaps"],
            "resourceNames": ["prod-bundle"],
            "verbs": ["patch"],
        },
        {
            "apiGroups": ["admissionregistration.k8s.io"],
            "resources": ["mutatingwebhookconfigurations"],
            "resourceNames": ["kubespiffe-injector"],
            "verbs": ["get", "patch"],
        },
        {
            "apiGroups": certificates,
            "resources": ["signers"],
            "resourceNames": ["kubespiffe.io/prod-svid"],
            "verbs": ["sign", "attest"],
        },
        {
            "apiGroups": certificates,
            "resources": ["podcertificaterequests"],
            "verbs": ["get", "list", "watch"],
        },
        {"apiGroups": certificates, "resources": ["podcertificaterequests/status"], "verbs": ["update"]},
        {
            "apiGroups": certificates,
            "resources": ["clustertrustbundles"],
            "verbs": ["create", "update", "delete", "get", "list", "watch"],
        },
    ]
    missing = [r for r in _rules(defaults, "ClusterRole") if r not in _rules(everything, "ClusterRole")]
    assert missing == [
        {
            "apiGroups": [""],
            "resources": ["configmaps"],
            "resourceNames": ["kubespiffe-bundle"],
            "verbs": ["patch"],
        }
    ]


def test_https_web_grants_get_on_its_secret_only() -> None:
    extra = [r for r in _rules(render_all(), "Role") if r not in _rules(render(), "Role")]
    assert extra == [
        {
            "apiGroups": [""],
            "resources": ["secrets"],
            "resourceNames": ["bundle-endpoint-tls"],
            "verbs": ["get"],
        }
    ]


def test_bundle_configmap_off_drops_its_grants() -> None:
    objects = render("--set", "bundleConfigMap=")
    assert all("configmaps" not in rule["resources"] for rule in _rules(objects, "ClusterRole"))
    assert "--bundle-configmap=" in args(objects)
    assert _parses(args(objects)).bundle_configmap == ""


def test_crds_are_the_generated_ones() -> None:
    generated, chart = repo_root() / "deploy" / "crds", helm.chart_dir() / "crds"
    names = sorted(p.name for p in generated.glob("*.yaml"))
    assert names and names == sorted(p.name for p in chart.glob("*.yaml"))
    _, mismatch, errors = filecmp.cmpfiles(generated, chart, names, shallow=False)
    assert not mismatch and not errors, (
        f"{mismatch + errors} differ: run python -m kubespiffe.registry.crds deploy/helm/kubespiffe/crds"
    )


def test_default_flags_are_kubespiffed_flags() -> None:
    config = _parses(args(render()))
    assert str(config.trust_domain) == "example.org"
    assert config.service_name == "kubespiffed" and config.authority_secret == "kubespiffe-authority"
    assert (config.port, config.health_port, config.bundle_endpoint_port) == (8443, 8444, 8445)


def test_every_option_reaches_kubespiffed() -> None:
    flags = args(render_all())
    assert "--pod-certificate-signer=kubespiffe.io/prod-svid" in flags
    config = _parses(flags)
    assert str(config.trust_domain) == "prod.example.com"
    assert (config.audience, config.token_issuer) == (
        "kubespiffe-prod",
        "https://kubernetes.default.svc.cluster.local",
    )
    assert (config.ca_key_type.value, config.jwt_key_type.value) == ("ec-p384", "rsa-2048")
    assert (config.ca_ttl.total_seconds(), config.x509_svid_ttl.total_seconds()) == (17520 * 3600, 7200)
    assert config.jwt_svid_ttl.total_seconds() == 600 and config.jwt_issuer == "https://oidc.prod.example.com"
    assert (config.bundle_endpoint_port, config.bundle_endpoint_web_secret) == (9445, "bundle-endpoint-tls")
    assert config.bundle_refresh_hint.total_seconds() == 120 and config.bundle_configmap == "prod-bundle"
    assert (config.federation_min_refresh.total_seconds(), config.federation_max_refresh.total_seconds()) == (
        10,
        7200,
    )
    bounds = (config.token_review_rate, config.max_streams_per_pod, config.max_concurrent_rpcs)
    assert bounds == (20, 8, 10000)
    assert config.grpc_max_connection_idle.total_seconds() == 600
    assert config.grpc_handshake_timeout.total_seconds() == 5
    assert config.federation_allowed_networks == "10.0.0.0/8,fd00::/8"
    assert (config.webhook_port, config.webhook_configuration) == (9446, "kubespiffe-injector")
    injection = config.injection()
    assert injection.image == "registry.example/kubespiffe-agent:0.1.0-agent"
    assert injection.image_pull_policy == "Always"
    assert injection.resources == {"requests": {"cpu": "20m", "memory": "64Mi"}, "limits": {"memory": "96Mi"}}
    # The Service listens on 8443, not 443: the agent is told where to dial.
    assert config.agent_server == f"kubespiffed.{helm.NAMESPACE}.svc:8443"
    env = {e["name"]: e for e in container(render_all())["env"]}
    assert env["KUBESPIFFED_LOG_LEVEL"]["value"] == "DEBUG"
    assert env["KUBESPIFFED_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}


# value, its flag, and durations around kubespiffed's bounds: the chart must accept exactly what kubespiffed
# accepts, so a bad value fails at `helm install` and not in a crash-looping pod.
DURATIONS = [
    ("svid.x509TTL", "--x509-svid-ttl", ["59s", "1m", "720h", "720h1s", "43200m", "2592001s"]),
    ("svid.jwtTTL", "--jwt-svid-ttl", ["29s", "30s", "24h", "24h0m1s", "1440m"]),
    ("ca.ttl", "--ca-ttl", ["59m59s", "1h", "87600h", "87601h"]),
    ("bundleEndpoint.refreshHint", "--bundle-refresh-hint", ["0s", "1s", "24h", "86401s"]),
    ("federation.minRefresh", "--federation-min-refresh", ["0s", "1s", "1h", "3601s"]),
    ("federation.maxRefresh", "--federation-max-refresh", ["0s", "1s", "24h", "24h1s"]),
    ("bounds.connectionIdle", "--grpc-max-connection-idle", ["0s", "1s", "24h", "24h1s"]),
    ("bounds.handshakeTimeout", "--grpc-handshake-timeout", ["0s", "1s", "5m", "301s"]),
]


@pytest.mark.parametrize(("value", "flag", "candidates"), DURATIONS, ids=[d[0] for d in DURATIONS])
def test_duration_bounds_agree_with_kubespiffed(value: str, flag: str, candidates: list[str]) -> None:
    defaults = [f for f in args(render()) if not f.startswith(f"{flag}=")]
    for candidate in candidates:
        result = helm.run(
            "template", helm.RELEASE, str(helm.chart_dir()), "--set", f"{value}={candidate}", check=False
        )
        try:
            _parses([*defaults, f"{flag}={candidate}"])
            kubespiffed_accepts = True
        except SystemExit:
            kubespiffed_accepts = False
        assert (result.returncode == 0) == kubespiffed_accepts, f"{value}={candidate}: {result.stderr}"
        if kubespiffed_accepts:
            assert f"{flag}={candidate}" in result.stdout
        else:
            assert f"{value}: {candidate} is out of bounds: it must be between" in result.stderr


PEER = {"trustDomain": "b.example", "bundleEndpointURL": "https://b.example/", "profile": "https_spiffe"}
BAD_VALUES = [
    (["--set", "trustDomain=Example.ORG"], "at '/trustDomain': 'Example.ORG' does not match pattern"),
    (["--set", "trustDomain=spiffe://example.org"], "at '/trustDomain'"),
    (["--set", "trustDomain="], "at '/trustDomain': minLength"),
    (["--set", "replicas=0"], "at '/replicas': minimum: got 0, want 1"),
    (["--set", "replicas=two"], "at '/replicas': got string, want integer"),
    (["--set", "ca.keyType=ed25519"], "at '/ca/keyType': value must be one of 'ec-p256'"),
    (["--set", "svid.jwtKeyType=hs256"], "at '/svid/jwtKeyType': value must be one of"),
    (
        ["--set", "bundleEndpoint.profile=https"],
        "at '/bundleEndpoint/profile': value must be one of 'https_spiffe'",
    ),
    (
        ["--set-json", f"federation.peers=[{json.dumps({**PEER, 'profile': 'spiffe'})}]"],
        "at '/federation/peers/0/profile': value must be one of",
    ),
    (
        ["--set-json", f"federation.peers=[{json.dumps(PEER)}]"],
        "missing properties 'endpointSPIFFEID', 'trustDomainBundle'",
    ),
    (
        [
            "--set-json",
            f"federation.peers=[{json.dumps({**PEER, 'profile': 'https_web', 'endpointSPIFFEID': 'spiffe://b.example/x'})}]",
        ],
        "at '/federation/peers/0/endpointSPIFFEID': value must be ''",
    ),
    (
        [
            "--set-json",
            f"federation.peers=[{json.dumps({**PEER, 'bundleEndpointURL': 'http://b.example/'})}]",
        ],
        "at '/federation/peers/0/bundleEndpointURL'",
    ),
    (
        [
            "--set-json",
            f"federation.peers=[{json.dumps({**PEER, 'trustDomain': 'b_td', 'profile': 'https_web'})}]",
        ],
        '"b_td" is not a valid object name; give the peer a name',
    ),
    (["--set", "svid.x509TTL=721h"], "svid.x509TTL: 721h is out of bounds: it must be between 1m and 720h"),
    (["--set", "svid.jwtTTL=25h"], "svid.jwtTTL: 25h is out of bounds: it must be between 30s and 24h"),
    (["--set", "ca.ttl=30m"], "ca.ttl: 30m is out of bounds: it must be between 1h and 87600h"),
    (["--set", "federation.minRefresh=2h"], "federation.minRefresh: 2h is out of bounds"),
    (["--set", "svid.x509TTL=1 hour"], "at '/svid/x509TTL': '1 hour' does not match pattern"),
    (["--set", "svid.jwtTTL=5min"], "at '/svid/jwtTTL': '5min' does not match pattern"),
    (["--set", "service.port=-1"], "at '/service/port': minimum: got -1, want 1"),
    (["--set", "bundleEndpoint.port=-8445"], "at '/bundleEndpoint/port': minimum"),
    (["--set", "bundleEndpoint.service.port=0"], "at '/bundleEndpoint/service/port': minimum"),
    (["--set", "injection.port=70000"], "at '/injection/port': maximum: got 70,000, want 65,535"),
    (["--set", "injection.timeoutSeconds=31"], "at '/injection/timeoutSeconds': maximum"),
    (
        ["--set", "injection.failurePolicy=Retry"],
        "at '/injection/failurePolicy': value must be one of 'Ignore', 'Fail'",
    ),
    (["--set", "bundleEndpoint.profile=https_web"], "at '/bundleEndpoint/webSecretName': minLength"),
    (["--set", "logLevel=LOUD"], "at '/logLevel': value must be one of"),
    (["--set", "image.pullPolicy=Sometimes"], "at '/image/pullPolicy'"),
    (["--set", "podCertificates.signerName=svid"], "at '/podCertificates/signerName'"),
    (["--set", "replica=3"], "additional properties 'replica' not allowed"),
    (["--set", "bounds.streamsPerPod=0"], "at '/bounds/streamsPerPod': minimum"),
    (["--set", "bounds.tokenReviewRate=1001"], "at '/bounds/tokenReviewRate': maximum"),
    (["--set", "bounds.concurrentRPCs=1000001"], "at '/bounds/concurrentRPCs': maximum"),
    (["--set-json", 'federation.allowedNetworks=["10.0.0.0"]'], "at '/federation/allowedNetworks/0'"),
    (["--set-json", 'federation.allowedNetworks=["10.0.0.0/33"]'], "at '/federation/allowedNetworks/0'"),
    (["--set-json", 'federation.allowedNetworks=["fd00::/129"]'], "at '/federation/allowedNetworks/0'"),
    (
        ["--set", "podSecurityContext.runAsNonRoot=false"],
        "at '/podSecurityContext/runAsNonRoot': value must be true",
    ),
    (
        ["--set", "securityContext.allowPrivilegeEscalation=true"],
        "at '/securityContext/allowPrivilegeEscalation'",
    ),
    (
        ["--set", "securityContext.readOnlyRootFilesystem=false"],
        "at '/securityContext/readOnlyRootFilesystem'",
    ),
    (["--set", "securityContext.privileged=true"], "at '/securityContext/privileged'"),
    (["--set-json", 'securityContext.capabilities.drop=["NET_RAW"]'], "no items match contains schema"),
    (
        ["--set-json", 'securityContext.capabilities.add=["NET_ADMIN"]'],
        "at '/securityContext/capabilities/add/0'",
    ),
    (
        ["--set", "podSecurityContext.seccompProfile.type=Unconfined"],
        "at '/podSecurityContext/seccompProfile/type'",
    ),
    (
        ["--set", "podDisruptionBudget.minAvailable=2"],
        "podDisruptionBudget.minAvailable (2) must be less than replicas (2)",
    ),
    (
        ["--set", "injection.enabled=true", "--set", "bundleConfigMap="],
        "injection.enabled needs bundleConfigMap",
    ),
]


@pytest.mark.parametrize(("values", "message"), BAD_VALUES, ids=[" ".join(v[1::2]) for v, _ in BAD_VALUES])
def test_bad_values_fail_with_a_clear_message(values: list[str], message: str) -> None:
    assert message in _fails(*values)


def test_bad_values_fail_install_too() -> None:
    """`helm install --dry-run=client` runs the same schema, with no cluster."""
    result = helm.run(
        "install", "x", str(helm.chart_dir()), "--dry-run=client", "--set", "replicas=0", check=False
    )
    assert result.returncode != 0 and "at '/replicas': minimum: got 0, want 1" in result.stderr


@pytest.mark.parametrize("objects", [render, render_all], ids=["defaults", "all-options"])
def test_pod_security_standards_restricted_fields(objects: Any) -> None:
    """The PSS `restricted` profile's checks, field by field (the API server test enforces it for real)."""
    rendered: list[Obj] = objects()
    pod = one(rendered, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for key in ("hostNetwork", "hostPID", "hostIPC", "hostUsers"):
        assert key not in pod
    for c in pod["containers"] + pod.get("initContainers", []):
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["runAsNonRoot"] is True
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
        assert not sc.get("privileged")
        assert all("hostPort" not in port for port in c["ports"])
    # Only emptyDir (the in-memory /tmp); no hostPath or other volume types.
    assert pod["volumes"] == [
        {
            "name": "tmp",
            "emptyDir": {"medium": "Memory", "sizeLimit": pod["volumes"][0]["emptyDir"]["sizeLimit"]},
        }
    ]
    assert {"name": "tmp", "mountPath": "/tmp"} in pod["containers"][0]["volumeMounts"]


def test_replicas_spread_and_pdb() -> None:
    defaults = render()
    spec = one(defaults, "Deployment")["spec"]
    assert spec["replicas"] == 2
    term = spec["template"]["spec"]["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ]
    assert term[0]["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert term[0]["podAffinityTerm"]["labelSelector"]["matchLabels"] == spec["selector"]["matchLabels"]
    pdb = one(defaults, "PodDisruptionBudget")["spec"]
    assert pdb == {"minAvailable": 1, "selector": spec["selector"]}
    # One replica: a PDB with minAvailable 1 would block every drain, so there is none.
    assert "PodDisruptionBudget" not in kinds(render("--set", "replicas=1"))


def test_injection_webhook() -> None:
    assert "MutatingWebhookConfiguration" not in kinds(render())
    objects = render("--set", "injection.enabled=true")
    webhook = one(objects, "MutatingWebhookConfiguration", "kubespiffe-injector")["webhooks"][0]
    assert webhook["clientConfig"] == {
        "service": {"name": "kubespiffed", "namespace": helm.NAMESPACE, "path": "/inject", "port": 8446}
    }
    assert "caBundle" not in webhook["clientConfig"]  # kubespiffed fills it from its own CA
    assert (webhook["failurePolicy"], webhook["timeoutSeconds"], webhook["sideEffects"]) == (
        "Ignore",
        5,
        "None",
    )
    assert webhook["namespaceSelector"] == {"matchLabels": {"kubespiffe.io/inject": "enabled"}}
    assert webhook["objectSelector"] == {
        "matchExpressions": [{"key": "kubespiffe.io/inject", "operator": "NotIn", "values": ["disabled"]}]
    }
    assert webhook["rules"] == [
        {
            "operations": ["CREATE"],
            "apiGroups": [""],
            "apiVersions": ["v1"],
            "resources": ["pods"],
            "scope": "Namespaced",
        }
    ]
    service = one(objects, "Service", "kubespiffed")["spec"]["ports"]
    assert {"name": "webhook", "port": 8446, "targetPort": "webhook"} in service
    assert {"name": "webhook", "containerPort": 8446} in container(objects)["ports"]
    config = _parses(args(objects))
    assert config.webhook_port == 8446 and config.agent_server is None  # Service port 443: the default
    assert config.injection().image == "ghcr.io/kubespiffe/kubespiffe:0.1.0"


def test_bundle_endpoint_off() -> None:
    objects = render("--set", "bundleEndpoint.enabled=false")
    assert [s["metadata"]["name"] for s in objects if s["kind"] == "Service"] == ["kubespiffed"]
    assert all(p["name"] != "bundle" for p in container(objects)["ports"])
    assert _parses(args(objects)).bundle_endpoint_port == 0


def test_bundle_endpoint_service() -> None:
    service = one(render_all(), "Service", "kubespiffed-bundle")["spec"]
    assert service["type"] == "LoadBalancer" and service["loadBalancerSourceRanges"] == ["192.0.2.0/24"]
    assert service["ports"] == [{"name": "bundle", "port": 443, "targetPort": "bundle"}]
    assert {"name": "bundle", "containerPort": 9445} in container(render_all())["ports"]


def test_federation_peers() -> None:
    peers = {o["metadata"]["name"]: o["spec"] for o in render_all() if o["kind"] == "FederatedTrustDomain"}
    assert peers == {
        "b.example.com": {
            "trustDomain": "b.example.com",
            "bundleEndpointURL": "https://bundle.b.example.com:8445/",
            "bundleEndpointProfile": {
                "type": "https_spiffe",
                "endpointSPIFFEID": "spiffe://b.example.com/kubespiffe/kubespiffed",
            },
            "trustDomainBundle": '{"keys": []}',
        },
        "partner": {
            "trustDomain": "partner_td",
            "bundleEndpointURL": "https://bundle.partner.example/",
            "bundleEndpointProfile": {"type": "https_web"},
        },
    }


def test_service_monitor_verifies_metrics_tls() -> None:
    monitor = one(render_all(), "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    endpoint = monitor["spec"]["endpoints"][0]
    assert (endpoint["port"], endpoint["path"], endpoint["scheme"]) == ("health", "/metrics", "https")
    assert endpoint["tlsConfig"] == {
        "serverName": f"kubespiffed.{helm.NAMESPACE}.svc",
        "ca": {"configMap": {"name": "prod-bundle", "key": "ca.crt"}},
    }
    assert {"name": "health", "port": 8444, "targetPort": "health"} in one(
        render_all(), "Service", "kubespiffed"
    )["spec"]["ports"]


def test_notes_say_how_to_check() -> None:
    result = helm.run("install", "x", str(helm.chart_dir()), "--dry-run=client", "-n", "ks")
    assert "kubectl -n ks rollout status deployment/kubespiffed" in result.stdout
    assert "kubespiffe fetch x509 --server kubespiffed.ks.svc:443" in result.stdout


def test_helm_is_the_pinned_version_and_cached() -> None:
    assert helm.ensure_helm() == helm.ensure_helm()
    out = helm.run("version", "--short").stdout
    assert out.startswith("v4.3.1"), out
