"""kubespiffed, wired: each startup step is one function below, run in order by `serve`.

1. `load_authority`: the CA and JWT keys from their Secret (created once, by whichever replica wins).
2. `attestor`: token verification against the cluster's OIDC keys, TokenReview as the fallback.
3. `issuer_server`: the issuer API (gRPC over TLS with kubespiffed's own SVID).
4. `http_endpoints`: health, readiness and metrics; the SPIFFE bundle endpoint; the injection webhook;
   `oidc_endpoint` (server/oidc.py): OIDC discovery for clouds.
5. `run_until_stopped`: the background loops (registry, leader election, authority, federation, bundle
   ConfigMaps), readiness once the caches are synced, and a clean stop on SIGTERM/SIGINT.

With `--workers N` the process above is the primary and starts N-1 workers (server/workers.py); each runs
`serve_worker`: steps 2 and 3 only, following the authority Secret the primary writes.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import gc
import logging
import os
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from lightkube import AsyncClient
from lightkube.models.authentication_v1 import TokenReviewSpec
from lightkube.resources.authentication_v1 import TokenReview
from lightkube.resources.core_v1 import Secret
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from kubespiffe import tasks
from kubespiffe.attestation.pod import PodAttestor
from kubespiffe.attestation.token import JwksCache, TokenVerifier
from kubespiffe.authority import store
from kubespiffe.authority.certmanager import CertManagerUpstream
from kubespiffe.authority.live import LiveAuthority
from kubespiffe.authority.rotation import RotationPolicy
from kubespiffe.authority.state import AuthorityState
from kubespiffe.authority.upstream import SecretUpstream, Upstream, UpstreamError, new_intermediate
from kubespiffe.authority.x509ca import X509Authority, create_self_signed_ca
from kubespiffe.constants import JWT_TTL_MAX, X509_TTL_MAX
from kubespiffe.federation.fetch import parse_networks
from kubespiffe.federation.handler import bundle_endpoint
from kubespiffe.federation.watch import Federation
from kubespiffe.kube.client import get_raw_json, load_config, make_client
from kubespiffe.kube.leader import LeaderElector
from kubespiffe.registry.live import Registry
from kubespiffe.server import https
from kubespiffe.server.bundle_configmaps import BundleConfigMaps
from kubespiffe.server.callbounds import MAX_REQUEST_BYTES, CallBounds
from kubespiffe.server.config import ServerConfig
from kubespiffe.server.https import StaticTls, TlsSource
from kubespiffe.server.issuer import IssuerService
from kubespiffe.server.oidc import oidc_endpoint
from kubespiffe.server.podcert import pod_certificates
from kubespiffe.server.tls import ServingIdentity
from kubespiffe.server.webhook import CaBundleSync, inject_route
from kubespiffe.server.workers import WorkerPool, announce_ready, primary_gone, publish_metrics

log = logging.getLogger("kubespiffed")


async def run(config: ServerConfig) -> None:
    client = make_client(load_config(config.kubeconfig))
    try:
        await serve(config, client)
    finally:
        await client.close()


def lease(config: ServerConfig, client: AsyncClient) -> LeaderElector:
    """One leader per authority: the Lease is named after the authority Secret."""
    return LeaderElector(
        client,
        config.namespace,
        f"{config.authority_secret}-leader",
        f"{socket.gethostname()}-{os.getpid()}",
    )


def issuer_service(
    config: ServerConfig, attestor: PodAttestor, registry: Registry, authority: LiveAuthority
) -> IssuerService:
    return IssuerService(
        attestor=attestor,
        registry=registry,
        signer=authority,
        trust=authority.trust,
        x509_ttl=config.x509_svid_ttl,
        jwt_ttl=config.jwt_svid_ttl,
        jwt_issuer=config.jwt_svid_issuer,
        max_streams_per_pod=config.max_streams_per_pod,
    )


async def serve(config: ServerConfig, client: AsyncClient) -> None:
    leader = lease(config, client)
    authority = await load_authority(config, client, leader)
    identity = ServingIdentity(authority.active_x509(), config.server_id, config.server_dns_names)
    authority.on_activate(identity.set_authority)
    registry = Registry(
        client, config.trust_domain, frozenset(config.server_dns_names), config.cluster_domain
    )
    attestor, token_issuer = await pod_attestor(config, client, registry)
    server = issuer_server(
        config, identity, issuer_service(config, attestor, registry, authority), attestor.pod_now
    )
    ready = asyncio.Event()
    podcert_loops, podcert_readyz = await pod_certificates(config, client, registry, authority, leader)
    workers = WorkerPool(config, config.workers - 1) if config.workers > 1 else None
    endpoints = await http_endpoints(
        config, client, identity, authority, registry, ready, podcert_readyz, workers
    )
    federation = Federation(
        client,
        config.trust_domain,
        authority.trust,
        leader,
        config.federation_min_refresh.total_seconds(),
        config.federation_max_refresh.total_seconds(),
        parse_networks(config.federation_allowed_networks),
    )
    loops: list[Callable[[], Any]] = [registry.run, attestor.run, leader.run, authority.run, federation.run]
    if config.bundle_configmap:
        configmaps = BundleConfigMaps(
            client,
            authority.trust,
            registry.namespaces,
            leader,
            config.bundle_configmap,
            config.bundle_configmap_key,
        )
        loops.append(configmaps.run)
    loops += podcert_loops
    if config.webhook_port and config.webhook_configuration:
        loops.append(CaBundleSync(client, config.webhook_configuration, authority.trust, leader).run)
    served = await oidc_endpoint(config, client, authority.trust)
    if served:
        endpoints.append(served[0])
        loops.append(served[1].run)
    if workers is not None:
        loops.append(workers.run)

    async def until_ready() -> None:
        await registry.wait_synced()
        await attestor.wait_synced()
        await federation.cache.synced.wait()
        freeze_heap()
        await server.start()
        ready.set()
        log.info(
            "kubespiffed ready trust_domain=%s issuer_api=%s:%d health=%s:%d bundle_endpoint=%s webhook=%s "
            "token_issuer=%s audience=%s",
            config.trust_domain,
            config.listen_host,
            config.port,
            config.listen_host,
            config.health_port,
            f"{config.listen_host}:{config.bundle_endpoint_port}" if config.bundle_endpoint_port else "off",
            f"{config.listen_host}:{config.webhook_port}" if config.webhook_port else "off",
            token_issuer,
            config.audience,
        )

    await run_until_stopped(loops, until_ready, Shutdown(server, endpoints, workers))


def freeze_heap() -> None:
    """Once the caches are synced, move what startup made (modules, the first lists) out of the cycle
    collector's reach: a full collection then walks what changed since, not every object (about 64,000
    with 10,000 pods cached: 30 ms on the event loop). Collected first, so startup's garbage is not kept."""
    gc.collect()
    gc.freeze()


