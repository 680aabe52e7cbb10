"""`kubespiffe agent`: keep the pod's SVIDs fresh and serve them on the Workload API socket.

- X.509-SVIDs: a new key and CSR per renewal, renewed at half-life; the token file is re-read for every
  call to kubespiffed because the kubelet rotates it.
- Bundles: one WatchBundles stream from kubespiffed; every change is pushed to open Workload API streams.
- JWT-SVIDs: minted on demand, cached per (identity, audiences) until half-life.
- Losing the identity (PERMISSION_DENIED / token refused) publishes a denied snapshot: open streams end
  with PermissionDenied. kubespiffed unreachable: keep serving what is still valid, retry with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import grpc
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from kubespiffe.agent.files import write_atomic, write_x509_svids
from kubespiffe.agent.issuer_client import (
    JWTSVID,
    IssuerClient,
    IssuerError,
    NoIdentity,
    ServerIdentityWrong,
    ServerUnreachable,
    TokenRefused,
    X509Result,
    trust_domain_of,
)
from kubespiffe.agent.state import AgentState, Snapshot
from kubespiffe.agent.workloadapi import WorkloadAPI
from kubespiffe.proto import workload_pb2, workload_pb2_grpc, workload_pool
from kubespiffe.spiffe.bundle import Bundle, BundleSet, parse_pem_certificates
from kubespiffe.spiffe.x509svid import half_life
from kubespiffe.versioned import Versioned

log = logging.getLogger("kubespiffe.agent")

_BACKOFF_MIN, _BACKOFF_MAX = 0.5, 30.0
# gRPC health service names on the agent's socket: "" = an SVID is in hand (startup/readiness),
# UPSTREAM = kubespiffed answered the last call (renewal keeps working).
UPSTREAM = "kubespiffe.upstream"
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass(frozen=True)
class AgentConfig:
    server: str
    token_file: Path
    bundle_file: Path
    socket: Path
    write_dir: Path | None = None
    jwt_audience: str | None = None
    server_name: str = "kubespiffed"


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.state: AgentState = Versioned(None)
        bootstrap = parse_pem_certificates(config.bundle_file.read_bytes())
        self._client = IssuerClient(config.server, bootstrap, server_name=config.server_name)
        self._trust_domain = trust_domain_of(bootstrap)
        self._x509: X509Result | None = None
        self._bundles: BundleSet | None = None
        self._denied: str | None = None
        self._jwt_cache: dict[tuple[str, tuple[str, ...]], tuple[list[JWTSVID], dt.datetime]] = {}
        self.ready = asyncio.Event()
        self.health = health_aio.HealthServicer()

    def _token(self) -> str:
        return self.config.token_file.read_text().strip()

    async def _publish(self) -> None:
        if self._x509 is None and self._denied is None:
            return
        bundles = self._bundles or BundleSet(Bundle(self._trust_domain))
        if not bundles.own.x509_authorities and self._x509 is not None:
            # Until WatchBundles delivers, the bundle that came with the SVIDs is the trust domain's.
            bundles = bundles.with_own(replace(bundles.own, x509_authorities=self._x509.bundle))
        snapshot = Snapshot(
            bundles=bundles,
            svids=self._x509.svids if self._x509 else (),
            denied=self._denied,
        )
        await self.state.publish(snapshot)
        if self.config.write_dir and self._x509 is not None and not self._denied:
            await asyncio.to_thread(self._write_files, snapshot)

    def _write_files(self, snapshot: Snapshot) -> None:
        assert self.config.write_dir is not None and self._x509 is not None
        own = snapshot.x509_bundles.get(snapshot.trust_domain, ())
        write_x509_svids(self.config.write_dir, self._x509.svids, own)

    # --- X.509 ---------------------------------------------------------------------------------------

    async def _x509_loop(self) -> None:
        backoff = _BACKOFF_MIN
        while True:
            try:
                result = await self._client.mint_x509(self._token())
            except (NoIdentity, TokenRefused) as exc:
                await self._deny(str(exc))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX)
                continue
            except (IssuerError, OSError) as exc:
                log.warning("cannot renew X.509-SVIDs (%s); retrying in %.1fs", exc, backoff)
                await self.health.set(UPSTREAM, _NOT_SERVING)
                await self._expire()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX)
                continue
            backoff = _BACKOFF_MIN
            self._x509, self._denied = result, None
            self._trust_domain = result.svids[0].spiffe_id.trust_domain
            await self._publish()
            self.ready.set()
            await self.health.set("", _SERVING)
            await self.health.set(UPSTREAM, _SERVING)
            log.info(
                "X.509-SVIDs renewed: %s (expire %s)",
                ",".join(str(s.spiffe_id) for s in result.svids),
                result.svids[0].expires_at.isoformat(),
            )
            renew_at = min(s.renew_at for s in result.svids)
            await asyncio.sleep(max(1.0, (renew_at - dt.datetime.now(dt.UTC)).total_seconds()))

    async def _deny(self, reason: str) -> None:
        if self._denied != reason:
            log.warning("identity lost: %s", reason)
        self._denied = reason
        self._x509 = None
        self._jwt_cache.clear()
        self.ready.clear()
        await self.health.set("", _NOT_SERVING)
        await self.health.set(UPSTREAM, _SERVING)
        await self._publish()

    async def _expire(self) -> None:
        """While kubespiffed is unreachable, keep serving SVIDs until they expire, then stop claiming them."""
        if self._x509 and min(s.expires_at for s in self._x509.svids) <= dt.datetime.now(dt.UTC):
            log.warning("X.509-SVIDs expired while kubespiffed is unreachable")
            self._x509 = None
            self.ready.clear()
            await self.health.set("", _NOT_SERVING)

    # --- bundles -------------------------------------------------------------------------------------

    async def _bundle_loop(self) -> None:
        backoff = _BACKOFF_MIN
        while True:
            try:
                async for bundles in self._client.watch_bundles(self._token()):
                    backoff = _BACKOFF_MIN
                    await self.health.set(UPSTREAM, _SERVING)
                    self._bundles = bundles
                    self._trust_domain = bundles.trust_domain
                    self._client.set_trust(list(bundles.own.x509_authorities))
                    log.info("bundles updated: %s", ", ".join(str(b.trust_domain) for b in bundles.bundles()))
                    await self._publish()
            except NoIdentity as exc:
                # kubespiffed re-checks the pod's entitlement on the stream: losing it ends the stream.
                await self._deny(str(exc))
            except (IssuerError, OSError) as exc:
                log.warning("bundle stream ended (%s); reconnecting in %.1fs", exc, backoff)
                await self.health.set(UPSTREAM, _NOT_SERVING)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _BACKOFF_MAX)

    # --- JWT -----------------------------------------------------------------------------------------

    async def mint_jwt(self, audience: Sequence[str], spiffe_id: str) -> Sequence[JWTSVID]:
        """JWT-SVIDs from the cache until half-life, else from kubespiffed (its errors pass through)."""
        key = (spiffe_id, tuple(sorted(audience)))
        cached = self._jwt_cache.get(key)
        now = dt.datetime.now(dt.UTC)
        if cached and now < cached[1]:
            return cached[0]
        svids = await self._client.mint_jwt(self._token(), list(audience), spiffe_id)
        if svids:
            self._jwt_cache[key] = (svids, half_life(now, min(s.expires_at for s in svids)))
        return svids

    async def _jwt_file_loop(self) -> None:
        assert self.config.write_dir is not None and self.config.jwt_audience
        while True:
            await self.ready.wait()
            try:
                svids = await self.mint_jwt([self.config.jwt_audience], "")
                write_atomic(self.config.write_dir / "jwt.0.token", svids[0].token.encode(), 0o600)
                await asyncio.sleep(30)
            except (NoIdentity, ServerUnreachable, ServerIdentityWrong) as exc:
                log.warning("cannot refresh the JWT-SVID file: %s", exc)
                await asyncio.sleep(5)

    # --- serving -------------------------------------------------------------------------------------

    async def run(self, started: asyncio.Event | None = None) -> None:
        server = grpc.aio.server()
        workload_pb2_grpc.add_SpiffeWorkloadAPIServicer_to_server(
            WorkloadAPI(self.state, self.mint_jwt), server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        await self.health.set("", _NOT_SERVING)
        await self.health.set(UPSTREAM, _NOT_SERVING)
        service_names = (
            workload_pb2.DESCRIPTOR.services_by_name["SpiffeWorkloadAPI"].full_name,
            health.SERVICE_NAME,
            reflection.SERVICE_NAME,
        )
        # Our Workload API descriptors live in their own pool (see proto/workload_pool.py).
        reflection.enable_server_reflection(service_names, server, pool=workload_pool.POOL)
        socket = self.config.socket
        socket.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            socket.unlink()
        server.add_insecure_port(f"unix://{socket}")
        await server.start()
        os.chmod(socket, 0o666)  # noqa: S103 — any container of the pod may use it, and only the pod's containers can
        log.info("Workload API serving on unix://%s", socket)
        if started is not None:
            started.set()
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._x509_loop())
                group.create_task(self._bundle_loop())
                if self.config.write_dir and self.config.jwt_audience:
                    group.create_task(self._jwt_file_loop())
        finally:
            await server.stop(grace=2)
            await self._client.close()
