"""Sidecar injection: the decision rules, the JSON Patch, refusals, and the AdmissionReview envelope.

Patches are applied with the `jsonpatch` package (an RFC 6902 implementation independent of ours) and
the results are checked against lightkube's Pod model, so an escaping mistake, an "add" into a missing
list or a misspelt field fails here rather than in the API server.
"""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Mapping
from typing import Any

import jsonpatch
import jsonpointer
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lightkube.models.core_v1 import Pod

from kubespiffe.cli.main import build_parser
from kubespiffe.injection import (
    INJECTED_ANNOTATION,
    SIDECAR_NAME,
    SOCKET_ENV,
    InjectionSettings,
    MalformedReview,
    Patch,
    Refused,
    Skipped,
    Unchanged,
    decide,
    decode_review,
    is_injected,
    mutate,
    parse_review,
    pointer,
    review,
    select,
)
from kubespiffe.injection.settings import BUNDLE_VOLUME, OUR_VOLUMES, SOCKET_VOLUME, TOKEN_VOLUME

SETTINGS = InjectionSettings(image="registry.test/kubespiffe:1.2.3", namespace="kubespiffe-system")
NS = "apps"
SOCKET_MOUNT = {"name": SOCKET_VOLUME, "mountPath": "/run/spiffe", "readOnly": True}
SOCKET_VAR = {"name": SOCKET_ENV, "value": "unix:///run/spiffe/agent.sock"}


def make_pod(*, metadata: Any = None, **spec: Any) -> dict[str, Any]:
    spec.setdefault("containers", [{"name": "app", "image": "app:1"}])
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web", "namespace": NS} if metadata is None else metadata,
        "spec": spec,
    }


def apply(pod: Mapping[str, Any], decision: object) -> dict[str, Any]:
    assert isinstance(decision, Patch), decision
    assert all(op["op"] == "add" for op in decision.ops)
    patched: dict[str, Any] = jsonpatch.apply_patch(copy.deepcopy(pod), list(decision.ops))
    return patched


def validate(pod: dict[str, Any]) -> None:
    """lightkube's model accepts the pod and knows every field in it (it drops unknown ones)."""
    assert Pod.from_dict(pod).to_dict() == pod


def injected(pod: dict[str, Any]) -> dict[str, Any]:
    result = apply(pod, mutate(pod, NS, SETTINGS))
    validate(result)
    assert mutate(result, NS, SETTINGS) == Unchanged(
        f"already injected ({INJECTED_ANNOTATION}, {SIDECAR_NAME})"
    )
    return result


# --- settings and the command line -----------------------------------------------------------------


def test_default_settings_follow_the_documented_sidecar() -> None:
    assert SETTINGS.server == "kubespiffed.kubespiffe-system.svc:443"
    assert SETTINGS.socket_dir == "/run/spiffe"
    assert SETTINGS.socket_uri == "unix:///run/spiffe/agent.sock"
    assert SETTINGS.agent_command() == [
        "kubespiffe",
        "agent",
        "--server",
        "kubespiffed.kubespiffe-system.svc:443",
        "--server-name",
        "kubespiffed",
        "--token-file",
        "/var/run/kubespiffe/token",
        "--bundle-file",
        "/var/run/kubespiffe-bundle/ca.crt",
        "--socket",
        "/run/spiffe/agent.sock",
    ]


def test_injected_commands_parse_with_the_real_cli() -> None:
    sidecar = injected(make_pod())["spec"]["initContainers"][-1]
    agent = build_parser().parse_args(sidecar["command"][1:])
    assert (agent.server, agent.server_name, agent.socket) == (
        SETTINGS.server,
        "kubespiffed",
        "/run/spiffe/agent.sock",
    )
    assert (agent.token_file, agent.bundle_file) == (
        "/var/run/kubespiffe/token",
        "/var/run/kubespiffe-bundle/ca.crt",
    )
    readiness = build_parser().parse_args(sidecar["readinessProbe"]["exec"]["command"][1:])
    assert readiness.socket == "/run/spiffe/agent.sock" and not readiness.upstream and readiness.wait == 0
    startup = build_parser().parse_args(sidecar["lifecycle"]["postStart"]["exec"]["command"][1:])
    assert startup.socket == "/run/spiffe/agent.sock" and not startup.upstream and startup.wait == 20


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"image": ""}, "image"),
        ({"image": "a b"}, "image"),
        ({"image_pull_policy": "Sometimes"}, "pull policy"),
        ({"namespace": "Kube_System"}, "namespace"),
        ({"service": "a.b"}, "service"),
        ({"port": 0}, "port"),
        ({"port": 70000}, "port"),
        ({"port": True}, "port"),
        ({"audience": ""}, "audience"),
        ({"token_expiration_seconds": 599}, "expiration"),
        ({"token_expiration_seconds": 2**32 + 1}, "expiration"),
        ({"bundle_configmap": "Bundle"}, "ConfigMap"),
        ({"bundle_key": "a/b"}, "bundle key"),
        ({"bundle_key": ".."}, "bundle key"),
        ({"socket_path": "run/spiffe/agent.sock"}, "socket path"),
        ({"socket_path": "/agent.sock"}, "socket path"),
        ({"socket_path": "/run/../spiffe/agent.sock"}, "socket path"),
        ({"socket_path": "/var/run/kubespiffe/agent.sock"}, "overlaps"),
        ({"socket_path": "/var/agent.sock"}, "overlaps"),
        ({"resources": {"request": {"cpu": "1"}}}, "resources"),
        ({"version": ""}, "version"),
    ],
)
def test_invalid_settings_are_refused(overrides: dict[str, Any], message: str) -> None:
    arguments: dict[str, Any] = {"image": "img:1", "namespace": "kubespiffe-system", **overrides}
    with pytest.raises(ValueError, match=message):
        InjectionSettings(**arguments)


