"""Who a PodCertificateRequest is for, and which one identity its credential carries.

    request = RequestedPod(namespace=..., pod_name=..., pod_uid=..., ...)   # from the request's spec
    check_pod(request, pod_facts(pod) if pod else None, service_account_uid)  # PodCertificateDenied if not
    identity = choose_identity(request, registry.identities(pod))           # PodCertificateDenied if none

kube-apiserver's NodeRestriction admission checked, when the kubelet created the request, that the pod,
its UID, its ServiceAccount (and that account's UID) and its node agree with it. The signer checks again
when it decides, because the pod or its ServiceAccount may have been deleted or recreated in between, and a
credential must never go to a pod other than the one that exists now.

A pod certificate is one X.509-SVID, so it carries exactly one identity: the only one the pod's
registrations grant, or the one the pod's projected volume names in the `kubespiffe.io/spiffe-id` user
annotation. Several granted and none named is a refusal listing them, never a guess: the identity a pod
presents must be the one its author chose. The Kubernetes API asks signers to deny user annotations they do
not recognise; this signer recognises that one key only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from kubespiffe.constants import GROUP
from kubespiffe.errors import InvalidInput
from kubespiffe.registry.match import Identity, MatchResult
from kubespiffe.registry.template import PodFacts
from kubespiffe.spiffe.spiffeid import SpiffeId, SpiffeIdError

SPIFFE_ID_ANNOTATION = f"{GROUP}/spiffe-id"

# Condition reasons of a Denied request (the kubelet's user sees them in `kubectl get pcr -o yaml`).
POD_NOT_FOUND = "PodNotFound"
POD_MISMATCH = "PodMismatch"
NOT_REGISTERED = "NotRegistered"
IDENTITY_NOT_CHOSEN = "IdentityNotChosen"
IDENTITY_NOT_GRANTED = "IdentityNotGranted"
# The reason the Kubernetes API defines for user annotations a signer does not accept.
INVALID_USER_ANNOTATIONS = "InvalidUnverifiedUserAnnotations"


class PodCertificateDenied(InvalidInput):
    """The request must be denied; `reason` is the condition's reason, the message says exactly why."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class RequestedPod:
    """What a PodCertificateRequest says about the pod it is for (its spec, as the kubelet wrote it)."""

    namespace: str
    pod_name: str
    pod_uid: str
    service_account: str
    service_account_uid: str
    node_name: str
    user_annotations: Mapping[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.namespace}/{self.pod_name}"


def check_pod(request: RequestedPod, pod: PodFacts | None, service_account_uid: str | None) -> None:
    """Raise PodCertificateDenied unless `pod` (found by the request's namespace and name) is the pod the
    request names: same UID, ServiceAccount (name and UID) and node. `service_account_uid` is the UID of the
    pod's ServiceAccount as it exists now (None when it does not exist)."""
    if pod is None:
        raise PodCertificateDenied(f"pod {request} does not exist (deleted since the request)", POD_NOT_FOUND)
    if pod.pod_uid != request.pod_uid:
        raise PodCertificateDenied(
            f"pod {request} has UID {pod.pod_uid}, the request names UID {request.pod_uid} "
            "(the pod was recreated since the request)",
            POD_MISMATCH,
        )
    if pod.service_account != request.service_account:
        raise PodCertificateDenied(
            f"pod {request} runs as ServiceAccount {pod.service_account}, "
            f"the request names {request.service_account}",
            POD_MISMATCH,
        )
    if service_account_uid != request.service_account_uid:
        now = f"has UID {service_account_uid}" if service_account_uid else "does not exist"
        raise PodCertificateDenied(
            f"ServiceAccount {request.namespace}/{request.service_account} {now}, the request names UID "
            f"{request.service_account_uid} (the ServiceAccount was recreated since the request)",
            POD_MISMATCH,
        )
    if pod.node_name != request.node_name:
        raise PodCertificateDenied(
            f"pod {request} is bound to node {pod.node_name or '(none)'}, the request comes from node "
            f"{request.node_name}",
            POD_MISMATCH,
        )


def _wanted(request: RequestedPod) -> SpiffeId | None:
    unknown = sorted(key for key in request.user_annotations if key != SPIFFE_ID_ANNOTATION)
    if unknown:
        raise PodCertificateDenied(
            f"unrecognised user annotations {', '.join(unknown)}: "
            f"this signer reads {SPIFFE_ID_ANNOTATION} only",
            INVALID_USER_ANNOTATIONS,
        )
    text = request.user_annotations.get(SPIFFE_ID_ANNOTATION)
    if text is None:
        return None
    try:
        return SpiffeId.parse(text)
    except SpiffeIdError as exc:
        raise PodCertificateDenied(
            f"user annotation {SPIFFE_ID_ANNOTATION}: {exc}", INVALID_USER_ANNOTATIONS
        ) from None


def choose_identity(request: RequestedPod, result: MatchResult) -> Identity:
    """The one identity the credential carries; PodCertificateDenied says why there is none."""
    wanted = _wanted(request)
    granted = result.identities
    if not granted:
        why = "; ".join(f"{s.registration}: {s.reason}" for s in result.skipped)
        raise PodCertificateDenied(
            f"no registration grants pod {request} an identity" + (f" ({why})" if why else ""),
            NOT_REGISTERED,
        )
    ids = ", ".join(str(i.spiffe_id) for i in granted)
    if wanted is not None:
        for identity in granted:
            if identity.spiffe_id == wanted:
                return identity
        raise PodCertificateDenied(
            f"{wanted} (user annotation {SPIFFE_ID_ANNOTATION}) is not granted to pod {request}; "
            f"granted: {ids}",
            IDENTITY_NOT_GRANTED,
        )
    if len(granted) > 1:
        raise PodCertificateDenied(
            f"pod {request} is granted {len(granted)} identities ({ids}); name one with the user annotation "
            f"{SPIFFE_ID_ANNOTATION} on its podCertificate projection",
            IDENTITY_NOT_CHOSEN,
        )
    return granted[0]
