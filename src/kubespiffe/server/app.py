"""kubespiffed, wired: authority from its Secret, watch caches, token verification, issuer API, health."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import signal
from typing import Any

import grpc
from cryptography.hazmat.primitives.serialization import Encoding
from lightkube import AsyncClient
from lightkube.models.authentication_v1 import TokenReviewSpec
from lightkube.resources.authentication_v1 import TokenReview

from kubespiffe.attestation.pod import PodBinding
from kubespiffe.attestation.token import JwksCache, TokenVerifier
from kubespiffe.authority.state import AuthorityState
from kubespiffe.authority.store import load_or_create
from kubespiffe.authority.x509ca import create_self_signed_ca
from kubespiffe.kube.client import get_raw_json, load_config, make_client
from kubespiffe.proto import issuer_pb2_grpc
from kubespiffe.server.config import ServerConfig
from kubespiffe.server.health import HealthServer
from kubespiffe.server.issuer import IssuerService
from kubespiffe.server.registrations import Registry
from kubespiffe.server.tls import ServingIdentity

log = logging.getLogger("kubespiffed")


async def _token_review(client: AsyncClient, token: str, audience: str) -> dict[str, Any]:
    review = await client.create(TokenReview(spec=TokenReviewSpec(token=token, audiences=[audience])))
    status: dict[str, Any] = review.status.to_dict() if review.status else {}
    return status


async def _discover_issuer(client: AsyncClient) -> str:
    document = await get_raw_json(client, "/.well-known/openid-configuration")
    issuer: str = document["issuer"]
    return issuer


async def run(config: ServerConfig) -> None:
    client = make_client(load_config(config.kubeconfig))
    try:
        await _serve(config, client)
    finally:
        await client.close()


async def _serve(config: ServerConfig, client: AsyncClient) -> None:
    def new_state() -> AuthorityState:
        log.info("creating a new self-signed CA for %s", config.trust_domain)
        now = dt.datetime.now(dt.UTC)
        return AuthorityState.new(create_self_signed_ca(config.trust_domain, config.ca_key_type, config.ca_ttl, now))

    state = await load_or_create(client, config.namespace, config.authority_secret, new_state)
    authority = state.active_x509()
    log.info(
        "authority loaded trust_domain=%s ca_expires=%s secret=%s/%s",
        config.trust_domain, authority.certificate.not_valid_after_utc.isoformat(),
        config.namespace, config.authority_secret,
    )
    issuer = config.token_issuer or await _discover_issuer(client)
    verifier = TokenVerifier(
        issuer=issuer,
        audience=config.audience,
        jwks=JwksCache(lambda: get_raw_json(client, "/openid/v1/jwks")),
        review=lambda token, audience: _token_review(client, token, audience),
    )
    registry = Registry(client, config.trust_domain, frozenset(config.server_dns_names))
    identity = ServingIdentity(authority, config.server_id, config.server_dns_names)
    service = IssuerService(
        verifier=verifier,
        binding=PodBinding(client, registry.pods),
        registry=registry,
        authority=authority,
        bundle_der=[c.public_bytes(Encoding.DER) for c in state.trust_bundle()],
        default_ttl=config.x509_svid_ttl,
    )
    server = grpc.aio.server()
    issuer_pb2_grpc.add_IssuerServicer_to_server(service, server)
    server.add_secure_port(f"{config.listen_host}:{config.port}", identity.grpc_credentials())

    synced = asyncio.Event()
    health = await HealthServer(synced.is_set).start(
        config.listen_host, config.health_port, identity.ssl_context()
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    async with asyncio.TaskGroup() as group:
        watches = group.create_task(registry.run())
        await registry.wait_synced()
        await server.start()
        synced.set()
        log.info(
            "kubespiffed ready trust_domain=%s issuer_api=%s:%d health=%s:%d token_issuer=%s audience=%s",
            config.trust_domain, config.listen_host, config.port,
            config.listen_host, config.health_port, issuer, config.audience,
        )
        await stop.wait()
        log.info("shutting down")
        await server.stop(grace=5)
        health.close()
        watches.cancel()
