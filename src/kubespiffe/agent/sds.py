"""Envoy's Secret Discovery Service (`envoy.service.secret.v3.SecretDiscoveryService`) on the agent's socket.

An adapter over the agent's state, as SPIRE's agent serves it: StreamSecrets (xDS state of the world,
pushed on every rotation and bundle change), FetchSecrets (one answer), DeltaSecrets Unimplemented.
Which names mean what is in `sdsresources`, the ACK/NACK bookkeeping in `sdsstream`; this module turns
them into Envoy's messages (the generated code of PyPI's `xds-protos`, imported here only, when the first
SDS call arrives: see `sdslazy`).

Status codes, as on the Workload API: PermissionDenied when the pod has lost its identity (streams end
with it), Unavailable for FetchSecrets before the first SVID or after they expired unrenewed (streams
wait instead), InvalidArgument for a resource the pod does not hold or a type other than Secret.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator
from typing import Any

import grpc
from cryptography.hazmat.primitives.serialization import Encoding
from envoy.config.core.v3 import base_pb2, extension_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2, tls_spiffe_validator_config_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2

from kubespiffe.agent.sdslazy import SERVICE_NAME
from kubespiffe.agent.sdsresources import (
    DISABLE_SPIFFE_VALIDATION,
    Resource,
    SdsRequestError,
    TlsCertificate,
    ValidationContext,
    select,
    spiffe_validation_disabled,
)
from kubespiffe.agent.sdsstream import Answer, StreamBook
from kubespiffe.agent.state import AgentState, Snapshot

log = logging.getLogger("kubespiffe.agent")

SECRET_TYPE_URL = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"  # noqa: S105
SPIFFE_VALIDATOR = "envoy.tls.cert_validator.spiffe"

Context = grpc.aio.ServicerContext[Any, Any]


def secret(resource: Resource) -> Any:
    """One resource as an Envoy `Secret` (PEM inline, as Envoy reads certificates and keys)."""
    if isinstance(resource, TlsCertificate):
        return secret_pb2.Secret(
            name=resource.name,
            tls_certificate=common_pb2.TlsCertificate(
                certificate_chain=base_pb2.DataSource(inline_bytes=resource.svid.chain_pem()),
                private_key=base_pb2.DataSource(inline_bytes=resource.svid.key_pem()),
            ),
        )
    return secret_pb2.Secret(name=resource.name, validation_context=_validation_context(resource))


def _pem(certificates: tuple[Any, ...]) -> bytes:
    return b"".join(c.public_bytes(Encoding.PEM) for c in certificates)


def _validation_context(resource: ValidationContext) -> Any:
    if not resource.spiffe_validator:
        ((_, certificates),) = resource.trust_domains
        return common_pb2.CertificateValidationContext(
            trusted_ca=base_pb2.DataSource(inline_bytes=_pem(certificates))
        )
    config = tls_spiffe_validator_config_pb2.SPIFFECertValidatorConfig(
        trust_domains=[
            tls_spiffe_validator_config_pb2.SPIFFECertValidatorConfig.TrustDomain(
                name=td.name, trust_bundle=base_pb2.DataSource(inline_bytes=_pem(certificates))
            )
            for td, certificates in resource.trust_domains
        ]
    )
    typed = any_pb2.Any()
    typed.Pack(config)
    return common_pb2.CertificateValidationContext(
        custom_validator_config=extension_pb2.TypedExtensionConfig(name=SPIFFE_VALIDATOR, typed_config=typed)
    )


def response(resources: tuple[Resource, ...], version: str, nonce: str) -> Any:
    packed = []
    for resource in resources:
        item = any_pb2.Any()
        item.Pack(secret(resource))
        packed.append(item)
    return discovery_pb2.DiscoveryResponse(
        version_info=version, resources=packed, type_url=SECRET_TYPE_URL, nonce=nonce
    )


def _spiffe_validator(request: Any, current: bool) -> bool:
    """From the node's metadata when the request carries a node (Envoy may send it on the first only)."""
    if not request.HasField("node"):
        return current
    metadata = dict(request.node.metadata.items())  # a Struct has no get()
    return not spiffe_validation_disabled(metadata.get(DISABLE_SPIFFE_VALIDATION))


async def _check_type(request: Any, context: Context) -> None:
    if request.type_url not in ("", SECRET_TYPE_URL):
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT, f"type_url {request.type_url!r} is not {SECRET_TYPE_URL}"
        )


async def _select(
    snapshot: Snapshot, names: tuple[str, ...], spiffe: bool, context: Context
) -> tuple[Resource, ...]:
    try:
        return select(snapshot, names, spiffe)
    except SdsRequestError as exc:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        raise


