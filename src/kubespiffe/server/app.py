"""kubespiffed, wired: authority from its Secret, watch caches, token verification, issuer API, health."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import signal
from typing import Any

import grpc
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
from kubespiffe.server.trust import TrustStore
from kubespiffe.spiffe.bundle import Bundle

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
        log.info("creating a new self-signed CA and JWT signing key for %s", config.trust_domain)
        now = dt.datetime.now(dt.UTC)
        ca = create_self_signed_ca(config.trust_domain, config.ca_key_type, config.ca_ttl, now)
        return AuthorityState.new(ca, config.jwt_key_type, now)

    stored = await load_or_create(client, config.namespace, config.authority_secret, new_state)
    state = stored.state
    authority = state.active_x509()
    log.info(
        "authority loaded trust_domain=%s ca_expires=%s jwt_kid=%s secret=%s/%s",
        config.trust_domain,
        authority.certificate.not_valid_after_utc.isoformat(),
        state.active_jwt()[0],
        config.namespace,
        config.authority_secret,
    )
    trust = TrustStore(
        Bundle(config.trust_domain, tuple(state.trust_bundle()), state.jwt_authorities(), sequence=1)
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
        authority=state.active_x509,
        jwt_signer=state.active_jwt,
        trust=trust,
        x509_ttl=config.x509_svid_ttl,
        jwt_ttl=config.jwt_svid_ttl,
        jwt_issuer=config.jwt_issuer,
    )
    server = grpc.aio.server()
    issuer_pb2_grpc.add_IssuerServicer_to_server(service, server)
    server.add_secure_port(f"{config.listen_host}:{config.port}", identity.grpc_credentials())

    synced = asyncio.Event()
    health = await HealthServer(synced.is_set).start(config.listen_host, config.health_port, identity)
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
            config.trust_domain,
            config.listen_host,
            config.port,
            config.listen_host,
            config.health_port,
            issuer,
            config.audience,
        )
        await stop.wait()
        log.info("shutting down")
        await server.stop(grace=5)
        health.close()
        watches.cancel()
