"""Stand-in for the kubelet's part: create Pod objects and request their pod-bound tokens.

With no kubelet in the local control plane, the demo and the tests get a pod's projected token the way
the kubelet does: the TokenRequest API with `boundObjectRef` pointing at the pod.
"""

from __future__ import annotations

from collections.abc import Mapping

from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.models.authentication_v1 import BoundObjectReference, TokenRequestSpec
from lightkube.models.core_v1 import Container, PodSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Namespace, Pod, ServiceAccount, ServiceAccountToken

DEFAULT_AUDIENCE = "kubespiffe"


async def ensure_namespace(client: AsyncClient, name: str, labels: Mapping[str, str] | None = None) -> None:
    try:
        await client.create(Namespace(metadata=ObjectMeta(name=name, labels=dict(labels or {}))))
    except ApiError as exc:
        if exc.status.code != 409:
            raise


async def create_pod(
    client: AsyncClient,
    namespace: str,
    name: str,
    service_account: str,
    *,
    labels: Mapping[str, str] | None = None,
    node_name: str | None = None,
) -> Pod:
    """Create the ServiceAccount (if needed) and a Pod using it; returns the stored Pod (with its UID)."""
    try:
        await client.create(ServiceAccount(metadata=ObjectMeta(name=service_account, namespace=namespace)))
    except ApiError as exc:
        if exc.status.code != 409:
            raise
    pod = Pod(
        metadata=ObjectMeta(name=name, namespace=namespace, labels=dict(labels or {})),
        spec=PodSpec(
            serviceAccountName=service_account,
            automountServiceAccountToken=False,
            nodeName=node_name,
            containers=[Container(name="app", image="registry.invalid/app:latest")],
        ),
    )
    created: Pod = await client.create(pod)
    return created


async def pod_token(
    client: AsyncClient, pod: Pod, audience: str = DEFAULT_AUDIENCE, expiration_seconds: int = 600
) -> str:
    """A projected-style ServiceAccount token bound to `pod`, as the kubelet would mount it."""
    assert pod.metadata is not None and pod.spec is not None
    request = ServiceAccountToken(
        metadata=ObjectMeta(namespace=pod.metadata.namespace),
        spec=TokenRequestSpec(
            audiences=[audience],
            expirationSeconds=expiration_seconds,
            boundObjectRef=BoundObjectReference(
                apiVersion="v1", kind="Pod", name=pod.metadata.name, uid=pod.metadata.uid
            ),
        ),
    )
    response = await client.create(request, pod.spec.serviceAccountName, namespace=pod.metadata.namespace)
    assert response.status is not None
    token: str = response.status.token
    return token
