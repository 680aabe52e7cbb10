"""The pieces injected into a pod, as plain JSON-ready dicts (the native sidecar of docs/agent.md).

Each call builds fresh objects, so a caller may embed them in a patch without aliasing.
"""

from __future__ import annotations

from typing import Any

from kubespiffe.injection.settings import (
    AGENT_UID,
    BUNDLE_DIR,
    BUNDLE_VOLUME,
    SIDECAR_NAME,
    SOCKET_ENV,
    SOCKET_VOLUME,
    TOKEN_DIR,
    TOKEN_FILE,
    TOKEN_VOLUME,
    InjectionSettings,
)

# Seconds the sidecar's postStart hook waits for the first SVID; then it fails, and the kubelet restarts
# the agent's container (as a startup probe's failureThreshold would). Bounded this much because the
# kubelet holds a pod's other work, its deletion included, while the hook runs (measured on the node): a
# pod that gets no SVID is deleted up to this long after its grace period. The first SVID normally comes
# within a second; this also covers a kubespiffed rollout.
STARTUP_WAIT = 20


def _probe_command(settings: InjectionSettings) -> list[str]:
    """`kubespiffe probe` succeeds while the agent holds a valid X.509-SVID."""
    return ["kubespiffe", "probe", "--socket", settings.socket_path]


def _probe(settings: InjectionSettings, *, period: int, failures: int) -> dict[str, Any]:
    # The probe's own --timeout is 1 s; the kubelet's timeout also covers the Python start-up of the probe
    # command, hence 5 s.
    return {
        "exec": {"command": _probe_command(settings)},
        "periodSeconds": period,
        "timeoutSeconds": 5,
        "failureThreshold": failures,
    }


def sidecar(settings: InjectionSettings) -> dict[str, Any]:
    """The agent as a native sidecar: an init container with `restartPolicy: Always`.

    The postStart hook holds back the app containers until the pod has an SVID: the kubelet starts them once
    the hook returns, which it does the moment the agent holds one (a startup probe would start them only
    at its next period, up to a second later). After STARTUP_WAIT seconds without one the hook fails and
    the kubelet restarts the agent. The readiness probe takes the pod out of its Services while it holds no
    valid SVID (identity lost, or expired during a long outage). The security context passes the
    `restricted` Pod Security Standard, so injection never makes a compliant pod non-compliant.
    """
    return {
        "name": SIDECAR_NAME,
        "image": settings.image,
        "imagePullPolicy": settings.image_pull_policy,
        "restartPolicy": "Always",
        "command": settings.agent_command(),
        "lifecycle": {
            "postStart": {"exec": {"command": [*_probe_command(settings), "--wait", f"{STARTUP_WAIT}"]}}
        },
        "readinessProbe": _probe(settings, period=10, failures=3),
        "resources": {kind: dict(values) for kind, values in settings.resources.items()},
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": AGENT_UID,
            "runAsGroup": AGENT_UID,
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [
            {"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": True},
            {"name": BUNDLE_VOLUME, "mountPath": BUNDLE_DIR, "readOnly": True},
            {"name": SOCKET_VOLUME, "mountPath": settings.socket_dir},
        ],
    }


def volumes(settings: InjectionSettings) -> list[dict[str, Any]]:
    """The pod-bound token (the kubelet refreshes it), the bootstrap bundle and the socket's emptyDir."""
    token = {
        "audience": settings.audience,
        "expirationSeconds": settings.token_expiration_seconds,
        "path": TOKEN_FILE,
    }
    return [
        {"name": TOKEN_VOLUME, "projected": {"sources": [{"serviceAccountToken": token}]}},
        {
            "name": BUNDLE_VOLUME,
            "configMap": {
                "name": settings.bundle_configmap,
                "items": [{"key": settings.bundle_key, "path": settings.bundle_key}],
            },
        },
        # A socket takes no space; the limit only bounds what a container could write there.
        {"name": SOCKET_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}},
    ]


def socket_mount(settings: InjectionSettings) -> dict[str, Any]:
    """Read-only is enough: connecting to a Unix socket is not a write to the file system."""
    return {"name": SOCKET_VOLUME, "mountPath": settings.socket_dir, "readOnly": True}


def socket_env(settings: InjectionSettings) -> dict[str, Any]:
    return {"name": SOCKET_ENV, "value": settings.socket_uri}
