"""PodView: a Pod as kubespiffed keeps it, only the fields attestation and matching read.

    pods = WatchCache(client, PodView)                                # lists and watches /api/v1/pods
    pod = await client.get(PodView, "app-1", namespace="demo")        # same URL as Pod, a small object

Why not lightkube's Pod: kubespiffed caches every pod of the cluster, and the full model keeps all of
it (containers, volumes, managedFields, conditions...): 6.2 KB per pod for a one-container pod, 62 MB for
10,000 pods, and 50-60 ms of decoding per 1,000 pods on the event loop. msgspec (which lightkube decodes
with) decodes the API server's JSON straight into these structs and skips every other field: 0.6 KB per
pod (tracemalloc, shared strings interned) and 3 ms per 1,000 pods.

The attribute names are those of lightkube's Pod (metadata.name, spec.serviceAccountName, status.phase),
so code that reads these fields takes either. The nested structs are not tracked by the garbage collector
(gc=False: they hold strings and a dict of strings, never a cycle), so cached pods add one object each to
the collector's full passes, not dozens. PodView itself is tracked: lightkube's resource base class gives
it a __dict__, which msgspec does not allow with gc=False.
"""

from __future__ import annotations

import datetime as dt
import sys
from typing import ClassVar

import msgspec
from lightkube.core.resource import ApiInfo, NamespacedResourceG
from lightkube.resources.core_v1 import Pod


class PodMetaView(msgspec.Struct, gc=False, omit_defaults=True):
    name: str | None = None
    namespace: str | None = None
    uid: str | None = None
    resourceVersion: str | None = None
    labels: dict[str, str] | None = None
    deletionTimestamp: dt.datetime | None = None

    def __post_init__(self) -> None:
        # Thousands of pods share a few namespaces and label keys and values: one copy of each.
        if self.namespace is not None:
            self.namespace = sys.intern(self.namespace)
        if self.labels:
            self.labels = {sys.intern(k): sys.intern(v) for k, v in self.labels.items()}


class PodSpecView(msgspec.Struct, gc=False, omit_defaults=True):
    serviceAccountName: str | None = None
    nodeName: str | None = None

    def __post_init__(self) -> None:
        if self.serviceAccountName is not None:
            self.serviceAccountName = sys.intern(self.serviceAccountName)
        if self.nodeName is not None:
            self.nodeName = sys.intern(self.nodeName)


class PodStatusView(msgspec.Struct, gc=False, omit_defaults=True):
    phase: str | None = None

    def __post_init__(self) -> None:
        if self.phase is not None:
            self.phase = sys.intern(self.phase)


class PodView(NamespacedResourceG, msgspec.Struct, omit_defaults=True):  # type: ignore[misc]
    """A Pod with only the fields that bind a token to it and that registrations select on."""

    _api_info: ClassVar[ApiInfo] = Pod._api_info

    metadata: PodMetaView | None = None
    spec: PodSpecView | None = None
    status: PodStatusView | None = None