def test_custom_settings_reach_the_patch() -> None:
    custom = InjectionSettings(
        image="img:2",
        namespace="spiffe",
        image_pull_policy="Never",
        service="kubespiffe-issuer",
        port=8443,
        server_name="issuer.example",
        audience="aud",
        token_expiration_seconds=3600,
        bundle_configmap="trust",
        bundle_key="bundle.pem",
        socket_path="/spiffe/workload/api.sock",
        resources={"limits": {"memory": "1Gi"}},
        version="9.9",
    )
    pod = make_pod()
    result = apply(pod, mutate(pod, NS, custom))
    validate(result)
    sidecar = result["spec"]["initContainers"][0]
    assert sidecar["image"] == "img:2" and sidecar["imagePullPolicy"] == "Never"
    assert sidecar["resources"] == {"limits": {"memory": "1Gi"}}
    assert "kubespiffe-issuer.spiffe.svc:8443" in sidecar["command"]
    assert "issuer.example" in sidecar["command"]
    assert "/var/run/kubespiffe-bundle/bundle.pem" in sidecar["command"]
    volumes = {v["name"]: v for v in result["spec"]["volumes"]}
    token = volumes[TOKEN_VOLUME]["projected"]["sources"][0]["serviceAccountToken"]
    assert token == {"audience": "aud", "expirationSeconds": 3600, "path": "token"}
    assert volumes[BUNDLE_VOLUME]["configMap"] == {
        "name": "trust",
        "items": [{"key": "bundle.pem", "path": "bundle.pem"}],
    }
    app = result["spec"]["containers"][0]
    assert app["volumeMounts"] == [{"name": SOCKET_VOLUME, "mountPath": "/spiffe/workload", "readOnly": True}]
    assert app["env"] == [{"name": SOCKET_ENV, "value": "unix:///spiffe/workload/api.sock"}]
    assert result["metadata"]["annotations"] == {INJECTED_ANNOTATION: "9.9"}
    assert mutate(result, NS, custom) == Unchanged(
        f"already injected ({INJECTED_ANNOTATION}, {SIDECAR_NAME})"
    )


# --- whether to inject --------------------------------------------------------------------------------

ENABLED = {"kubespiffe.io/inject": "enabled"}


@pytest.mark.parametrize(
    ("namespace", "pod_labels", "namespace_labels", "inject"),
    [
        ("apps", {}, ENABLED, True),
        ("apps", {"kubespiffe.io/inject": "enabled"}, ENABLED, True),
        ("apps", {"kubespiffe.io/inject": "disabled"}, ENABLED, False),
        ("apps", {}, {}, False),
        ("apps", {}, {"kubespiffe.io/inject": "disabled"}, False),
        ("apps", {}, {"kubespiffe.io/inject": "true"}, False),
        ("apps", {}, None, True),  # labels unknown: the webhook's namespaceSelector already matched
        ("apps", {"kubespiffe.io/inject": "disabled"}, None, False),
        ("kubespiffe-system", {}, ENABLED, False),
        ("kubespiffe-system", {}, None, False),
    ],
)
def test_select(
    namespace: str, pod_labels: dict[str, str], namespace_labels: dict[str, str] | None, inject: bool
) -> None:
    pod = make_pod(metadata={"name": "web", "labels": pod_labels})
    assert select(pod, namespace, namespace_labels, SETTINGS).inject is inject


def test_select_tolerates_odd_metadata() -> None:
    assert select({"metadata": "x"}, NS, ENABLED, SETTINGS).inject
    assert select({"metadata": {"labels": ["x"]}}, NS, ENABLED, SETTINGS).inject


# --- what is injected ---------------------------------------------------------------------------------


def test_minimal_pod_gets_the_native_sidecar() -> None:
    result = injected(make_pod())
    spec = result["spec"]
    assert [c["name"] for c in spec["initContainers"]] == [SIDECAR_NAME]
    sidecar = spec["initContainers"][0]
    assert sidecar["restartPolicy"] == "Always"
    assert sidecar["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 65532,
        "runAsGroup": 65532,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    probe = ["kubespiffe", "probe", "--socket", "/run/spiffe/agent.sock"]
    # No startup probe: the postStart hook holds the app containers back until the SVID, to the moment.
    assert "startupProbe" not in sidecar
    assert sidecar["lifecycle"] == {"postStart": {"exec": {"command": [*probe, "--wait", "20"]}}}
    assert sidecar["readinessProbe"]["exec"] == {"command": probe}
    assert sidecar["resources"] == {
        "requests": {"cpu": "10m", "memory": "64Mi"},
        "limits": {"memory": "128Mi"},
    }
    assert sidecar["volumeMounts"] == [
        {"name": "kubespiffe-token", "mountPath": "/var/run/kubespiffe", "readOnly": True},
        {"name": "kubespiffe-bundle", "mountPath": "/var/run/kubespiffe-bundle", "readOnly": True},
        {"name": "kubespiffe-socket", "mountPath": "/run/spiffe"},
    ]
    assert spec["volumes"] == [
        {
            "name": "kubespiffe-token",
            "projected": {
                "sources": [
                    {
                        "serviceAccountToken": {
                            "audience": "kubespiffe",
                            "expirationSeconds": 600,
                            "path": "token",
                        }
                    }
                ]
            },
        },
        {
            "name": "kubespiffe-bundle",
            "configMap": {"name": "kubespiffe-bundle", "items": [{"key": "ca.crt", "path": "ca.crt"}]},
        },
        {"name": "kubespiffe-socket", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}},
    ]
    assert spec["containers"] == [
        {"name": "app", "image": "app:1", "volumeMounts": [SOCKET_MOUNT], "env": [SOCKET_VAR]}
    ]
    assert result["metadata"]["annotations"] == {INJECTED_ANNOTATION: SETTINGS.version}
    assert is_injected(result) and not is_injected(make_pod())


