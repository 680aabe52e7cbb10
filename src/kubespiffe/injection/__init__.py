"""Sidecar injection for kubespiffed's mutating admission webhook: pure functions, dict in, dict out.

Use (the HTTP adapter; everything here is free of I/O, so it runs inline in the request handler)::

    from kubespiffe.injection import InjectionSettings, MalformedReview, decode_review, parse_review, review

    settings = InjectionSettings(image="ghcr.io/kubespiffe/kubespiffe:0.1.0", namespace="kubespiffe-system")
    try:
        document = decode_review(body)             # the POST body; size- and depth-bounded JSON
        namespace = parse_review(document).namespace
    except MalformedReview as exc:
        ...                                        # HTTP 400, str(exc); the failurePolicy decides
    answer = review(document, settings, namespace_labels.get(namespace))   # None when not known
    ...                                            # HTTP 200, json.dumps(answer)

`review` always admits: it returns a JSONPatch that adds the `kubespiffe agent` native sidecar, nothing
(not selected, already injected), or nothing plus a warning for a pod it cannot patch safely. For logs,
`decide(parse_review(document), settings, labels)` gives the outcome (`Patch` with a summary,
`Unchanged`, `Refused`, `Skipped`) and `respond(request, outcome)` the same answer as `review`.

Injection is wanted for pods created in namespaces labelled `kubespiffe.io/inject=enabled`, except pods
labelled `kubespiffe.io/inject=disabled` and pods in kubespiffed's own namespace (`select`). An injected
pod gets the annotation `kubespiffe.io/injected: <version>`, the init container `kubespiffe-agent` with
`restartPolicy: Always`, the volumes `kubespiffe-token` (projected ServiceAccount token),
`kubespiffe-bundle` (the bundle ConfigMap) and `kubespiffe-socket` (emptyDir, medium Memory); every app
container and ephemeral container gets the socket directory read-only and `SPIFFE_ENDPOINT_SOCKET`.
Regular init containers run before the sidecar starts, so they are not wired (see `mutate`).

The webhook configuration should match CREATE of `pods` and UPDATE of `pods/ephemeralcontainers`,
with the namespaceSelector `kubespiffe.io/inject In (enabled)` (and not kubespiffed's namespace), the
objectSelector `kubespiffe.io/inject NotIn (disabled)`, `reinvocationPolicy: IfNeeded`,
`sideEffects: None` and `failurePolicy: Ignore`.
"""

from kubespiffe.injection.mutate import (
    Decision,
    Patch,
    Refused,
    Selection,
    Unchanged,
    is_injected,
    mutate,
    pointer,
    select,
)
from kubespiffe.injection.review import (
    MAX_REVIEW_BYTES,
    AdmissionRequest,
    MalformedReview,
    Outcome,
    Skipped,
    decide,
    decode_review,
    parse_review,
    respond,
    review,
)
from kubespiffe.injection.settings import (
    INJECT_LABEL,
    INJECTED_ANNOTATION,
    SIDECAR_NAME,
    SOCKET_ENV,
    InjectionSettings,
)

__all__ = [
    "INJECTED_ANNOTATION",
    "INJECT_LABEL",
    "MAX_REVIEW_BYTES",
    "SIDECAR_NAME",
    "SOCKET_ENV",
    "AdmissionRequest",
    "Decision",
    "InjectionSettings",
    "MalformedReview",
    "Outcome",
    "Patch",
    "Refused",
    "Selection",
    "Skipped",
    "Unchanged",
    "decide",
    "decode_review",
    "is_injected",
    "mutate",
    "parse_review",
    "pointer",
    "respond",
    "review",
    "select",
]