async def run_worker(config: ServerConfig, index: int) -> None:
    """Worker `index` of --workers (server/workers.py starts it)."""
    client = make_client(load_config(config.kubeconfig))
    try:
        await serve_worker(config, client, index)
    finally:
        await client.close()


async def serve_worker(config: ServerConfig, client: AsyncClient, index: int) -> None:
    """The issuer API only, from what the primary keeps: the authority Secret (the primary created it
    before starting any worker), the registry and FederatedTrustDomain status. The Lease elector is never
    run, so this process never leads: the authority and federation only follow, the registry writes no
    status, and nothing else the Lease holder does is started here."""
    follower = lease(config, client)
    stored = await store.load(client, config.namespace, config.authority_secret)
    if stored is None:
        raise SystemExit(f"kubespiffed worker {index}: no authority Secret {config.authority_secret}")
    authority = live_authority(config, client, stored, follower, upstream=None)  # only the leader asks it
    identity = ServingIdentity(authority.active_x509(), config.server_id, config.server_dns_names)
    authority.on_activate(identity.set_authority)
    registry = Registry(
        client,
        config.trust_domain,
        frozenset(config.server_dns_names),
        config.cluster_domain,
        write_status=False,
    )
    attestor, _ = await pod_attestor(config, client, registry)
    server = issuer_server(
        config, identity, issuer_service(config, attestor, registry, authority), attestor.pod_now
    )
    federation = Federation(
        client,
        config.trust_domain,
        authority.trust,
        follower,
        config.federation_min_refresh.total_seconds(),
        config.federation_max_refresh.total_seconds(),
        parse_networks(config.federation_allowed_networks),
    )

    async def stop_with_primary() -> None:
        await primary_gone()
        log.warning("the primary kubespiffed process is gone; stopping")
        os.kill(os.getpid(), signal.SIGTERM)

    async def until_ready() -> None:
        await registry.wait_synced()
        await attestor.wait_synced()
        await federation.cache.synced.wait()
        freeze_heap()
        await server.start()  # binds the port: no connection reaches a worker before this
        announce_ready()
        published.set()

    async def metrics() -> None:
        await published.wait()
        await publish_metrics()

    published = asyncio.Event()
    loops = [registry.run, attestor.run, authority.run, federation.run, stop_with_primary, metrics]
    await run_until_stopped(loops, until_ready, Shutdown(server, []))