def test_patch_paths_escape_the_annotation_key() -> None:
    pod = make_pod(metadata={"name": "web", "annotations": {"a/b~c": "x"}})
    decision = mutate(pod, NS, SETTINGS)
    assert isinstance(decision, Patch)
    assert decision.ops[0] == {
        "op": "add",
        "path": "/metadata/annotations/kubespiffe.io~1injected",
        "value": SETTINGS.version,
    }
    result = injected(pod)
    assert result["metadata"]["annotations"] == {"a/b~c": "x", INJECTED_ANNOTATION: SETTINGS.version}


@pytest.mark.parametrize(
    ("tokens", "expected"),
    [
        ((), ""),
        (("spec", "containers", 0), "/spec/containers/0"),
        (("a/b",), "/a~1b"),
        (("c~d",), "/c~0d"),
        (("~1",), "/~01"),
        (("/~", ""), "/~1~0/"),
    ],
)
def test_pointer_escapes_as_rfc_6901(tokens: tuple[str | int, ...], expected: str) -> None:
    assert pointer(*tokens) == expected


@given(st.lists(st.text(max_size=8), min_size=1, max_size=4))
def test_pointer_resolves_to_the_named_member(keys: list[str]) -> None:
    document: dict[str, Any] = {}
    cursor = document
    for key in keys[:-1]:
        cursor = cursor.setdefault(key, {})
        if not isinstance(cursor, dict):
            return
    cursor[keys[-1]] = "here"
    assert jsonpointer.resolve_pointer(document, pointer(*keys)) == "here"


OTHER_SIDECAR = {"name": "mesh", "image": "mesh:1", "restartPolicy": "Always"}
MIGRATE = {"name": "migrate", "image": "db:1", "command": ["migrate"]}

SHAPES: list[tuple[str, dict[str, Any]]] = [
    ("no metadata annotations", make_pod()),
    (
        "metadata absent",
        {"apiVersion": "v1", "kind": "Pod", "spec": {"containers": [{"name": "a", "image": "i"}]}},
    ),
    (
        "existing annotations with / and ~",
        make_pod(metadata={"name": "w", "annotations": {"x/y": "1", "t~": "2"}}),
    ),
    (
        "names with / and ~",
        make_pod(containers=[{"name": "a/b", "image": "i"}, {"name": "c~d", "image": "i"}]),
    ),
    (
        "volumes, mounts and env present",
        make_pod(
            volumes=[{"name": "data", "emptyDir": {}}],
            containers=[
                {
                    "name": "app",
                    "image": "i",
                    "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                    "env": [{"name": "A", "value": "$(SPIFFE_ENDPOINT_SOCKET)"}],
                }
            ],
        ),
    ),
    ("several containers", make_pod(containers=[{"name": f"c{i}", "image": "i"} for i in range(4)])),
    ("existing init containers", make_pod(initContainers=[MIGRATE, OTHER_SIDECAR])),
    ("ephemeral containers", make_pod(ephemeralContainers=[{"name": "debug", "image": "busybox"}])),
    (
        "empty lists",
        make_pod(
            volumes=[],
            initContainers=[],
            containers=[{"name": "a", "image": "i", "env": [], "volumeMounts": []}],
        ),
    ),
    ("socket env already right", make_pod(containers=[{"name": "a", "image": "i", "env": [SOCKET_VAR]}])),
    (
        "parent of the socket dir mounted",
        make_pod(
            volumes=[{"name": "run", "emptyDir": {}}],
            containers=[{"name": "a", "image": "i", "volumeMounts": [{"name": "run", "mountPath": "/run"}]}],
        ),
    ),
    (
        "sibling path",
        make_pod(
            volumes=[{"name": "s", "emptyDir": {}}],
            containers=[
                {"name": "a", "image": "i", "volumeMounts": [{"name": "s", "mountPath": "/run/spiffe-other"}]}
            ],
        ),
    ),
    ("hostNetwork with cluster DNS", make_pod(hostNetwork=True, dnsPolicy="ClusterFirstWithHostNet")),
    (
        "hostNetwork with own DNS config",
        make_pod(hostNetwork=True, dnsPolicy="None", dnsConfig={"nameservers": ["10.0.0.10"]}),
    ),
    ("linux os", make_pod(os={"name": "linux"})),
    (
        "stale annotation without sidecar",
        make_pod(metadata={"name": "w", "annotations": {INJECTED_ANNOTATION: "0.0.1"}}),
    ),
]


