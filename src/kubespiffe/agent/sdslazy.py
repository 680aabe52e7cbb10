"""The SDS service on the agent's gRPC server, loaded when its first call arrives.

Envoy's generated messages (PyPI `xds-protos`) are only needed by pods that run Envoy or Istio, so the
agent registers this handler, which knows the service's name only, and imports `agent.sds` (and the
protos with it) on the first SDS call: the agent's RSS grows by about 1.3 MiB then (docs/sds.md), small,
but paid by no pod that never asks. Server reflection lists the service from the start and describes it
once it has been loaded.
"""

from __future__ import annotations

from typing import Any

import grpc

from kubespiffe.agent.state import AgentState

SERVICE_NAME = "envoy.service.secret.v3.SecretDiscoveryService"


class LazySecretDiscovery(grpc.GenericRpcHandler):  # type: ignore[type-arg]
    def __init__(self, state: AgentState) -> None:
        self._state = state
        self._handler: grpc.GenericRpcHandler | None = None  # type: ignore[type-arg]

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:  # type: ignore[type-arg]
        if not handler_call_details.method.startswith(f"/{SERVICE_NAME}/"):
            return None
        if self._handler is None:
            self._handler = _load(self._state)
        return self._handler.service(handler_call_details)


def _load(state: AgentState) -> Any:
    from kubespiffe.agent import sds  # here, not at the top: the point of this module

    return sds.generic_handler(state)
