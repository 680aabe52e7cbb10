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
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from kubespiffe.agent.files import write_atomic, write_x509_svids
from kubespiffe.agent.issuer_client import (
    FetchError,
    IssuerClient,
    NoIdentity,
    ServerIdentityWrong,
    ServerUnreachable,
    TokenRefused,
    X509Result,
    trust_domain_of,
)
from kubespiffe.agent.state import AgentState, HeldX509SVID, Snapshot
from kubespiffe.agent.workloadapi import IssuedJwt, NoIdentityError, WorkloadAPI
from kubespiffe.proto import workload_pb2, workload_pb2_grpc
from kubespiffe.spiffe.bundle import Bundle, parse_pem_certificates

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
        self.state = AgentState()
        bootstrap = parse_pem_certificates(config.bundle_file.read_bytes())
        self._client = IssuerClient(config.server, bootstrap, server_name=config.server_name)
        self._trust_domain = trust_domain_of(bootstrap)
        self._x509: X509Result | None = None
        self._bundles: list[Bundle] = []
        self._denied: str | None = None
        self._jwt_cache: dict[tuple[str, tuple[str, ...]], tuple[list[IssuedJwt], dt.datetime]] = {}
        self.ready = asyncio.Event()
        self.health = health_aio.HealthServicer()

    def _token(self) -> str:
        return self.config.token_file.read_text().strip()

    async def _publish(self) -> None:
        if self._x509 is None and self._denied is None:
            return
        trust_domain = self._trust_domain
        x509_bundles = {b.trust_domain: tuple(b.x509_authorities) for b in self._bundles}
        if not x509_bundles.get(trust_domain) and self._x509 is not None:
            x509_bundles[trust_domain] = self._x509.bundle
        snapshot = Snapshot(
            trust_domain=trust_domain,
            svids=tuple(
                HeldX509SVID(s.spiffe_id, s.chain, s.private_key, s.hint)
                for s in (self._x509.svids if self._x509 else ())
            ),
            x509_bundles=x509_bundles,
            jwt_bundles={b.trust_domain: dict(b.jwt_authorities) for b in self._bundles},
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
            except (ServerUnreachable, ServerIdentityWrong, FetchError, OSError) as exc:
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
            leaves = [s.chain[0] for s in result.svids]
            await asyncio.sleep(
                _half_life(
                    min(c.not_valid_after_utc for c in leaves), min(c.not_valid_before_utc for c in leaves)
                )
            )

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
                    own = bundles[0] if bundles else None
                    if own is not None:
                        self._trust_domain = own.trust_domain
                        self._client.set_trust(list(own.x509_authorities))
                    log.info("bundles updated: %s", ", ".join(str(b.trust_domain) for b in bundles))
                    await self._publish()
            except NoIdentity as exc:
                # kubespiffed re-checks the pod's entitlement on the stream: losing it ends the stream.
                await self._deny(str(exc))
            except (FetchError, OSError) as exc:
                log.warning("bundle stream ended (%s); reconnecting in %.1fs", exc, backoff)
                await self.health.set(UPSTREAM, _NOT_SERVING)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _BACKOFF_MAX)

    # --- JWT -----------------------------------------------------------------------------------------

    async def mint_jwt(self, audience: Sequence[str], spiffe_id: str) -> Sequence[IssuedJwt]:
        key = (spiffe_id, tuple(sorted(audience)))
        cached = self._jwt_cache.get(key)
        now = dt.datetime.now(dt.UTC)
        if cached and now < cached[1]:
            return cached[0]
        try:
            svids = await self._client.mint_jwt(self._token(), list(audience), spiffe_id)
        except NoIdentity as exc:
            raise NoIdentityError(str(exc)) from None
        except (ServerUnreachable, ServerIdentityWrong) as exc:
            raise ConnectionError(str(exc)) from None
        issued = [IssuedJwt(str(s.spiffe_id), s.token, s.hint) for s in svids]
        if svids:
            renew_at = now + (min(s.expires_at for s in svids) - now) / 2
            self._jwt_cache[key] = (issued, renew_at)
        return issued

    async def _jwt_file_loop(self) -> None:
        assert self.config.write_dir is not None and self.config.jwt_audience
        while True:
            await self.ready.wait()
            try:
                svids = await self.mint_jwt([self.config.jwt_audience], "")
                write_atomic(self.config.write_dir / "jwt.0.token", svids[0].token.encode(), 0o600)
                await asyncio.sleep(30)
            except (NoIdentityError, ConnectionError) as exc:
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
        reflection.enable_server_reflection(service_names, server)
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


def _half_life(not_after: dt.datetime, not_before: dt.datetime) -> float:
    renew_at = not_before + (not_after - not_before) / 2
    return max(1.0, (renew_at - dt.datetime.now(dt.UTC)).total_seconds())
