"""Persist the authority state in one Secret, with optimistic concurrency.

Two replicas starting together both see 404, both create; the API server accepts one create and answers
the other 409, and the loser reads and adopts the winner's state. So the cluster ends with exactly one CA.
Updates carry the resourceVersion they read, so a concurrent writer is detected rather than overwritten.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Secret

from kubespiffe.authority.state import AuthorityState
from kubespiffe.constants import ROTATE_ANNOTATION
from kubespiffe.errors import KubespiffeError

LABELS = {"app.kubernetes.io/name": "kubespiffe", "app.kubernetes.io/component": "authority"}


class StaleStateError(KubespiffeError):
    """Someone else wrote the Secret since it was read; re-read and retry."""


@dataclass(frozen=True)
class Stored:
    state: AuthorityState
    resource_version: str
    annotations: Mapping[str, str] = field(default_factory=dict)

    @property
    def rotate_requested(self) -> bool:
        return ROTATE_ANNOTATION in self.annotations


async def load(client: AsyncClient, namespace: str, name: str) -> Stored | None:
    """The stored state, or None when the Secret does not exist (a malformed one raises StateError)."""
    try:
        secret = await client.get(Secret, name, namespace=namespace)
    except ApiError as exc:
        if exc.status.code == 404:
            return None
        raise
    assert secret.metadata is not None
    return Stored(
        AuthorityState.from_secret_data(secret.data),
        str(secret.metadata.resourceVersion),
        dict(secret.metadata.annotations or {}),
    )


async def load_or_create(
    client: AsyncClient, namespace: str, name: str, create: Callable[[], AuthorityState]
) -> Stored:
    """Read the Secret; when absent, create it from `create()`, adopting the winner's state on a 409."""
    stored = await load(client, namespace, name)
    if stored is not None:
        return stored
    state = create()
    secret = Secret(
        metadata=ObjectMeta(name=name, namespace=namespace, labels=dict(LABELS)),
        type="Opaque",
        data=state.to_secret_data(),
    )
    try:
        created = await client.create(secret)
    except ApiError as exc:
        if exc.status.code != 409:
            raise
        stored = await load(client, namespace, name)
        if stored is None:
            raise RuntimeError(f"Secret {namespace}/{name} vanished right after a create conflict") from exc
        return stored
    assert created.metadata is not None
    return Stored(state, str(created.metadata.resourceVersion))


async def update(
    client: AsyncClient,
    namespace: str,
    name: str,
    state: AuthorityState,
    resource_version: str,
    annotations: Mapping[str, str] | None = None,
) -> Stored:
    """Replace the Secret only if it is still at `resource_version`; otherwise raise StaleStateError.

    The Secret's labels are reset to LABELS and its annotations to `annotations`.
    """
    secret = Secret(
        metadata=ObjectMeta(
            name=name,
            namespace=namespace,
            labels=dict(LABELS),
            annotations=dict(annotations or {}),
            resourceVersion=resource_version,
        ),
        type="Opaque",
        data=state.to_secret_data(),
    )
    try:
        replaced = await client.replace(secret)
    except ApiError as exc:
        if exc.status.code == 409:
            raise StaleStateError(f"Secret {namespace}/{name} changed since it was read") from None
        raise
    assert replaced.metadata is not None
    return Stored(state, str(replaced.metadata.resourceVersion), dict(annotations or {}))
