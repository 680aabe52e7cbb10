"""kubespiffed, wired: authority from its Secret, watch caches, token verification, issuer API, health."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import logging
import os
import signal
import socket
from typing import Any

import grpc
from lightkube import AsyncClient
from lightkube.models.authentication_v1 import TokenReviewSpec
from lightkube.resources.authentication_v1 import TokenReview
from lightkube.resources.core_v1 import Secret
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from kubespiffe.attestation.pod import PodBinding
from kubespiffe.attestation.token import JwksCache, TokenVerifier
from kubespiffe.authority.rotation import RotationPolicy
from kubespiffe.authority.state import AuthorityState
from kubespiffe.authority.store import load_or_create
from kubespiffe.authority.x509ca import create_self_signed_ca
from kubespiffe.kube.client import get_raw_json, load_config, make_client
from kubespiffe.kube.leader import LeaderElector
from kubespiffe.proto import issuer_pb2_grpc
from kubespiffe.registry.models import JWT_TTL_MAX, X509_TTL_MAX
from kubespiffe.server import https
from kubespiffe.server.authority import LiveAuthority
from kubespiffe.server.bundle_configmaps import BundleConfigMaps
from kubespiffe.server.config import ServerConfig
from kubespiffe.server.federation import Federation
from kubespiffe.server.https import StaticTls, TlsSource
from kubespiffe.server.issuer import IssuerService
from kubespiffe.server.registrations import Registry
from kubespiffe.server.tls import ServingIdentity
from kubespiffe.spiffe.bundle import bundle_to_json

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


async def _bundle_endpoint_tls(
    client: AsyncClient, config: ServerConfig, identity: ServingIdentity
) -> TlsSource:
    """https_spiffe (kubespiffed's own SVID) unless an operator names a TLS Secret for https_web."""
    if not config.bundle_endpoint_web_secret:
        return identity
    secret = await client.get(Secret, config.bundle_endpoint_web_secret, namespace=config.namespace)
    data = secret.data or {}
    if "tls.crt" not in data or "tls.key" not in data:
        raise SystemExit(f"Secret {config.bundle_endpoint_web_secret} has no tls.crt/tls.key")
    return StaticTls(base64.b64decode(data["tls.crt"]), base64.b64decode(data["tls.key"]))


async def _serve(config: ServerConfig, client: AsyncClient) -> None:
    def new_state() -> AuthorityState:
        log.info("creating a new self-signed CA and JWT signing key for %s", config.trust_domain)
        now = dt.datetime.now(dt.UTC)
        ca = create_self_signed_ca(config.trust_domain, config.ca_key_type, config.ca_ttl, now)
        return AuthorityState.new(ca, config.jwt_key_type, now)

    stored = await load_or_create(client, config.namespace, config.authority_secret, new_state)
    # One leader per authority: the Lease is named after the authority Secret.
    lease = f"{config.authority_secret}-leader"
    leader = LeaderElector(client, config.namespace, lease, f"{socket.gethostname()}-{os.getpid()}")
    authority = LiveAuthority(
        client,
        namespace=config.namespace,
        secret=config.authority_secret,
        stored=stored,
        trust_domain=config.trust_domain,
        ca_key_type=config.ca_key_type,
        ca_ttl=config.ca_ttl,
        jwt_key_type=config.jwt_key_type,
        policy=RotationPolicy(config.bundle_refresh_hint, X509_TTL_MAX, JWT_TTL_MAX),
        leader=leader,
    )
    active = authority.active_x509()
    log.info(
        "authority loaded trust_domain=%s ca_expires=%s jwt_kid=%s sequence=%d secret=%s/%s",
        config.trust_domain,
        active.certificate.not_valid_after_utc.isoformat(),
        authority.active_jwt()[0],
        authority.state.sequence,
        config.namespace,
        config.authority_secret,
    )
    issuer = config.token_issuer or await _discover_issuer(client)
    verifier = TokenVerifier(
        issuer=issuer,
        audience=config.audience,
        jwks=JwksCache(lambda: get_raw_json(client, "/openid/v1/jwks")),
        review=lambda token, audience: _token_review(client, token, audience),
    )
    registry = Registry(client, config.trust_domain, frozenset(config.server_dns_names))
    identity = ServingIdentity(active, config.server_id, config.server_dns_names)
    authority.follow(identity)
    service = IssuerService(
        verifier=verifier,
        binding=PodBinding(client, registry.pods),
        registry=registry,
        authority=authority.active_x509,
        jwt_signer=authority.active_jwt,
        trust=authority.trust,
        x509_ttl=config.x509_svid_ttl,
        jwt_ttl=config.jwt_svid_ttl,
        jwt_issuer=config.jwt_issuer,
    )
    server = grpc.aio.server()
    issuer_pb2_grpc.add_IssuerServicer_to_server(service, server)
    server.add_secure_port(f"{config.listen_host}:{config.port}", identity.grpc_credentials())

    synced = asyncio.Event()
    health = await https.serve(
        config.listen_host,
        config.health_port,
        identity,
        {
            "/healthz": lambda: (200, b"ok\n", "text/plain"),
            "/readyz": lambda: (
                (200, b"ok\n", "text/plain") if synced.is_set() else (503, b"not ready\n", "text/plain")
            ),
            "/metrics": lambda: (200, generate_latest(), CONTENT_TYPE_LATEST),
        },
    )
    endpoints = [health]
    if config.bundle_endpoint_port:
        bundle_tls = await _bundle_endpoint_tls(client, config, identity)
        endpoints.append(
            await https.serve(
                config.listen_host,
                config.bundle_endpoint_port,
                bundle_tls,
                {"/": lambda: (200, bundle_to_json(authority.trust.own), "application/json")},
            )
        )
    federation = Federation(
        client,
        config.trust_domain,
        authority.trust,
        leader,
        config.federation_min_refresh.total_seconds(),
        config.federation_max_refresh.total_seconds(),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    async with asyncio.TaskGroup() as group:
        background = [
            group.create_task(registry.run()),
            group.create_task(leader.run()),
            group.create_task(authority.run()),
            group.create_task(federation.run()),
        ]
        if config.bundle_configmap:
            configmaps = BundleConfigMaps(
                client, authority.trust, registry.namespaces, leader, config.bundle_configmap
            )
            background.append(group.create_task(configmaps.run()))
        await registry.wait_synced()
        await federation.cache.synced.wait()
        await server.start()
        synced.set()
        log.info(
            "kubespiffed ready trust_domain=%s issuer_api=%s:%d health=%s:%d bundle_endpoint=%s "
            "token_issuer=%s audience=%s",
            config.trust_domain,
            config.listen_host,
            config.port,
            config.listen_host,
            config.health_port,
            f"{config.listen_host}:{config.bundle_endpoint_port}" if config.bundle_endpoint_port else "off",
            issuer,
            config.audience,
        )
        await stop.wait()
        log.info("shutting down")
        await server.stop(grace=5)
        for endpoint in endpoints:
            endpoint.close()
        for task in background:
            task.cancel()