@pytest.mark.parametrize("pod", [s[1] for s in SHAPES], ids=[s[0] for s in SHAPES])
def test_every_shape_is_injected_once(pod: dict[str, Any]) -> None:
    result = injected(pod)
    spec, before = result["spec"], pod["spec"]
    # The sidecar comes after the pod's own init containers, which are left exactly as they were.
    assert spec["initContainers"][:-1] == before.get("initContainers", [])
    assert spec["initContainers"][-1]["name"] == SIDECAR_NAME
    for field in ("containers", "ephemeralContainers"):
        for old, new in zip(before.get(field, []), spec.get(field, []), strict=True):
            assert new["volumeMounts"] == [*old.get("volumeMounts", []), SOCKET_MOUNT]
            assert new["env"][0] == SOCKET_VAR
            assert [v for v in new["env"] if v != SOCKET_VAR] == [
                v for v in old.get("env", []) if v != SOCKET_VAR
            ]
            assert {k: v for k, v in new.items() if k not in ("volumeMounts", "env")} == {
                k: v for k, v in old.items() if k not in ("volumeMounts", "env")
            }
    assert [v["name"] for v in spec["volumes"]] == [
        *(v["name"] for v in before.get("volumes", [])),
        *OUR_VOLUMES,
    ]
    assert result["metadata"]["annotations"][INJECTED_ANNOTATION] == SETTINGS.version


def test_right_socket_env_is_not_duplicated() -> None:
    result = injected(
        make_pod(containers=[{"name": "a", "image": "i", "env": [{"name": "X", "value": "1"}, SOCKET_VAR]}])
    )
    assert result["spec"]["containers"][0]["env"] == [{"name": "X", "value": "1"}, SOCKET_VAR]


def test_null_lists_are_replaced() -> None:
    pod = make_pod(
        volumes=None,
        initContainers=None,
        containers=[{"name": "a", "image": "i", "env": None, "volumeMounts": None}],
    )
    result = apply(pod, mutate(pod, NS, SETTINGS))
    assert result["spec"]["containers"][0]["env"] == [SOCKET_VAR]
    assert [c["name"] for c in result["spec"]["initContainers"]] == [SIDECAR_NAME]
    assert mutate(result, NS, SETTINGS).__class__ is Unchanged


# --- refusals -----------------------------------------------------------------------------------------


def app(**fields: Any) -> dict[str, Any]:
    return {"name": "app", "image": "i", **fields}


def mount(path: str, name: str = "mine") -> dict[str, Any]:
    return {"name": name, "mountPath": path}


