"""The issuer API's bounds that hold from the moment a call starts, before its request is read.

- A call's metadata is at most 16 KiB. grpc's HTTP/2 transport enforces its own 16 KiB bound only once
  the client has acknowledged the server's SETTINGS; until then it takes HTTP/2's default, 16 MiB per
  header block, and a client that sends its headers first and its acknowledgement later got calls with
  megabytes of metadata, held for as long as they waited for a request (grpcio 1.85: 20 connections x
  15 MB took a kubespiffed-like server to 567 MB). A client that never acknowledges is closed by
  `grpc.http2.settings_timeout` (app.issuer_server).
- At most `max_in_flight` calls, streams included, from their start to their end: a call that never sends
  its request counts too (a bound applied once the request is in would let such calls pile up).

Each refusal is RESOURCE_EXHAUSTED, sent at once, counted in `kubespiffe_issuer_limit_refusals_total` and
logged with the caller's address (nothing else of the call is known yet).
grpc's own `maximum_concurrent_rpcs` refuses the same way but counts nothing. With a request message
bounded too (MAX_REQUEST_BYTES), a call in flight holds at most 32 KiB of what its caller sent.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Never, TypeAlias

import grpc

from kubespiffe.proto import issuer_pb2_grpc
from kubespiffe.server.issuer import LIMIT_REFUSALS

log = logging.getLogger("kubespiffed.issuer")

Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
if TYPE_CHECKING:  # grpc's stubs are generic, its classes are not
    GenericRpcHandler = grpc.GenericRpcHandler[Any, Any]
else:
    GenericRpcHandler = grpc.GenericRpcHandler

# gRPC's hard limit once SETTINGS are acknowledged (grpc.absolute_max_metadata_size's default). A pod's
# token is at most 6 KiB (attestation.token.MAX_TOKEN_BYTES), the rest of the metadata a few hundred bytes.
MAX_METADATA_BYTES = 16 * 1024
# A request message (grpc.max_receive_message_length, set in app.issuer_server; grpc's default is 4 MiB):
# grpc refuses a larger one from its length prefix, before buffering it. The largest requests are a
# MintJWTSVIDRequest (16 audiences of 256 characters and a SPIFFE ID: about 6 KiB) and a MintX509SVIDRequest
# (an agent's CSR is under 2 KiB, RSA-4096 included). 4 MiB requests that never end, 50 calls on each of
# 4 connections, took a grpc asyncio server to 833 MB.
MAX_REQUEST_BYTES = 16 * 1024


class CallBounds(GenericRpcHandler):
    """The Issuer service's method handlers, each behind the bounds.

    It replaces the generated registration (`add_IssuerServicer_to_server` also registers the methods
    with grpc's core, and a registered method is dispatched without asking generic handlers), so every
    call passes `service` first: a dict lookup, a sum over a few pairs, and a callback on the call's task,
    which grpc's asyncio server creates per call and in which it asks for the handler.
    """

    def __init__(
        self,
        servicer: issuer_pb2_grpc.IssuerServicer,
        *,
        max_in_flight: int,
        max_metadata_bytes: int = MAX_METADATA_BYTES,
    ) -> None:
        collected = _Collected()
        issuer_pb2_grpc.add_IssuerServicer_to_server(servicer, collected)  # type: ignore[arg-type]
        self._handlers = {
            f"/{collected.service}/{name}": handler for name, handler in collected.handlers.items()
        }
        self._max_in_flight = max_in_flight
        self._max_metadata = max_metadata_bytes
        self._in_flight = 0
        # Request streaming, so grpc starts them without reading a request first.
        self._too_much_metadata = grpc.stream_unary_rpc_method_handler(self._refuse_metadata)
        self._busy = grpc.stream_unary_rpc_method_handler(self._refuse_busy)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Handler | None:
        handler = self._handlers.get(handler_call_details.method)
        if handler is None:
            return None  # grpc answers UNIMPLEMENTED
        metadata = handler_call_details.invocation_metadata
        if sum(len(key) + len(value) for key, value in metadata or ()) > self._max_metadata:
            return self._too_much_metadata
        if self._in_flight >= self._max_in_flight:
            return self._busy
        call = asyncio.current_task()
        if call is None:
            raise RuntimeError("grpc asked for an issuer handler outside a call's task")
        self._in_flight += 1
        call.add_done_callback(self._ended)
        return handler

    def _ended(self, call: object) -> None:
        self._in_flight -= 1

    async def _refuse_metadata(self, requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Never:
        await _refuse(context, "metadata_size", f"call metadata is larger than {self._max_metadata} bytes")

    async def _refuse_busy(self, requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Never:
        reason = f"{self._max_in_flight} calls in flight"
        await _refuse(context, "concurrent_rpcs", reason, "kubespiffed is busy; retry later")


async def _refuse(
    context: grpc.aio.ServicerContext[Any, Any], limit: str, reason: str, details: str = ""
) -> Never:
    """Counted, logged with the peer (nothing of the call is authenticated yet), and ended."""
    LIMIT_REFUSALS.labels(limit).inc()
    log.warning("rejected peer=%s reason=%r", context.peer(), reason)
    await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, details or reason)


class _Collected:
    """Stands in for the server while the generated code registers the Issuer methods."""

    def __init__(self) -> None:
        self.service = ""
        self.handlers: dict[str, Handler] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        """The generated code's generic handler is replaced by CallBounds."""

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Handler]) -> None:
        self.service = service
        self.handlers = handlers
