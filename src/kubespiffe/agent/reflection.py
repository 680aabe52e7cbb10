"""gRPC server reflection on the agent's socket, loaded when its first call arrives.

Reflection is for people describing the socket with grpcurl, yet grpclib's servicers and their two copies
of reflection.proto (v1 and v1alpha) cost every agent about 2-3 ms of its start (docs/agent.md, "Cost per
pod"). This servicer knows the two methods' paths only, and moves each message as its encoded bytes
(`sdslazy.Raw`) until the first call imports grpclib's servicers; they then answer every call as they
would have from the start: the same services listed, the same descriptor pool.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from google.protobuf.descriptor_pool import DescriptorPool
from grpclib.const import Cardinality, Handler

from kubespiffe.agent.sdslazy import Raw, RawStream

PATHS = (
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
)


class LazyReflection:
    """Server reflection for `services` (the server's other servicers), described from `pool`."""

    def __init__(self, services: Sequence[Any], pool: DescriptorPool) -> None:
        self._services = list(services)
        self._pool = pool
        self._handlers: dict[str, Handler] | None = None

    def __mapping__(self) -> dict[str, Handler]:
        return {path: Handler(self._method(path), Cardinality.STREAM_STREAM, Raw, Raw) for path in PATHS}

    def _method(self, path: str) -> Callable[[RawStream], Awaitable[None]]:
        async def call(stream: RawStream) -> None:
            handler = self._loaded()[path]
            await handler.func(_Decoded(stream, handler.request_type))

        return call

    def _loaded(self) -> dict[str, Handler]:
        if self._handlers is None:
            # Here, not at the top: the point of this module.
            from grpclib.reflection.service import ServerReflection

            servicers = ServerReflection.extend(self._services, pool=self._pool)[len(self._services) :]
            self._handlers = {path: h for servicer in servicers for path, h in servicer.__mapping__().items()}
        return self._handlers


class _Decoded:
    """A call's stream as grpclib's reflection servicers use it: reflection messages in and out."""

    def __init__(self, stream: RawStream, request_type: Any) -> None:
        self._stream = stream
        self._request_type = request_type

    def __aiter__(self) -> _Decoded:
        return self

    async def __anext__(self) -> Any:
        raw = await self._stream.recv_message()
        if raw is None:
            raise StopAsyncIteration
        return self._request_type.FromString(raw.data)

    async def send_message(self, message: Any) -> None:
        await self._stream.send_message(Raw(message.SerializeToString()))