REFUSALS: list[tuple[str, Any, str]] = [
    (
        "mount at the socket dir",
        make_pod(containers=[app(volumeMounts=[mount("/run/spiffe")])]),
        "already mounts /run/spiffe",
    ),
    (
        "mount at the socket dir, trailing slash",
        make_pod(containers=[app(volumeMounts=[mount("/run/spiffe/")])]),
        "already mounts",
    ),
    (
        "mount at the socket dir, doubled slashes",
        make_pod(containers=[app(volumeMounts=[mount("//run//spiffe")])]),
        "already mounts",
    ),
    (
        "mount inside the socket dir",
        make_pod(containers=[app(volumeMounts=[mount("/run/spiffe/certs")])]),
        "already mounts /run/spiffe/certs",
    ),
    (
        "our volume with a subPath",
        make_pod(containers=[app(volumeMounts=[{**SOCKET_MOUNT, "subPath": "x"}])]),
        "already mounts",
    ),
    (
        "ephemeral container mount",
        make_pod(ephemeralContainers=[{"name": "dbg", "image": "i", "volumeMounts": [mount("/run/spiffe")]}]),
        "container dbg",
    ),
    (
        "block device in the socket dir",
        make_pod(containers=[app(volumeDevices=[{"name": "d", "devicePath": "/run/spiffe/dev"}])]),
        "device",
    ),
    (
        "token volume name taken",
        make_pod(volumes=[{"name": "kubespiffe-token", "emptyDir": {}}]),
        "volume named kubespiffe-token",
    ),
    (
        "bundle volume name taken",
        make_pod(volumes=[{"name": "kubespiffe-bundle", "emptyDir": {}}]),
        "volume named kubespiffe-bundle",
    ),
    (
        "socket volume name taken",
        make_pod(volumes=[{"name": "kubespiffe-socket", "emptyDir": {}}]),
        "volume named kubespiffe-socket",
    ),
    (
        "init container with our name",
        make_pod(initContainers=[{"name": SIDECAR_NAME, "image": "i", "restartPolicy": "Always"}]),
        "was not injected",
    ),
    (
        "app container with our name",
        make_pod(containers=[{"name": SIDECAR_NAME, "image": "i"}]),
        "was not injected",
    ),
    (
        "ephemeral container with our name",
        make_pod(ephemeralContainers=[{"name": SIDECAR_NAME, "image": "i"}]),
        "was not injected",
    ),
    (
        "annotated, but our container is not a native sidecar",
        make_pod(
            metadata={"annotations": {INJECTED_ANNOTATION: "1"}},
            initContainers=[{"name": SIDECAR_NAME, "image": "i"}],
        ),
        "was not injected",
    ),
    (
        "hand-written agent sidecar",
        make_pod(
            initContainers=[
                {
                    "name": "spiffe-agent",
                    "image": "i",
                    "restartPolicy": "Always",
                    "command": ["kubespiffe", "agent", "--server", "x:1"],
                }
            ]
        ),
        "already runs kubespiffe agent",
    ),
    (
        "agent by absolute path in args",
        make_pod(containers=[app(command=["/usr/local/bin/kubespiffe"], args=["agent"])]),
        "already runs kubespiffe agent",
    ),
    (
        "socket env with another value",
        make_pod(containers=[app(env=[{"name": SOCKET_ENV, "value": "unix:///tmp/agent.sock"}])]),
        "sets SPIFFE_ENDPOINT_SOCKET",
    ),
    (
        "socket env from a reference",
        make_pod(
            containers=[
                app(env=[{"name": SOCKET_ENV, "valueFrom": {"configMapKeyRef": {"name": "c", "key": "k"}}}])
            ]
        ),
        "sets SPIFFE_ENDPOINT_SOCKET",
    ),
    (
        "socket env, right value plus valueFrom",
        make_pod(containers=[app(env=[{**SOCKET_VAR, "valueFrom": {}}])]),
        "sets SPIFFE_ENDPOINT_SOCKET",
    ),
    ("hostNetwork, default DNS policy", make_pod(hostNetwork=True), "dnsPolicy ClusterFirst "),
    (
        "hostNetwork, ClusterFirst",
        make_pod(hostNetwork=True, dnsPolicy="ClusterFirst"),
        "ClusterFirstWithHostNet",
    ),
    ("hostNetwork, node DNS", make_pod(hostNetwork=True, dnsPolicy="Default"), "dnsPolicy Default"),
    ("windows pod", make_pod(os={"name": "windows"}), "Windows"),
    ("mirror pod", make_pod(metadata={"annotations": {"kubernetes.io/config.mirror": "abc"}}), "mirror"),
    ("no spec", {"metadata": {}}, "no spec"),
    ("spec not an object", {"spec": []}, "no spec"),
    ("no containers", make_pod(containers=[]), "no containers"),
    ("containers not a list", make_pod(containers={"name": "a"}), "spec.containers is not a list"),
    ("container not an object", make_pod(containers=["app"]), "spec.containers is not a list"),
    ("env not a list", make_pod(containers=[app(env={"A": "1"})]), "env of app"),
    ("mounts not a list", make_pod(containers=[app(volumeMounts="x")]), "volumeMounts of app"),
    ("annotations not an object", make_pod(metadata={"annotations": ["x"]}), "annotations is not an object"),
    (
        "metadata not an object",
        {"metadata": "x", "spec": {"containers": [app()]}},
        "metadata is not an object",
    ),
    ("not an object at all", ["pod"], "not a pod"),
    (
        "marked injected but the socket volume is gone",
        make_pod(
            metadata={"annotations": {INJECTED_ANNOTATION: "1"}},
            initContainers=[{"name": SIDECAR_NAME, "image": "i", "restartPolicy": "Always"}],
        ),
        "no volume kubespiffe-socket",
    ),
    (
        "control characters in a name",
        make_pod(containers=[{"name": "a\nb\x1b[31m", "image": "i", "volumeMounts": [mount("/run/spiffe")]}]),
        "container a?b?[31m",
    ),
    (
        "long name",
        make_pod(containers=[{"name": "n" * 500, "image": "i", "env": [{"name": SOCKET_ENV, "value": "x"}]}]),
        "container nnn",
    ),
]


@pytest.mark.parametrize(("pod", "reason"), [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS])
def test_refusals(pod: Any, reason: str) -> None:
    decision = mutate(pod, NS, SETTINGS)
    assert isinstance(decision, Refused), decision
    assert reason in decision.warning
    assert decision.warning.isprintable() and len(decision.warning) < 200


def test_own_namespace_is_refused_even_when_called_directly() -> None:
    decision = mutate(make_pod(), "kubespiffe-system", SETTINGS)
    assert isinstance(decision, Refused) and "own namespace" in decision.warning


# --- convergence: reinvocation and ephemeral containers ----------------------------------------------


def test_container_added_after_injection_is_wired_on_reinvocation() -> None:
    result = injected(make_pod())
    result["spec"]["containers"].append({"name": "late", "image": "i"})
    decision = mutate(result, NS, SETTINGS)
    assert isinstance(decision, Patch) and "late" in decision.summary
    assert [op["path"] for op in decision.ops] == [
        "/spec/containers/1/volumeMounts",
        "/spec/containers/1/env",
    ]
    again = apply(result, decision)
    validate(again)
    assert isinstance(mutate(again, NS, SETTINGS), Unchanged)


def test_frozen_containers_are_not_touched() -> None:
    result = injected(make_pod())
    result["spec"]["containers"].append({"name": "old", "image": "i"})
    result["spec"]["ephemeralContainers"] = [{"name": "dbg1", "image": "i"}, {"name": "dbg2", "image": "i"}]
    decision = mutate(result, NS, SETTINGS, frozen={"app", "old", "dbg1", SIDECAR_NAME})
    assert isinstance(decision, Patch)
    assert {op["path"].rsplit("/", 1)[0] for op in decision.ops} == {"/spec/ephemeralContainers/1"}


