"""The SDS service on the agent's gRPC server, loaded when its first call arrives.

Envoy's generated messages (PyPI `xds-protos`) are only needed by pods that run Envoy or Istio, so the
agent registers this servicer, which knows the service's name and methods only, and imports `agent.sds`
(and the protos with it) on the first SDS call: the agent's RSS grows by about 1.3 MiB then
(docs/sds.md), small, but paid by no pod that never asks. Until then grpclib moves each message as its
encoded bytes (`Raw`); `agent.sds` decodes and encodes them with Envoy's types. Server reflection lists
the service from the start and describes it once it has been loaded.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from grpclib.const import Cardinality, Handler
from grpclib.server import Stream

from kubespiffe.agent.state import AgentState

SERVICE_NAME = "envoy.service.secret.v3.SecretDiscoveryService"
_METHODS = {
    "StreamSecrets": Cardinality.STREAM_STREAM,
    "FetchSecrets": Cardinality.UNARY_UNARY,
    "DeltaSecrets": Cardinality.STREAM_STREAM,
}

RawStream = Stream["Raw", "Raw"]


class Raw:
    """A message left encoded: grpclib's codec only calls FromString and SerializeToString on it."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    @classmethod
    def FromString(cls, data: bytes) -> Raw:
        return cls(data)

    def SerializeToString(self) -> bytes:
        return self.data


class LazySecretDiscovery:
    def __init__(self, state: AgentState) -> None:
        self._state = state
        self._servicer: Any = None

    def __mapping__(self) -> dict[str, Handler]:
        return {
            f"/{SERVICE_NAME}/{name}": Handler(self._method(name), cardinality, Raw, Raw)
            for name, cardinality in _METHODS.items()
        }

    def _method(self, name: str) -> Callable[[RawStream], Awaitable[None]]:
        async def call(stream: RawStream) -> None:
            if self._servicer is None:
                from kubespiffe.agent import sds  # here, not at the top: the point of this module

                self._servicer = sds.SecretDiscovery(self._state)
            await getattr(self._servicer, name)(stream)

        return call