async def load_authority(config: ServerConfig, client: AsyncClient, leader: LeaderElector) -> LiveAuthority:
    """The authority Secret's keys; the first replica to start creates them (optimistic concurrency).

    With an upstream CA (docs/upstream-authority.md) the upstream must sign a usable intermediate now, the
    one a new state starts with: if it cannot, kubespiffed logs why and exits non-zero, so it is never
    ready and never signs with a CA the operator did not intend.
    """
    upstream: Upstream | None = None
    if config.upstream_ca_secret:
        upstream = SecretUpstream(client, config.namespace, config.upstream_ca_secret)
    elif issuer := config.upstream_issuer():
        upstream = CertManagerUpstream(client, config.namespace, issuer)
    first: X509Authority | None = None
    if upstream is not None:
        try:
            first = await new_intermediate(
                upstream,
                config.trust_domain,
                config.ca_key_type,
                config.ca_ttl,
                dt.datetime.now(dt.UTC),
                config.server_id,
                config.server_dns_names,
            )
        except UpstreamError as exc:
            log.error("refusing to start: %s", exc)
            raise SystemExit(f"kubespiffed: {exc}") from None
        log.info(
            "%s signs kubespiffed's CAs; trust anchor %s",
            upstream,
            first.trust_anchor.subject.rfc4514_string(),
        )

    def new_state() -> AuthorityState:
        now = dt.datetime.now(dt.UTC)
        ca = first or create_self_signed_ca(config.trust_domain, config.ca_key_type, config.ca_ttl, now)
        kind = "intermediate" if first else "self-signed"
        log.info("creating a new %s CA and JWT signing key for %s", kind, config.trust_domain)
        return AuthorityState.new(ca, config.jwt_key_type, now)

    stored = await store.load_or_create(client, config.namespace, config.authority_secret, new_state)
    authority = live_authority(config, client, stored, leader, upstream)
    log.info(
        "authority loaded trust_domain=%s ca_expires=%s jwt_kid=%s sequence=%d secret=%s/%s",
        config.trust_domain,
        authority.active_x509().certificate.not_valid_after_utc.isoformat(),
        authority.active_jwt().kid,
        authority.state.sequence,
        config.namespace,
        config.authority_secret,
    )
    return authority


def live_authority(
    config: ServerConfig,
    client: AsyncClient,
    stored: store.Stored,
    leader: LeaderElector,
    upstream: Upstream | None,
) -> LiveAuthority:
    return LiveAuthority(
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
        upstream=upstream,
        probe=(config.server_id, config.server_dns_names),
    )


async def pod_attestor(
    config: ServerConfig, client: AsyncClient, registry: Registry
) -> tuple[PodAttestor, str]:
    """Token verification for the cluster's issuer (from the API server's discovery unless configured)."""

    async def review(token: str, audience: str) -> dict[str, Any]:
        result = await client.create(TokenReview(spec=TokenReviewSpec(token=token, audiences=[audience])))
        status: dict[str, Any] = result.status.to_dict() if result.status else {}
        return status

    issuer = config.token_issuer
    if not issuer:
        discovery = await get_raw_json(client, "/.well-known/openid-configuration")
        issuer = str(discovery["issuer"])
    verifier = TokenVerifier(
        issuer=issuer,
        audience=config.audience,
        jwks=JwksCache(lambda: get_raw_json(client, "/openid/v1/jwks")),
        review=review,
        review_rate=config.token_review_rate,
    )
    return PodAttestor(verifier, client, registry.pods), issuer