# --- the AdmissionReview envelope ---------------------------------------------------------------------


def admission(
    pod: Any,
    *,
    operation: str = "CREATE",
    sub_resource: str | None = None,
    old: Any = None,
    namespace: str = NS,
    kind: Any = None,
) -> dict[str, Any]:
    request: dict[str, Any] = {
        "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
        "kind": kind or {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "namespace": namespace,
        "operation": operation,
        "object": pod,
        "userInfo": {"username": "admin"},
    }
    if sub_resource:
        request["subResource"] = sub_resource
    if old is not None:
        request["oldObject"] = old
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}


def answer(document: dict[str, Any], labels: dict[str, str] | None = ENABLED) -> dict[str, Any]:
    result = review(document, SETTINGS, labels)
    assert result["apiVersion"] == "admission.k8s.io/v1" and result["kind"] == "AdmissionReview"
    response: dict[str, Any] = result["response"]
    assert response["uid"] == document["request"]["uid"]
    assert response["allowed"] is True
    return response


def test_review_injects_with_a_base64_json_patch() -> None:
    pod = make_pod()
    response = answer(admission(pod))
    assert response["patchType"] == "JSONPatch" and "warnings" not in response
    ops = json.loads(base64.b64decode(response["patch"]))
    decision = mutate(pod, NS, SETTINGS)
    assert isinstance(decision, Patch) and ops == list(decision.ops)
    result = jsonpatch.apply_patch(pod, ops)
    assert set(answer(admission(result))) == {"uid", "allowed"}


def test_review_of_a_refused_pod_admits_with_a_warning() -> None:
    response = answer(admission(make_pod(volumes=[{"name": "kubespiffe-socket", "emptyDir": {}}])))
    assert "patch" not in response and "patchType" not in response
    assert response["warnings"] == [
        "kubespiffe: sidecar not injected: the pod already has a volume named kubespiffe-socket"
    ]


def test_review_warnings_are_bounded() -> None:
    long = make_pod(containers=[{"name": "x" * 10_000, "image": "i", "volumeMounts": [mount("/run/spiffe")]}])
    (warning,) = answer(admission(long))["warnings"]
    assert len(warning) <= 256
    # The longest reason: a hostNetwork pod, with the longest Service and namespace names.
    wide = InjectionSettings(image="i", namespace="n" * 63, service="s" * 63, port=65535)
    host = make_pod(hostNetwork=True, dnsPolicy="D" * 1000)
    (warning,) = review(admission(host), wide, ENABLED)["response"]["warnings"]
    assert len(warning) == 256 and warning.startswith("kubespiffe: sidecar not injected: hostNetwork")


@pytest.mark.parametrize(
    ("document", "labels"),
    [
        (admission(make_pod()), {}),
        (admission(make_pod(metadata={"labels": {"kubespiffe.io/inject": "disabled"}})), ENABLED),
        (admission(make_pod(), namespace="kubespiffe-system"), ENABLED),
        (admission(make_pod(), operation="UPDATE"), ENABLED),
        (admission(make_pod(), operation="DELETE"), ENABLED),
        (admission(make_pod(), operation="CONNECT", sub_resource="exec"), ENABLED),
        (admission(make_pod(), operation="UPDATE", sub_resource="status"), ENABLED),
        (admission(make_pod(), operation="CREATE", sub_resource="binding"), ENABLED),
        # A debug container in a pod that was never injected: nothing to wire it to.
        (
            admission(make_pod(), operation="UPDATE", sub_resource="ephemeralcontainers", old=make_pod()),
            ENABLED,
        ),
    ],
)
def test_review_skips_silently(document: dict[str, Any], labels: dict[str, str]) -> None:
    assert set(answer(document, labels)) == {"uid", "allowed"}
    assert isinstance(decide(parse_review(document), SETTINGS, labels), Skipped)


@pytest.mark.parametrize(
    ("document", "warning"),
    [
        (
            admission(make_pod(), kind={"group": "apps", "version": "v1", "kind": "Deployment"}),
            "other than a v1 Pod",
        ),
        (
            admission(make_pod(), kind={"group": "", "version": "v1beta1", "kind": "Pod"}),
            "other than a v1 Pod",
        ),
        (admission("pod"), "not a v1 Pod"),
        (admission(None), "not a v1 Pod"),
        (admission({**make_pod(), "kind": "Service"}), "not a v1 Pod"),
        (admission(make_pod(), namespace=""), "no namespace"),
        (admission(make_pod(containers=[])), "no containers"),
    ],
)
def test_review_of_an_unusable_request_warns(document: dict[str, Any], warning: str) -> None:
    (text,) = answer(document)["warnings"]
    assert warning in text


