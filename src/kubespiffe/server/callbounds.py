"""The issuer API's bounds that hold from the moment a call starts, before its request is read.

- A call's metadata is at most 16 KiB. grpc's HTTP/2 transport enforces its own 16 KiB bound only once
  the client has acknowledged the server's SETTINGS; until then it takes HTTP/2's default, 16 MiB per
  header block, and a client that sends its headers first and its acknowledgement later got calls with
  megabytes of metadata, held for as long as they waited for a request (grpcio 1.85: 20 connections x
  15 MB took a kubespiffed-like server to 567 MB). A client that never acknowledges is closed by
  `grpc.http2.settings_timeout` (app.issuer_server).
- At most `max_in_flight` calls, streams included, from their start to their end: a call that never sends
  its request counts too (a bound applied once the request is in would let such calls pile up).
- A call's token is verified at its start, as far as that needs no I/O (`pod_of`: the cluster's JWKS as
  last fetched, the verified-token cache). A token that is missing, malformed, forged, expired or for
  another audience is refused then (UNAUTHENTICATED, as the method would), so a caller without a valid
  token holds nothing at all.
- Shares of the bound, so that no caller can hold all of it:
  - a call with a valid token counts for its pod, at most MAX_CALLS_PER_POD at once (an agent holds one
    stream and mints one or a few at a time);
  - a call whose token only I/O can decide (its key is not in the JWKS as last fetched and a fetch is due,
    or the JWKS cannot be had and TokenReview decides) is nobody's yet: such calls wait for their request
    at most a quarter of `max_in_flight` at once, and at most `request_timeout` each. Once its request is
    in, the call is attested like any other and leaves that share. The JWKS fetch starts at once, so a
    made-up key id is refused at the start of calls from then on.

Each bound's refusal is RESOURCE_EXHAUSTED, sent at once, counted in
`kubespiffe_issuer_limit_refusals_total` and logged with the caller's address (so is a refused token).
How full each bound is shows in /metrics too (`publish`), so an operator sees a bound coming before its
refusals. grpc's own `maximum_concurrent_rpcs` refuses the same way but counts nothing. With a request
message bounded too (MAX_REQUEST_BYTES), a call in flight holds at most 32 KiB of what its caller sent.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import Counter as Tally
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, Never, TypeAlias

import grpc
from prometheus_client import Gauge

from kubespiffe.attestation.token import TokenRejected
from kubespiffe.proto import issuer_pb2_grpc
from kubespiffe.server.issuer import DECISIONS, LIMIT_REFUSALS, bearer

log = logging.getLogger("kubespiffed.issuer")

Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
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
# Calls in flight of one pod (known by its token): its agent's stream, renewals, JWT-SVIDs for several
# audiences at once, `kubespiffe fetch`.
MAX_CALLS_PER_POD = 64
# How long a call whose token could not be verified at its start may wait for its request (app passes
# --grpc-handshake-timeout): a client sends its request with its headers, in the same write.
REQUEST_TIMEOUT = 10.0
# The `rpc` label IssuerService counts each method's decisions under.
_RPC_LABELS = {
    "MintX509SVID": "x509",
    "MintJWTSVID": "jwt",
    "WatchBundles": "bundles",
    "WatchIdentity": "identity",
}

IN_FLIGHT = Gauge(
    "kubespiffe_issuer_calls_in_flight",
    "Issuer API calls in flight, streams included, from their start (bound: --max-concurrent-rpcs)",
)
WAITING_UNVERIFIED = Gauge(
    "kubespiffe_issuer_calls_unverified",
    "Issuer API calls whose token only I/O can verify, waiting for their request "
    "(bound: a quarter of --max-concurrent-rpcs)",
)
BUSIEST_POD = Gauge(
    "kubespiffe_issuer_busiest_pod_calls",
    f"Issuer API calls in flight of the pod with the most (bound: {MAX_CALLS_PER_POD})",
)


def unverified_share(max_in_flight: int) -> int:
    """How many calls whose token only I/O can verify may wait for their request at once."""
    return max(1, max_in_flight // 4)


class CallBounds(GenericRpcHandler):
    """The Issuer service's method handlers, each behind the bounds.

    It replaces the generated registration (`add_IssuerServicer_to_server` also registers the methods
    with grpc's core, and a registered method is dispatched without asking generic handlers), so every
    call passes `service` first. grpc's asyncio server runs each call in a task of its own and asks for
    the handler in it: the call's end is that task's end, and its handler runs in it too.
    """

    def __init__(
        self,
        servicer: issuer_pb2_grpc.IssuerServicer,
        *,
        max_in_flight: int,
        pod_of: Callable[[str], str | None],
        max_per_pod: int = MAX_CALLS_PER_POD,
        max_metadata_bytes: int = MAX_METADATA_BYTES,
        request_timeout: float = REQUEST_TIMEOUT,
    ) -> None:
        collected = _Collected()
        issuer_pb2_grpc.add_IssuerServicer_to_server(servicer, collected)  # type: ignore[arg-type]
        self._handlers: dict[str, Handler] = {}
        self._awaiting_request: dict[str, Handler] = {}
        self._rpc: dict[str, str] = {}
        for name, handler in collected.handlers.items():
            path = f"/{collected.service}/{name}"
            self._handlers[path] = self._leaving_unverified(handler)
            self._awaiting_request[path] = self._within_timeout(self._handlers[path])
            self._rpc[path] = _RPC_LABELS[name]
        self._pod_of = pod_of
        self._request_timeout = request_timeout
        self._max_in_flight = max_in_flight
        self._max_unverified = unverified_share(max_in_flight)
        self._max_per_pod = max_per_pod
        self._max_metadata = max_metadata_bytes
        self._in_flight = 0
        self._per_pod: Tally[str] = Tally()
        self._unverified: set[asyncio.Task[Any]] = set()
        # Request streaming, so grpc starts them without reading a request first.
        self._too_much_metadata = grpc.stream_unary_rpc_method_handler(self._refuse_metadata)
        self._busy = grpc.stream_unary_rpc_method_handler(self._refuse_busy)
        self._pod_busy = grpc.stream_unary_rpc_method_handler(self._refuse_pod_busy)
        self._unverified_busy = grpc.stream_unary_rpc_method_handler(self._refuse_unverified_busy)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def waiting_unverified(self) -> int:
        return len(self._unverified)

    @property
    def busiest_pod(self) -> int:
        """Calls in flight of the pod with the most (a scrape's work: nothing per call)."""
        return max(self._per_pod.values(), default=0)

    def publish(self) -> None:
        """Report these bounds' use in /metrics: the process serves one issuer API, so the gauges follow
        the last CallBounds published. Read at each scrape, they cost the calls nothing."""
        IN_FLIGHT.set_function(lambda: self.in_flight)
        WAITING_UNVERIFIED.set_function(lambda: self.waiting_unverified)
        BUSIEST_POD.set_function(lambda: self.busiest_pod)

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Handler | None:
        handler = self._handlers.get(handler_call_details.method)
        if handler is None:
            return None  # grpc answers UNIMPLEMENTED
        metadata = handler_call_details.invocation_metadata or ()
        if sum(len(key) + len(value) for key, value in metadata) > self._max_metadata:
            return self._too_much_metadata
        if self._in_flight >= self._max_in_flight:
            return self._busy
        call = asyncio.current_task()
        if call is None:
            raise RuntimeError("grpc asked for an issuer handler outside a call's task")
        try:
            pod = self._pod_of(bearer(metadata))
        except TokenRejected as exc:
            return self._token_refused(self._rpc[handler_call_details.method], str(exc))
        if pod is None:
            if len(self._unverified) >= self._max_unverified:
                return self._unverified_busy
            self._unverified.add(call)
            handler = self._awaiting_request[handler_call_details.method]
        elif self._per_pod[pod] >= self._max_per_pod:
            return self._pod_busy
        else:
            self._per_pod[pod] += 1
        self._in_flight += 1
        call.add_done_callback(functools.partial(self._ended, pod))
        return handler

    def _ended(self, pod: str | None, call: asyncio.Task[Any]) -> None:
        self._in_flight -= 1
        if pod is None:
            self._unverified.discard(call)
        else:
            self._per_pod[pod] -= 1
            if not self._per_pod[pod]:
                del self._per_pod[pod]

    def _request_in(self) -> None:
        """The current call's request has been read: attestation decides from here."""
        call = asyncio.current_task()
        if call is not None:
            self._unverified.discard(call)

    def _leaving_unverified(self, handler: Handler) -> Handler:
        """`handler`, telling the bounds when its request is in: grpc decodes the request in the call's
        task before it calls the method (a plain function here costs less than a coroutine around it)."""
        decode: Any = handler.request_deserializer

        def request_in(data: bytes) -> Any:
            self._request_in()
            return decode(data)

        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                handler.unary_unary,
                request_deserializer=request_in,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                handler.unary_stream,
                request_deserializer=request_in,
                response_serializer=handler.response_serializer,
            )
        raise TypeError("the Issuer service has unary requests only")

    def _within_timeout(self, handler: Handler) -> Handler:
        """`handler` for a call whose token only I/O can verify: it reads the request itself, within
        `request_timeout`, then runs the method as grpc would have. grpc offers no deadline for a request
        to arrive, and a call whose task is cancelled keeps its HTTP/2 stream open."""
        method: Any
        if handler.unary_unary is not None:
            method = handler.unary_unary

            async def unary(requests: Any, context: Context) -> Any:
                return await method(await self._request_of(context), context)

            return grpc.stream_unary_rpc_method_handler(
                unary,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        method = handler.unary_stream

        async def stream(requests: Any, context: Context) -> AsyncIterator[Any]:
            async for response in method(await self._request_of(context), context):
                yield response

        return grpc.stream_stream_rpc_method_handler(
            stream,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    async def _request_of(self, context: Context) -> Any:
        try:
            request = await asyncio.wait_for(context.read(), self._request_timeout)
        except TimeoutError:
            await _refuse(context, "request_timeout", f"no request within {self._request_timeout:g} s")
        if request is grpc.aio.EOF:  # type: ignore[attr-defined]  # exported, not in the stubs
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the call ended without its request")
        return request

    def _token_refused(self, rpc: str, reason: str) -> Handler:
        """A call whose token is refused at its start: it ends as the method would end it."""

        async def _refuse_token(requests: Any, context: Context) -> Never:
            DECISIONS.labels(rpc, "token_rejected").inc()
            log.warning("rejected peer=%s reason=%r", context.peer(), reason)
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, f"token refused: {reason}")

        return grpc.stream_unary_rpc_method_handler(_refuse_token)

    async def _refuse_metadata(self, requests: Any, context: Context) -> Never:
        await _refuse(context, "metadata_size", f"call metadata is larger than {self._max_metadata} bytes")

    async def _refuse_busy(self, requests: Any, context: Context) -> Never:
        reason = f"{self._max_in_flight} calls in flight"
        await _refuse(context, "concurrent_rpcs", reason, "kubespiffed is busy; retry later")

    async def _refuse_pod_busy(self, requests: Any, context: Context) -> Never:
        reason = f"{self._max_per_pod} calls in flight for this pod"
        await _refuse(context, "calls_per_pod", reason)

    async def _refuse_unverified_busy(self, requests: Any, context: Context) -> Never:
        reason = f"{self._max_unverified} calls from unverified tokens waiting for their request"
        await _refuse(context, "unverified_calls", reason, "kubespiffed is busy; retry later")


async def _refuse(context: Context, limit: str, reason: str, details: str = "") -> Never:
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
