"""Fuzz target for the injection webhook's whole answer: body bytes in, AdmissionReview response out."""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Mapping

import jsonpatch

from kubespiffe.injection.mutate import Patch, Unchanged, is_injected, mutate
from kubespiffe.injection.review import MalformedReview, decide, decode_review, parse_review, respond
from kubespiffe.injection.settings import INJECT_ENABLED, INJECT_LABEL, InjectionSettings
from tests.fuzz.common import Target, quoted

SETTINGS = InjectionSettings(image="registry.test/kubespiffe:1.2.3", namespace="kubespiffe-system")
_NAMESPACE_LABELS = (None, {INJECT_LABEL: INJECT_ENABLED})


def review(data: bytes) -> None:
    """Only MalformedReview may escape; every answer admits, names the request's uid and is JSON; a
    patch applies to the pod as an independent RFC 6902 applier reads it, and injects it for good."""
    try:
        request = parse_review(decode_review(data))
    except MalformedReview:
        return
    pod_before = copy.deepcopy(request.pod)
    for labels in _NAMESPACE_LABELS:
        outcome = decide(request, SETTINGS, labels)
        answer = json.loads(json.dumps(respond(request, outcome)))
        assert answer["response"]["allowed"] is True and answer["response"]["uid"] == request.uid
        assert request.pod == pod_before, "deciding must not modify the request"
        if not isinstance(outcome, Patch):
            continue
        ops = json.loads(base64.b64decode(answer["response"]["patch"]))
        assert isinstance(request.pod, Mapping)
        patched = jsonpatch.apply_patch(request.pod, ops)
        assert is_injected(patched)
        if request.operation == "CREATE":
            assert isinstance(mutate(patched, request.namespace, SETTINGS), Unchanged)


TARGETS = (
    Target(
        "review",
        review,
        max_len=16384,
        dictionary=quoted(
            "apiVersion kind request uid operation namespace subResource object oldObject CREATE UPDATE",
            "Pod ephemeralcontainers metadata spec containers name initContainers ephemeralContainers",
            "volumes env volumeMounts mountPath annotations labels image admission.k8s.io/v1",
            "AdmissionReview",
            INJECT_LABEL,
        ),
    ),
)