def test_debug_container_in_an_injected_pod_is_wired() -> None:
    running = injected(make_pod())
    updated = copy.deepcopy(running)
    updated["spec"]["ephemeralContainers"] = [
        {"name": "debugger", "image": "busybox", "targetContainerName": "app"}
    ]
    response = answer(admission(updated, operation="UPDATE", sub_resource="ephemeralcontainers", old=running))
    ops = json.loads(base64.b64decode(response["patch"]))
    assert {op["path"] for op in ops} == {
        "/spec/ephemeralContainers/0/volumeMounts",
        "/spec/ephemeralContainers/0/env",
    }
    result = jsonpatch.apply_patch(updated, ops)
    validate(result)
    assert result["spec"]["ephemeralContainers"][0]["env"] == [SOCKET_VAR]
    # The old debug container stays as it is when a second one arrives (the API server forbids changes).
    second = copy.deepcopy(result)
    second["spec"]["ephemeralContainers"].append({"name": "debugger2", "image": "busybox"})
    old_with_first = copy.deepcopy(result)
    old_with_first["spec"]["ephemeralContainers"][0] = updated["spec"]["ephemeralContainers"][0]
    ops = json.loads(
        base64.b64decode(
            answer(
                admission(second, operation="UPDATE", sub_resource="ephemeralcontainers", old=old_with_first)
            )["patch"]
        )
    )
    assert {op["path"].split("/")[3] for op in ops} == {"1"}


def test_debug_update_without_the_old_pod_warns() -> None:
    running = injected(make_pod())
    (text,) = answer(admission(running, operation="UPDATE", sub_resource="ephemeralcontainers"))["warnings"]
    assert "old pod" in text