def issuer_server(
    config: ServerConfig,
    identity: ServingIdentity,
    service: IssuerService,
    pod_of: Callable[[str], str | None],
) -> grpc.aio.Server:
    """The issuer API's server; `pod_of` tells at a call's start whose pod its token is (CallBounds)."""
    handshake_ms = int(config.grpc_handshake_timeout.total_seconds() * 1000)
    server = grpc.aio.server(
        options=[
            # Connections with no call in flight are closed (GOAWAY); so are connections that have not
            # finished TLS and HTTP/2 setup in time, the client's acknowledgement of the server's SETTINGS
            # included (until then grpc bounds a call's metadata at 16 MiB, not 16 KiB: CallBounds).
            # Keepalive pings find peers that vanished mid-stream.
            ("grpc.max_connection_idle_ms", int(config.grpc_max_connection_idle.total_seconds() * 1000)),
            ("grpc.server_handshake_timeout_ms", handshake_ms),
            ("grpc.http2.settings_timeout", handshake_ms),
            ("grpc.keepalive_time_ms", 120_000),
            ("grpc.keepalive_timeout_ms", 20_000),
            ("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
        ],
    )
    bounds = CallBounds(
        service,
        max_in_flight=config.max_concurrent_rpcs,
        pod_of=pod_of,
        request_timeout=config.grpc_handshake_timeout.total_seconds(),
    )
    bounds.publish()
    server.add_generic_rpc_handlers((bounds,))
    server.add_secure_port(f"{config.listen_host}:{config.port}", identity.grpc_credentials())
    return server


async def http_endpoints(
    config: ServerConfig,
    client: AsyncClient,
    identity: ServingIdentity,
    authority: LiveAuthority,
    registry: Registry,
    ready: asyncio.Event,
    readyz_detail: str = "",
    workers: WorkerPool | None = None,
) -> list[https.HttpsServer]:
    """Health/readiness/metrics on the health port; the bundle endpoint and the injection webhook on
    their own ports unless off. `readyz_detail` follows "ok": what optional parts do (pod certificates).
    With workers, /metrics carries theirs too."""

    def readyz() -> https.Response:
        if not ready.is_set():
            return (503, b"not ready\n", "text/plain")
        return (200, b"ok\n" + readyz_detail.encode(), "text/plain")

    health = await https.serve(
        config.listen_host,
        config.health_port,
        identity,
        {
            "/healthz": lambda: (200, b"ok\n", "text/plain"),
            "/readyz": readyz,
            "/metrics": lambda: (
                200,
                workers.exposition() if workers else generate_latest(),
                CONTENT_TYPE_LATEST,
            ),
        },
    )
    endpoints = [health]
    if config.bundle_endpoint_port:
        tls = await bundle_endpoint_tls(client, config, identity)
        route = bundle_endpoint(authority.trust)
        endpoints.append(
            await https.serve(config.listen_host, config.bundle_endpoint_port, tls, {"/": route})
        )
    if config.webhook_port:
        inject = inject_route(config.injection(), registry.namespaces, client)
        endpoints.append(
            await https.serve(config.listen_host, config.webhook_port, identity, {"/inject": inject})
        )
    return endpoints


async def bundle_endpoint_tls(
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


@dataclass(frozen=True)
class Shutdown:
    """What to stop, in order, once a signal arrives: the issuer API (in-flight calls get 5 s; the
    workers' too, at the same time), then HTTP."""

    server: grpc.aio.Server
    endpoints: list[https.HttpsServer]
    workers: WorkerPool | None = None

    async def __call__(self) -> None:
        log.info("shutting down")
        await asyncio.gather(self.server.stop(grace=5), *([self.workers.stop()] if self.workers else []))
        for endpoint in self.endpoints:
            await endpoint.wait_closed()


async def run_until_stopped(
    loops: list[Callable[[], Any]], until_ready: Callable[[], Any], shutdown: Shutdown
) -> None:
    """Run the background loops, become ready, then wait for SIGTERM/SIGINT and stop cleanly."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tasks.install_dump(loop)
    this = asyncio.current_task()
    assert this is not None

    def stopping() -> bool:
        # Stopped by a signal, or the group is cancelling every loop because one failed (it cancels this
        # task too): only a loop cancelled otherwise is LoopEnded, so a failure is not buried under them.
        return stop.is_set() or this.cancelling() > 0

    async with asyncio.TaskGroup() as group:
        background = [
            group.create_task(tasks.for_life(getattr(run, "__qualname__", repr(run)), run, stopping))
            for run in loops
        ]
        await until_ready()
        await stop.wait()
        await shutdown()
        for task in background:
            task.cancel()
