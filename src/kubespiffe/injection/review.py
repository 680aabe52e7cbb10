"""AdmissionReview (admission.k8s.io/v1) in, AdmissionReview out: the webhook's whole answer, without I/O.

The answer always admits (`allowed: true`): the injector may add a sidecar, never block a pod. A pod it
cannot patch safely is admitted unchanged with a warning the creator sees (kubectl prints it). Only a
body that is not an AdmissionReview request with a uid raises `MalformedReview`, because there is no
request to answer; the HTTP adapter turns it into a 400 and the API server applies the webhook's
failurePolicy (which should be Ignore).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from kubespiffe.errors import InvalidInput
from kubespiffe.injection.mutate import Decision, Patch, Refused, is_injected, mutate, select
from kubespiffe.injection.settings import InjectionSettings

API_VERSION: Final = "admission.k8s.io/v1"
# An AdmissionReview carries the object and, on updates, the old object: two Pods of at most ~1.5 MiB
# each (etcd's limit). Anything much larger is not from a kube-apiserver.
MAX_REVIEW_BYTES: Final = 8 * 1024 * 1024
WARNING_PREFIX: Final = "kubespiffe: sidecar not injected: "
# kube-apiserver may truncate longer warnings.
MAX_WARNING_CHARS: Final = 256
_POD_KIND: Final = {"group": "", "version": "v1", "kind": "Pod"}


class MalformedReview(InvalidInput):
    """The body is not an AdmissionReview request that can be answered (no uid to answer to)."""


@dataclass(frozen=True)
class Skipped:
    """Not a request for injection (another operation, an unselected pod): admit without a warning."""

    reason: str


Outcome = Decision | Skipped


@dataclass(frozen=True)
class AdmissionRequest:
    """The parts of `request` the injector reads; the objects stay as the raw JSON."""

    uid: str
    operation: str
    namespace: str
    sub_resource: str
    kind: object
    pod: object
    old_pod: object


def decode_review(body: bytes) -> Any:
    """JSON from the webhook's POST body, bounded in size and depth."""
    if len(body) > MAX_REVIEW_BYTES:
        raise MalformedReview(f"AdmissionReview larger than {MAX_REVIEW_BYTES} bytes")
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise MalformedReview(f"AdmissionReview is not JSON: {type(exc).__name__}") from None


def parse_review(document: object) -> AdmissionRequest:
    """Check the envelope (apiVersion, kind, a request with a uid); the adapter needs `.namespace`."""
    if not isinstance(document, Mapping):
        raise MalformedReview("AdmissionReview is not a JSON object")
    if document.get("apiVersion") != API_VERSION or document.get("kind") != "AdmissionReview":
        raise MalformedReview(f"expected kind AdmissionReview, apiVersion {API_VERSION}")
    request = document.get("request")
    if not isinstance(request, Mapping):
        raise MalformedReview("AdmissionReview has no request")
    uid = request.get("uid")
    if not isinstance(uid, str) or not 0 < len(uid) <= 128:
        raise MalformedReview("AdmissionReview request has no uid")

    def text(key: str) -> str:
        value = request.get(key)
        return value if isinstance(value, str) else ""

    return AdmissionRequest(
        uid=uid,
        operation=text("operation"),
        namespace=text("namespace"),
        sub_resource=text("subResource"),
        kind=request.get("kind"),
        pod=request.get("object"),
        old_pod=request.get("oldObject"),
    )


def _container_names(pod: object) -> set[str]:
    spec = pod.get("spec") if isinstance(pod, Mapping) else None
    if not isinstance(spec, Mapping):
        return set()
    names = set()
    for field in ("containers", "initContainers", "ephemeralContainers"):
        items = spec.get(field)
        for container in items if isinstance(items, list) else []:
            if isinstance(container, Mapping) and isinstance(container.get("name"), str):
                names.add(container["name"])
    return names


def decide(
    request: AdmissionRequest, settings: InjectionSettings, namespace_labels: Mapping[str, str] | None
) -> Outcome:
    """Pod CREATE: inject if selected. UPDATE of pods/ephemeralcontainers on an injected pod: wire the
    new debug containers to the socket. Every other request: skipped."""
    creating = request.operation == "CREATE" and not request.sub_resource
    debugging = request.operation == "UPDATE" and request.sub_resource == "ephemeralcontainers"
    if not (creating or debugging):
        return Skipped(f"{request.operation or 'unknown'} {request.sub_resource} is not mutated".strip())
    if request.kind != _POD_KIND:
        return Refused("the webhook was called for something other than a v1 Pod")
    pod = request.pod
    if not isinstance(pod, Mapping) or pod.get("kind", "Pod") != "Pod" or pod.get("apiVersion", "v1") != "v1":
        return Refused("the request's object is not a v1 Pod")
    if not request.namespace:
        return Refused("the request has no namespace")
    if request.namespace == settings.namespace:
        return Skipped(f"namespace {request.namespace} is kubespiffed's own")
    if debugging:
        if not is_injected(pod):
            return Skipped("the pod was not injected")
        if not isinstance(request.old_pod, Mapping):
            return Refused("an ephemeral-containers update without the old pod")
        return mutate(pod, request.namespace, settings, frozen=_container_names(request.old_pod))
    selection = select(pod, request.namespace, namespace_labels, settings)
    if not selection.inject:
        return Skipped(selection.reason)
    return mutate(pod, request.namespace, settings)


def respond(request: AdmissionRequest, outcome: Outcome) -> dict[str, Any]:
    """The AdmissionReview response: always allowed; a JSONPatch or a warning when there is one."""
    response: dict[str, Any] = {"uid": request.uid, "allowed": True}
    if isinstance(outcome, Patch):
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(outcome.to_json()).decode("ascii")
    elif isinstance(outcome, Refused):
        response["warnings"] = [(WARNING_PREFIX + outcome.warning)[:MAX_WARNING_CHARS]]
    return {"apiVersion": API_VERSION, "kind": "AdmissionReview", "response": response}


def review(
    admission_review: object, settings: InjectionSettings, namespace_labels: Mapping[str, str] | None
) -> dict[str, Any]:
    """The whole answer to one AdmissionReview (decoded JSON); raises only `MalformedReview`.

    `namespace_labels` are the labels of the request's namespace (`parse_review(doc).namespace`), or
    None when the caller does not know them (see `select`).
    """
    request = parse_review(admission_review)
    return respond(request, decide(request, settings, namespace_labels))
