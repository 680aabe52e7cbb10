"""Whether to inject, and the JSON Patch (RFC 6902) that injects the agent sidecar into a pod.

`mutate` converges: on a pod without the sidecar it adds the sidecar, its volumes and the annotation and
wires every app and ephemeral container to the socket; on an injected pod it only wires containers that
are not wired yet (another webhook's container on reinvocation, a `kubectl debug` container); when
nothing is left to do it answers `Unchanged`. It refuses (the caller admits the pod unchanged, with a
warning) whenever the patch could make the pod invalid or change what the pod's author meant.

Regular init containers are not wired: they all run to completion before the sidecar (appended after
them) starts, so there would be no agent to talk to. Pods whose init containers need an SVID should
carry a hand-written sidecar placed before them (docs/agent.md) and the opt-out label.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from kubespiffe.injection.settings import (
    INJECT_DISABLED,
    INJECT_ENABLED,
    INJECT_LABEL,
    INJECTED_ANNOTATION,
    OUR_VOLUMES,
    SIDECAR_NAME,
    SOCKET_ENV,
    SOCKET_VOLUME,
    InjectionSettings,
)
from kubespiffe.injection.sidecar import sidecar, socket_env, socket_mount, volumes

MIRROR_ANNOTATION = "kubernetes.io/config.mirror"


@dataclass(frozen=True)
class Patch:
    """Apply `ops` (RFC 6902, only "add") to the pod; `summary` says what they do, for logs."""

    ops: tuple[Mapping[str, Any], ...]
    summary: str

    def to_json(self) -> bytes:
        return json.dumps(list(self.ops), separators=(",", ":")).encode()


@dataclass(frozen=True)
class Unchanged:
    """Nothing to do: the pod is already injected and wired."""

    reason: str


@dataclass(frozen=True)
class Refused:
    """The pod cannot be patched safely; admit it unchanged and show `warning` to whoever created it."""

    warning: str


Decision = Patch | Unchanged | Refused


@dataclass(frozen=True)
class Selection:
    inject: bool
    reason: str


def select(
    pod: Mapping[str, Any],
    namespace: str,
    namespace_labels: Mapping[str, str] | None,
    settings: InjectionSettings,
) -> Selection:
    """Whether this pod should get the sidecar at all (before asking whether it can).

    The webhook configuration's namespace and object selectors filter first; this re-checks, so a
    too-wide configuration never injects kubespiffed's own pods or an opted-out pod. `namespace_labels`
    None means the caller does not know them (its namespace cache lags a brand-new namespace): then the
    configuration's namespaceSelector is trusted for the namespace label.
    """
    if namespace == settings.namespace:
        return Selection(False, f"namespace {namespace} is kubespiffed's own")
    metadata = pod.get("metadata")
    labels = metadata.get("labels") if isinstance(metadata, Mapping) else None
    if isinstance(labels, Mapping) and labels.get(INJECT_LABEL) == INJECT_DISABLED:
        return Selection(False, f"pod label {INJECT_LABEL}={INJECT_DISABLED}")
    if namespace_labels is not None and namespace_labels.get(INJECT_LABEL) != INJECT_ENABLED:
        return Selection(False, f"namespace {namespace} lacks the label {INJECT_LABEL}={INJECT_ENABLED}")
    return Selection(True, "namespace enabled")


def pointer(*tokens: str | int) -> str:
    """A JSON Pointer (RFC 6901): "~" and "/" inside a token are escaped as "~0" and "~1"."""
    return "".join("/" + str(token).replace("~", "~0").replace("/", "~1") for token in tokens)


class _Unpatchable(Exception):
    """Internal: the reason a pod is refused, raised from deep inside the checks."""


def _shown(value: object) -> str:
    """Pod-supplied text in a warning: before validation it may be anything, so keep it short and tame."""
    text = value if isinstance(value, str) else repr(value)
    text = "".join(c if c.isprintable() and c.isascii() else "?" for c in text)
    return text if len(text) <= 64 else text[:61] + "..."


def _object(value: object, where: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _Unpatchable(f"{where} is not an object")
    return value


def _items(value: object, where: str) -> list[Mapping[str, Any]] | None:
    """A list of objects, or None where the list is absent (or null, which "add" replaces)."""
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(item, Mapping) for item in value):
        raise _Unpatchable(f"{where} is not a list of objects")
    return value


def _clean(path: object) -> str | None:
    if not isinstance(path, str):
        return None
    return posixpath.normpath("/" + path.lstrip("/"))


def _under(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory + "/")


def _runs_agent(container: Mapping[str, Any]) -> bool:
    """A hand-written sidecar (docs/agent.md) already serves this pod; a second agent would clash."""
    words: list[object] = []
    for key in ("command", "args"):
        value = container.get(key)
        if isinstance(value, list):
            words.extend(value)
    return (
        len(words) >= 2
        and isinstance(words[0], str)
        and posixpath.basename(words[0]) == "kubespiffe"
        and words[1] == "agent"
    )


def _marked(annotations: Mapping[str, Any], init_containers: list[Mapping[str, Any]] | None) -> bool:
    """Injected: our annotation and exactly one init container of ours, still a native sidecar."""
    ours = [c for c in init_containers or [] if c.get("name") == SIDECAR_NAME]
    return INJECTED_ANNOTATION in annotations and len(ours) == 1 and ours[0].get("restartPolicy") == "Always"


class _Mutation:
    def __init__(self, pod: Mapping[str, Any], settings: InjectionSettings, frozen: Collection[str]):
        self.settings = settings
        self.frozen = frozen
        self.metadata = _object(pod.get("metadata"), "metadata")
        self.has_metadata = isinstance(pod.get("metadata"), Mapping)
        self.annotations = _object(self.metadata.get("annotations"), "metadata.annotations")
        if not isinstance(pod.get("spec"), Mapping):
            raise _Unpatchable("the pod has no spec")
        self.spec: Mapping[str, Any] = pod["spec"]
        containers = _items(self.spec.get("containers"), "spec.containers")
        if not containers:
            raise _Unpatchable("the pod has no containers")
        self.containers = containers
        self.init_containers = _items(self.spec.get("initContainers"), "spec.initContainers")
        self.ephemeral = _items(self.spec.get("ephemeralContainers"), "spec.ephemeralContainers")
        self.volumes = _items(self.spec.get("volumes"), "spec.volumes")
        self.ops: list[dict[str, Any]] = []
        self.wired: list[str] = []

    def _all_containers(self) -> list[Mapping[str, Any]]:
        return [*self.containers, *(self.init_containers or []), *(self.ephemeral or [])]

    def decide(self) -> Decision:
        if MIRROR_ANNOTATION in self.annotations:
            raise _Unpatchable("a static (mirror) pod cannot use ServiceAccount tokens or ConfigMaps")
        if _marked(self.annotations, self.init_containers):
            if not any(v.get("name") == SOCKET_VOLUME for v in self.volumes or []):
                raise _Unpatchable(f"the pod is marked injected but has no volume {SOCKET_VOLUME}")
            self._wire_all()
            if not self.ops:
                return Unchanged(f"already injected ({INJECTED_ANNOTATION}, {SIDECAR_NAME})")
            return Patch(tuple(self.ops), f"wired {', '.join(self.wired)} to the existing {SIDECAR_NAME}")
        self._check_pod()
        self._add_sidecar()
        self._wire_all()
        wired = ", ".join(self.wired) if self.wired else "no container"
        return Patch(tuple(self.ops), f"injected {SIDECAR_NAME}; socket in {wired}")

    def _check_pod(self) -> None:
        spec = self.spec
        if _object(spec.get("os"), "spec.os").get("name") == "windows":
            raise _Unpatchable("Windows pods cannot run the agent (Unix socket, Linux security context)")
        dns = spec.get("dnsPolicy")
        resolves = self.settings.server_address is not None or dns in ("ClusterFirstWithHostNet", "None")
        if spec.get("hostNetwork") is True and not resolves:
            raise _Unpatchable(
                f"hostNetwork pod with dnsPolicy {_shown(dns or 'ClusterFirst')} cannot resolve "
                f"{self.settings.server}; set dnsPolicy: ClusterFirstWithHostNet"
            )
        for container in self._all_containers():
            if container.get("name") == SIDECAR_NAME:
                raise _Unpatchable(f"a container named {SIDECAR_NAME} exists but was not injected")
            if _runs_agent(container):
                raise _Unpatchable(
                    f"container {_shown(container.get('name'))} already runs kubespiffe agent; "
                    f"label the pod {INJECT_LABEL}={INJECT_DISABLED}"
                )
        for volume in self.volumes or []:
            if volume.get("name") in OUR_VOLUMES:
                raise _Unpatchable(f"the pod already has a volume named {_shown(volume['name'])}")

    def _add_sidecar(self) -> None:
        version = self.settings.version
        if not self.has_metadata:
            self._add(pointer("metadata"), {"annotations": {INJECTED_ANNOTATION: version}})
        elif not isinstance(self.metadata.get("annotations"), Mapping):
            self._add(pointer("metadata", "annotations"), {INJECTED_ANNOTATION: version})
        else:
            self._add(pointer("metadata", "annotations", INJECTED_ANNOTATION), version)
        self._append(("spec", "volumes"), self.volumes, volumes(self.settings))
        self._append(("spec", "initContainers"), self.init_containers, [sidecar(self.settings)])

    def _wire_all(self) -> None:
        for field, items in (("containers", self.containers), ("ephemeralContainers", self.ephemeral)):
            for index, container in enumerate(items or []):
                name = container.get("name")
                if not (isinstance(name, str) and name in self.frozen):
                    self._wire(("spec", field, index), container)

    def _wire(self, at: tuple[str | int, ...], container: Mapping[str, Any]) -> None:
        """Mount the socket directory and set SPIFFE_ENDPOINT_SOCKET, unless already there and ours."""
        name = _shown(container.get("name"))
        socket_dir = self.settings.socket_dir
        mounts = _items(container.get("volumeMounts"), f"volumeMounts of {name}")
        mounted = False
        for mount in mounts or []:
            path = _clean(mount.get("mountPath"))
            if path is None or not _under(path, socket_dir):
                continue
            if mount.get("name") == SOCKET_VOLUME and path == socket_dir and not mount.get("subPath"):
                mounted = True
            else:
                raise _Unpatchable(f"container {name} already mounts {_shown(path)} (the socket's directory)")
        for device in _items(container.get("volumeDevices"), f"volumeDevices of {name}") or []:
            path = _clean(device.get("devicePath"))
            if path is not None and _under(path, socket_dir):
                raise _Unpatchable(f"container {name} has a device at {_shown(path)}")
        env = _items(container.get("env"), f"env of {name}")
        wanted = socket_env(self.settings)
        has_env = False
        for variable in env or []:
            if variable.get("name") != SOCKET_ENV:
                continue
            if variable.get("value") != wanted["value"] or "valueFrom" in variable:
                raise _Unpatchable(f"container {name} sets {SOCKET_ENV} to something else")
            has_env = True
        if not mounted:
            self._append((*at, "volumeMounts"), mounts, [socket_mount(self.settings)])
        if not has_env:
            # First, so the container's own variables may refer to $(SPIFFE_ENDPOINT_SOCKET).
            if env is None:
                self._add(pointer(*at, "env"), [wanted])
            else:
                self._add(pointer(*at, "env", 0), wanted)
        if not (mounted and has_env):
            self.wired.append(name)

    def _add(self, path: str, value: Any) -> None:
        self.ops.append({"op": "add", "path": path, "value": value})

    def _append(self, at: tuple[str | int, ...], existing: object, values: list[dict[str, Any]]) -> None:
        """Append to a list, creating it when absent ("add" at "/-" needs the list to exist)."""
        if existing is None:
            self._add(pointer(*at), values)
        else:
            for value in values:
                self._add(pointer(*at) + "/-", value)


def mutate(
    pod: Mapping[str, Any],
    namespace: str,
    settings: InjectionSettings,
    *,
    frozen: Collection[str] = (),
) -> Decision:
    """The decision for `pod` (the JSON object from the AdmissionReview) in `namespace`.

    `frozen` names containers that must not be modified; `review` passes the containers of the old
    object for an ephemeral-containers update, where only the new debug container may change. Any pod
    shape gives a Decision: malformed input is refused, never raised.
    """
    if namespace == settings.namespace:
        return Refused(f"pods in kubespiffed's own namespace {namespace} are never injected")
    if not isinstance(pod, Mapping):
        return Refused("the object is not a pod")
    try:
        return _Mutation(pod, settings, frozen).decide()
    except _Unpatchable as refusal:
        return Refused(str(refusal))


def is_injected(pod: Mapping[str, Any]) -> bool:
    """The pod carries the annotation and the sidecar, so `mutate` would only wire new containers."""
    try:
        metadata = _object(pod.get("metadata"), "metadata")
        spec = _object(pod.get("spec"), "spec")
        return _marked(
            _object(metadata.get("annotations"), "metadata.annotations"),
            _items(spec.get("initContainers"), "spec.initContainers"),
        )
    except _Unpatchable:
        return False