def _discard(task: asyncio.Future[Any]) -> None:
    """Cancel a pending read; a finished one's outcome (the client went away) is collected, not raised."""
    if task.done():
        if not task.cancelled():
            task.exception()
    else:
        task.cancel()


class SecretDiscovery:
    def __init__(self, state: AgentState) -> None:
        self._state = state

    async def FetchSecrets(self, request: Any, context: Context) -> Any:
        await _check_type(request, context)
        snapshot = self._state.current
        if snapshot is not None and snapshot.denied:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, snapshot.denied)
        if snapshot is None or not snapshot.svids:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the agent holds no X.509-SVID yet; retry")
        assert snapshot is not None
        names = tuple(request.resource_names)
        resources = await _select(snapshot, names, _spiffe_validator(request, True), context)
        return response(resources, str(self._state.version), "")

    async def StreamSecrets(
        self, request_iterator: AsyncIterator[Any], context: Context
    ) -> AsyncIterator[Any]:
        """Answer requests and push changes; a request and a new snapshot are awaited side by side."""
        book = StreamBook()
        spiffe = True
        seen, snapshot = 0, None
        requests = aiter(request_iterator)
        next_request = asyncio.ensure_future(anext(requests))
        next_snapshot = asyncio.ensure_future(self._state.wait_newer(seen))
        try:
            while True:
                done, _ = await asyncio.wait(
                    {next_request, next_snapshot}, return_when=asyncio.FIRST_COMPLETED
                )
                if next_request in done:
                    try:
                        request = next_request.result()
                    except StopAsyncIteration:
                        return
                    next_request = asyncio.ensure_future(anext(requests))
                    await _check_type(request, context)
                    spiffe = _spiffe_validator(request, spiffe)
                    if not self._received(book, request):
                        continue
                if next_snapshot in done:
                    seen, snapshot = next_snapshot.result()
                    next_snapshot = asyncio.ensure_future(self._state.wait_newer(seen))
                if snapshot is not None and snapshot.denied:
                    await context.abort(grpc.StatusCode.PERMISSION_DENIED, snapshot.denied)
                if snapshot is None or not snapshot.svids or book.names is None:
                    continue  # nothing to answer with yet, or nothing asked yet
                resources = await _select(snapshot, book.names, spiffe, context)
                if book.due(resources):
                    sent = book.sent(resources, secrets.token_hex(8))
                    log.debug(
                        "SDS: sending version %s (%s)", sent.version, ", ".join(r.name for r in resources)
                    )
                    yield response(resources, sent.version, sent.nonce)
        finally:
            for task in (next_request, next_snapshot):
                _discard(task)

    @staticmethod
    def _received(book: StreamBook, request: Any) -> bool:
        """Record a request; False when it is stale (ignored). A NACK's error_detail is logged."""
        names = tuple(request.resource_names)
        error = request.HasField("error_detail")
        answer = book.receive(request.version_info, request.response_nonce, names, error)
        if answer is Answer.STALE:
            log.debug("SDS: ignoring a request with stale nonce %r", request.response_nonce)
            return False
        if answer is Answer.NACK:
            log.warning(
                "SDS: Envoy rejected version %s of %s: %s; it keeps version %r",
                book.version,
                ", ".join(names) or "all resources",
                request.error_detail.message or "(no error_detail)",
                book.acked,
            )
        return True

    async def DeltaSecrets(self, request_iterator: AsyncIterator[Any], context: Context) -> Any:
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED, "DeltaSecrets is not implemented; use StreamSecrets"
        )


def generic_handler(state: AgentState) -> grpc.GenericRpcHandler:  # type: ignore[type-arg]
    """The service's three methods over `state`, with Envoy's (de)serializers."""
    servicer = SecretDiscovery(state)
    request, reply = discovery_pb2.DiscoveryRequest, discovery_pb2.DiscoveryResponse
    delta_request, delta_reply = discovery_pb2.DeltaDiscoveryRequest, discovery_pb2.DeltaDiscoveryResponse
    return grpc.method_handlers_generic_handler(
        SERVICE_NAME,
        {
            "StreamSecrets": grpc.stream_stream_rpc_method_handler(
                servicer.StreamSecrets, request.FromString, reply.SerializeToString
            ),
            "FetchSecrets": grpc.unary_unary_rpc_method_handler(
                servicer.FetchSecrets, request.FromString, reply.SerializeToString
            ),
            "DeltaSecrets": grpc.stream_stream_rpc_method_handler(
                servicer.DeltaSecrets, delta_request.FromString, delta_reply.SerializeToString
            ),
        },
    )