MALFORMED: list[tuple[str, Any]] = [
    ("a list", []),
    ("a string", "AdmissionReview"),
    ("v1beta1", {**admission(make_pod()), "apiVersion": "admission.k8s.io/v1beta1"}),
    ("wrong kind", {**admission(make_pod()), "kind": "AdmissionRequest"}),
    ("no request", {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}),
    ("request not an object", {**admission(make_pod()), "request": "x"}),
    (
        "response instead of request",
        {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": {"uid": "u"}},
    ),
    ("no uid", {**admission(make_pod()), "request": {"operation": "CREATE"}}),
    ("empty uid", {**admission(make_pod()), "request": {"uid": ""}}),
    ("uid not a string", {**admission(make_pod()), "request": {"uid": 7}}),
    ("uid too long", {**admission(make_pod()), "request": {"uid": "u" * 129}}),
]


@pytest.mark.parametrize("document", [m[1] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_malformed_reviews_raise(document: Any) -> None:
    with pytest.raises(MalformedReview):
        review(document, SETTINGS, ENABLED)


@pytest.mark.parametrize(
    "body",
    [b"", b"{", b"\xff\xfe", b"[" * 100_000 + b"]" * 100_000, b" " * (8 * 1024 * 1024 + 1)],
    ids=["empty", "truncated", "not utf-8", "deeply nested", "too large"],
)
def test_undecodable_bodies_raise(body: bytes) -> None:
    with pytest.raises(MalformedReview):
        decode_review(body)


def test_decode_then_review_round_trip() -> None:
    document = admission(make_pod())
    decoded = decode_review(json.dumps(document).encode())
    assert parse_review(decoded).namespace == NS
    assert review(decoded, SETTINGS, ENABLED) == review(document, SETTINGS, ENABLED)


# --- properties ---------------------------------------------------------------------------------------

NAME_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789-./~"
names = st.text(NAME_CHARS, min_size=1, max_size=10).filter(lambda n: n not in (SIDECAR_NAME, *OUR_VOLUMES))
# Paths near the socket directory that do not clash with it.
paths = (
    st.sampled_from(["/data", "/run", "/run/spiffe-x", "/run/spiffex", "/var/run/secrets", "/tmp", "/"])
    .flatmap(
        lambda base: (
            st.just(base)
            | st.builds(lambda tail: base.rstrip("/") + "/" + tail, st.text("abc~/", min_size=1, max_size=5))
        )
    )
    .filter(lambda p: not (p.rstrip("/") + "/").startswith("/run/spiffe/"))
)
env_vars = st.lists(
    st.fixed_dictionaries({"name": st.text("ABC_~/", min_size=1, max_size=6), "value": st.text(max_size=8)}),
    max_size=3,
)


@st.composite
def containers(
    draw: st.DrawFn, name: str, volume_names: list[str], *, ephemeral: bool = False
) -> dict[str, Any]:
    container: dict[str, Any] = {"name": name, "image": draw(st.sampled_from(["app:1", "busybox"]))}
    if draw(st.booleans()) and volume_names:
        container["volumeMounts"] = [
            {"name": draw(st.sampled_from(volume_names)), "mountPath": draw(paths)}
            for _ in range(draw(st.integers(0, 2)))
        ]
    if draw(st.booleans()):
        container["env"] = draw(env_vars)
    if draw(st.booleans()):
        container["command"] = draw(
            st.lists(st.sampled_from(["sh", "-c", "agent", "kubespiffe"]), max_size=3).filter(
                lambda c: c[:2] != ["kubespiffe", "agent"]
            )
        )
    if draw(st.booleans()):
        container["securityContext"] = {"runAsUser": draw(st.integers(0, 70000))}
    if not ephemeral and draw(st.booleans()):
        container["ports"] = [{"containerPort": draw(st.integers(1, 65535))}]
    if ephemeral and draw(st.booleans()):
        container["targetContainerName"] = "x"
    return container


@st.composite
def pods(draw: st.DrawFn) -> dict[str, Any]:
    all_names = draw(st.lists(names, min_size=1, max_size=7, unique=True))
    n_app = draw(st.integers(1, len(all_names)))
    n_init = draw(st.integers(0, len(all_names) - n_app))
    app_names, init_names, eph_names = (
        all_names[:n_app],
        all_names[n_app : n_app + n_init],
        all_names[n_app + n_init :],
    )
    volume_names = draw(st.lists(names, max_size=3, unique=True))
    spec: dict[str, Any] = {"containers": [draw(containers(n, volume_names)) for n in app_names]}
    if draw(st.booleans()) or volume_names:
        spec["volumes"] = [{"name": n, "emptyDir": {}} for n in volume_names]
    if draw(st.booleans()) or init_names:
        spec["initContainers"] = [draw(containers(n, volume_names)) for n in init_names]
        for init in spec["initContainers"]:
            if draw(st.booleans()):
                init["restartPolicy"] = "Always"
    if eph_names:
        spec["ephemeralContainers"] = [draw(containers(n, volume_names, ephemeral=True)) for n in eph_names]
    if draw(st.booleans()):
        spec["hostNetwork"] = True
        spec["dnsPolicy"] = "ClusterFirstWithHostNet"
    if draw(st.booleans()):
        spec["serviceAccountName"] = "web"
    pod: dict[str, Any] = {"apiVersion": "v1", "kind": "Pod", "spec": spec}
    if draw(st.booleans()):
        metadata: dict[str, Any] = {"name": "web"}
        if draw(st.booleans()):
            metadata["annotations"] = draw(
                st.dictionaries(st.text("ab/~.", min_size=1, max_size=6), st.text(max_size=4), max_size=3)
            )
        if draw(st.booleans()):
            metadata["labels"] = {"app": "web"}
        pod["metadata"] = metadata
    return pod


def _without_ours(container: Mapping[str, Any]) -> dict[str, Any]:
    rest = {k: v for k, v in container.items() if k not in ("volumeMounts", "env")}
    mounts = [m for m in container.get("volumeMounts", []) if m != SOCKET_MOUNT]
    env = [v for v in container.get("env", []) if v != SOCKET_VAR]
    return {**rest, "volumeMounts": mounts, "env": env}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pods())
def test_injection_converges_and_keeps_the_pod(pod: dict[str, Any]) -> None:
    original = copy.deepcopy(pod)
    decision = mutate(pod, NS, SETTINGS)
    assert pod == original  # the input is not modified
    result = apply(pod, decision)
    validate(result)
    assert isinstance(mutate(result, NS, SETTINGS), Unchanged)
    assert is_injected(result)
    spec, before = result["spec"], pod["spec"]
    for field in ("containers", "ephemeralContainers"):
        for old, new in zip(before.get(field, []), spec.get(field, []), strict=True):
            assert _without_ours(new) == _without_ours(old)
            assert new["volumeMounts"].count(SOCKET_MOUNT) == 1 and new["env"][0] == SOCKET_VAR
    assert spec["initContainers"][:-1] == before.get("initContainers", [])
    assert spec["initContainers"][-1]["restartPolicy"] == "Always"
    assert {
        k: v
        for k, v in spec.items()
        if k not in ("containers", "ephemeralContainers", "initContainers", "volumes")
    } == {
        k: v
        for k, v in before.items()
        if k not in ("containers", "ephemeralContainers", "initContainers", "volumes")
    }
    assert spec["volumes"][: len(before.get("volumes", []))] == before.get("volumes", [])
    annotations = dict(result["metadata"]["annotations"])
    assert annotations.pop(INJECTED_ANNOTATION) == SETTINGS.version
    assert annotations == pod.get("metadata", {}).get("annotations", {})
    # The same patch through the AdmissionReview envelope.
    ops = json.loads(base64.b64decode(answer(admission(pod))["patch"]))
    assert ops == json.loads(decision.to_json())  # type: ignore[union-attr]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(
                [
                    "metadata",
                    "spec",
                    "containers",
                    "initContainers",
                    "ephemeralContainers",
                    "volumes",
                    "volumeMounts",
                    "env",
                    "name",
                    "mountPath",
                    "annotations",
                    "value",
                    "valueFrom",
                    "command",
                    "args",
                    "os",
                    "hostNetwork",
                    "restartPolicy",
                    SIDECAR_NAME,
                    INJECTED_ANNOTATION,
                    SOCKET_ENV,
                    "/run/spiffe",
                ]
            ),
            inner,
            max_size=4,
        )
    ),
    max_leaves=30,
)


@settings(max_examples=500, deadline=None)
@given(json_values)
def test_any_json_gives_a_decision_never_an_exception(pod: Any) -> None:
    decision = mutate(pod, NS, SETTINGS)
    assert isinstance(decision, Patch | Unchanged | Refused)
    if isinstance(pod, Mapping):
        is_injected(pod)
    if isinstance(decision, Patch):
        jsonpatch.apply_patch(pod, list(decision.ops))  # every path resolves


@settings(max_examples=300, deadline=None)
@given(
    json_values,
    st.sampled_from(["CREATE", "UPDATE", "DELETE", ""]),
    st.sampled_from(["", "ephemeralcontainers"]),
    json_values,
)
def test_any_review_is_answered_or_malformed(pod: Any, operation: str, sub_resource: str, old: Any) -> None:
    document = admission(pod, operation=operation, sub_resource=sub_resource, old=old)
    assert answer(document)["allowed"] is True
    with pytest.raises(MalformedReview):
        review({**document, "request": {**document["request"], "uid": None}}, SETTINGS, ENABLED)
