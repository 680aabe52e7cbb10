"""Envoy's Secret Discovery Service (`envoy.service.secret.v3.SecretDiscoveryService`) on the agent's socket.

An adapter over the agent's state, as SPIRE's agent serves it: StreamSecrets (xDS state of the world,
pushed on every rotation and bundle change), FetchSecrets (one answer), DeltaSecrets Unimplemented.
Which names mean what is in `sdsresources`, the ACK/NACK bookkeeping in `sdsstream`; this module turns
them into Envoy's messages (the generated code of PyPI's `xds-protos`, imported here only, when the first
SDS call arrives: see `sdslazy`, which hands over each message encoded).

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

from cryptography.hazmat.primitives.serialization import Encoding
from envoy.config.core.v3 import base_pb2, extension_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2, tls_spiffe_validator_config_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from kubespiffe.agent.sdslazy import Raw, RawStream
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
    # Only the one field: a Value without a kind (a client may send one) makes Struct.items() raise.
    fields = request.node.metadata.fields
    value = fields.get(DISABLE_SPIFFE_VALIDATION)
    kind = value.WhichOneof("kind") if value is not None else None
    setting = getattr(value, kind) if kind in ("bool_value", "string_value") else None
    return not spiffe_validation_disabled(setting)


def _check_type(request: Any) -> None:
    if request.type_url not in ("", SECRET_TYPE_URL):
        raise GRPCError(Status.INVALID_ARGUMENT, f"type_url {request.type_url!r} is not {SECRET_TYPE_URL}")


def _select(snapshot: Snapshot, names: tuple[str, ...], spiffe: bool) -> tuple[Resource, ...]:
    try:
        return select(snapshot, names, spiffe)
    except SdsRequestError as exc:
        raise GRPCError(Status.INVALID_ARGUMENT, str(exc)) from None


async def _requests(stream: RawStream) -> AsyncIterator[Any]:
    async for raw in stream:
        yield discovery_pb2.DiscoveryRequest.FromString(raw.data)


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

    async def FetchSecrets(self, stream: RawStream) -> None:
        raw = await stream.recv_message()
        assert raw is not None  # grpclib ends a unary call without its request itself
        request = discovery_pb2.DiscoveryRequest.FromString(raw.data)
        _check_type(request)
        snapshot = self._state.current
        if snapshot is not None and snapshot.denied:
            raise GRPCError(Status.PERMISSION_DENIED, snapshot.denied)
        if snapshot is None or not snapshot.svids:
            raise GRPCError(Status.UNAVAILABLE, "the agent holds no X.509-SVID yet; retry")
        names = tuple(request.resource_names)
        resources = _select(snapshot, names, _spiffe_validator(request, True))
        await stream.send_message(Raw(response(resources, str(self._state.version), "").SerializeToString()))

    async def StreamSecrets(self, stream: RawStream) -> None:
        """Answer requests and push changes; a request and a new snapshot are awaited side by side."""
        book = StreamBook()
        spiffe = True
        seen, snapshot = 0, None
        requests = _requests(stream)
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
                    _check_type(request)
                    spiffe = _spiffe_validator(request, spiffe)
                    if not self._received(book, request):
                        continue
                if next_snapshot in done:
                    seen, snapshot = next_snapshot.result()
                    next_snapshot = asyncio.ensure_future(self._state.wait_newer(seen))
                if snapshot is not None and snapshot.denied:
                    raise GRPCError(Status.PERMISSION_DENIED, snapshot.denied)
                if snapshot is None or not snapshot.svids or book.names is None:
                    continue  # nothing to answer with yet, or nothing asked yet
                resources = _select(snapshot, book.names, spiffe)
                if book.due(resources):
                    sent = book.sent(resources, secrets.token_hex(8))
                    log.debug(
                        "SDS: sending version %s (%s)", sent.version, ", ".join(r.name for r in resources)
                    )
                    await stream.send_message(
                        Raw(response(resources, sent.version, sent.nonce).SerializeToString())
                    )
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

    async def DeltaSecrets(self, stream: RawStream) -> None:
        await stream.recv_message()  # refused once the client has spoken, as a grpcio server would
        raise GRPCError(Status.UNIMPLEMENTED, "DeltaSecrets is not implemented; use StreamSecrets")
