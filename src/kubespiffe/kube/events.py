"""Kubernetes Events for what a user must see on their resource (`kubectl describe`, `kubectl get events`).

Recording an Event is best effort: failing to record one is logged and never fails the work it describes.
"""

from __future__ import annotations

import logging

from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.models.core_v1 import EventSource, ObjectReference
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Event

log = logging.getLogger(__name__)

# The API server refuses longer messages; keep the start, which says what happened.
MAX_MESSAGE = 1000


async def record_warning(client: AsyncClient, involved: ObjectReference, reason: str, message: str) -> None:
    """A Warning Event on `involved`; cluster-scoped objects get theirs in the `default` namespace."""
    name = involved.name or "object"
    try:
        await client.create(
            Event(
                metadata=ObjectMeta(generateName=f"{name}.", namespace=involved.namespace or "default"),
                involvedObject=involved,
                reason=reason,
                message=message[:MAX_MESSAGE],
                type="Warning",
                source=EventSource(component="kubespiffed"),
            )
        )
    except ApiError as exc:
        log.warning("could not record event for %s: %s", name, exc)
