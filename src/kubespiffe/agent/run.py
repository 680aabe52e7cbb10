"""`kubespiffe agent`: keep the pod's SVIDs fresh and serve them on the Workload API socket.

- X.509-SVIDs: a new key and CSR per renewal, renewed at half-life; the token file is re-read for every
  call to kubespiffed because the kubelet rotates it.
- Grant and bundles: one WatchIdentity stream from kubespiffed, open whatever the pod is granted. A new
  grant (an identity gained, lost or changed) is minted at once, whatever the retry backoff; no identity
  left publishes a denied snapshot at once; every bundle change is pushed to open Workload API streams.
- JWT-SVIDs: minted on demand, cached per (identity, audiences) until half-life, at most
  `jwt_cache_size` answers (least recently used leave first).
- Losing the identity (pushed, or PERMISSION_DENIED / token refused) publishes a denied snapshot: open
  streams end with PermissionDenied. Errors are retried with backoff (0.5 s doubling to 30 s); the push
  of a new grant bypasses it. kubespiffed unreachable: keep serving what is still valid.
- Every SVID is withdrawn when it expires (stream, files, jwt.0.token), whatever else is going on.
- The WatchIdentity stream is ended by kubespiffed when the token it was opened with expires: it reconnects at
  once with the current token (the kubelet has refreshed it by then), which is not an outage; if that
  token is refused too (the pod was deleted), the identity is lost.
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
from typing import Any

from grpclib.health.check import ServiceStatus
from grpclib.health.service import OVERALL, Health
from grpclib.server import Server

from kubespiffe import tasks
from kubespiffe.agent import sdslazy
from kubespiffe.agent.files import remove_x509_svid, write_atomic, write_x509_svids
from kubespiffe.agent.issuer_client import (
    JWTSVID,
    Grant,
    IssuerClient,
    IssuerError,
    NoIdentity,
    TokenRefused,
    X509Result,
    trust_domain_of,
)
from kubespiffe.agent.jwtcache import DEFAULT_SIZE, Entry, JwtCache
from kubespiffe.agent.reflection import LazyReflection
from kubespiffe.agent.state import AgentState, Snapshot
from kubespiffe.agent.workloadapi import WorkloadAPI
from kubespiffe.constants import SERVER_ID_PATH
from kubespiffe.proto import workload_pool
from kubespiffe.spiffe.bundle import Bundle, BundleSet, parse_pem_certificates
from kubespiffe.spiffe.spiffeid import SpiffeId, TrustDomain
from kubespiffe.spiffe.x509svid import half_life
from kubespiffe.versioned import Versioned

log = logging.getLogger("kubespiffe.agent")

_BACKOFF_MIN, _BACKOFF_MAX = 0.5, 30.0
_JWT_FILE_RETRY = 5.0
# gRPC health service names on the agent's socket: "" = an SVID is in hand (startup/readiness),
# UPSTREAM = kubespiffed answered the last call (renewal keeps working).
UPSTREAM = "kubespiffe.upstream"
_STOP_GRACE = 2.0


class _Named:
    """A health service name with no methods: grpclib's Health names each status by a servicer's paths."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __mapping__(self) -> dict[str, None]:
        return {f"/{self._name}/": None}


@dataclass(frozen=True)
class AgentConfig:
    server: str
    token_file: Path
    bundle_file: Path
    socket: Path
    write_dir: Path | None = None
    jwt_audience: str | None = None
    server_name: str = "kubespiffed"
    # Any container of the pod may use the socket: the pod is the trust boundary (docs/agent.md).
    socket_mode: int = 0o666
    jwt_cache_size: int = DEFAULT_SIZE
    # Default: the trust domain the bootstrap bundle's CA names. An operator's root (an upstream authority,
    # docs/upstream-authority.md) names none, and may anchor other trust domains too: then it is required.
    trust_domain: TrustDomain | None = None


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.state: AgentState = Versioned(None)
        bootstrap = parse_pem_certificates(config.bundle_file.read_bytes())
        self._trust_domain = config.trust_domain or trust_domain_of(bootstrap)
        # kubespiffed's ID is pinned once: later bundles may name no trust domain (a trust domain moving
        # under an upstream root drops its self-signed CA), and may anchor other trust domains too.
        server_id = SpiffeId(self._trust_domain, SERVER_ID_PATH)
        self._client = IssuerClient(
            config.server, bootstrap, server_id=server_id, server_name=config.server_name
        )
        self._x509: X509Result | None = None
        self._bundles: BundleSet | None = None
        self._grant: bytes | None = None  # the digest of the newest grant pushed (None: none yet)
        self._denied: str | None = None
        self._jwt_cache = JwtCache(config.jwt_cache_size)
        # Files mode: expiry of what is on disk, by identity index, and of jwt.0.token.
        self._on_disk: dict[int, dt.datetime] = {}
        self._jwt_file_expires: dt.datetime | None = None
        # Wake-ups: the X.509 loop to ask now, the WatchIdentity loop to reconnect now, the withdrawal
        # loop to look at what is held again.
        self._renew_now = asyncio.Event()
        self._reconnect_now = asyncio.Event()
        self._held_changed = asyncio.Event()
        self.ready = asyncio.Event()
        self.svid_health, self.upstream_health = ServiceStatus(), ServiceStatus()
        self.svid_health.set(False)
        self.upstream_health.set(False)

    def _token(self) -> str:
        return self.config.token_file.read_text().strip()

    async def _publish(self) -> None:
        if self._x509 is None and self._denied is None and self.state.current is None:
            return  # nothing to say before the first SVID
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
        if self.config.write_dir and snapshot.svids and not self._denied:
            own = snapshot.x509_bundles.get(snapshot.trust_domain, ())
            await asyncio.to_thread(write_x509_svids, self.config.write_dir, snapshot.svids, own)
            self._on_disk = {i: svid.expires_at for i, svid in enumerate(snapshot.svids)}
        self._held_changed.set()

    # --- X.509 ---------------------------------------------------------------------------------------

    async def _x509_loop(self) -> None:
        backoff = _BACKOFF_MIN
        while True:
            try:
                result = await self._client.mint_x509(self._token())
            except (NoIdentity, TokenRefused) as exc:
                await self._deny(str(exc))
                await _pause(backoff, self._renew_now)
                backoff = min(backoff * 2, _BACKOFF_MAX)
                continue
            except (IssuerError, OSError) as exc:
                log.warning("cannot renew X.509-SVIDs (%s); retrying in %.1fs", exc, backoff)
                self.upstream_health.set(False)
                await _pause(backoff, self._renew_now)
                backoff = min(backoff * 2, _BACKOFF_MAX)
                continue
            backoff = _BACKOFF_MIN
            if self._grant in (None, result.grant):
                self._renew_now.clear()  # a push that arrived meanwhile asked for exactly these
            if self._denied is not None:
                self._reconnect_now.set()  # the stream's token may have been refused too; ask again now
            self._x509, self._denied = result, None
            self._trust_domain = result.svids[0].spiffe_id.trust_domain
            await self._publish()
            self.ready.set()
            self.svid_health.set(True)
            self.upstream_health.set(True)
            log.info(
                "X.509-SVIDs renewed: %s (expire %s)",
                ",".join(str(s.spiffe_id) for s in result.svids),
                result.svids[0].expires_at.isoformat(),
            )
            renew_at = min(s.renew_at for s in result.svids)
            await _pause(max(1.0, (renew_at - dt.datetime.now(dt.UTC)).total_seconds()), self._renew_now)

    async def _deny(self, reason: str) -> None:
        if self._denied != reason:
            log.warning("identity lost: %s", reason)
        self._denied = reason
        self._x509 = None
        self._jwt_cache.clear()
        self.ready.clear()
        self.svid_health.set(False)
        self.upstream_health.set(True)
        await self._publish()

    # --- expiry ------------------------------------------------------------------------------------

    async def _withdraw_loop(self) -> None:
        """Withdraw every SVID the moment it expires: from the streams, the files and jwt.0.token.

        Renewal normally replaces them at half-life; this is for when it cannot (kubespiffed unreachable
        for half a lifetime, or the identity lost while files remain), so that nothing expired is offered.
        """
        while True:
            due = self._next_expiry()
            wait = None if due is None else max(0.0, (due - dt.datetime.now(dt.UTC)).total_seconds())
            await _pause(wait, self._held_changed)
            await self._withdraw_expired(dt.datetime.now(dt.UTC))

    def _next_expiry(self) -> dt.datetime | None:
        held = [s.expires_at for s in self._x509.svids] if self._x509 else []
        held += self._on_disk.values()
        if self._jwt_file_expires is not None:
            held.append(self._jwt_file_expires)
        return min(held, default=None)

    async def _withdraw_expired(self, now: dt.datetime) -> None:
        if self._x509 is not None:
            valid = tuple(s for s in self._x509.svids if s.expires_at > now)
            if len(valid) < len(self._x509.svids):
                expired = [str(s.spiffe_id) for s in self._x509.svids if s.expires_at <= now]
                log.warning("X.509-SVIDs expired before they could be renewed: %s", ",".join(expired))
                self._x509 = replace(self._x509, svids=valid) if valid else None
                if not valid:
                    self.ready.clear()
                    self.svid_health.set(False)
                await self._publish()
        directory = self.config.write_dir
        if directory is None:
            return
        for index in [i for i, expires in self._on_disk.items() if expires <= now]:
            log.warning("withdrawing expired svid.%d.pem and svid.%d.key", index, index)
            await asyncio.to_thread(remove_x509_svid, directory, index)
            del self._on_disk[index]
        if self._jwt_file_expires is not None and self._jwt_file_expires <= now:
            log.warning("withdrawing the expired jwt.0.token")
            (directory / "jwt.0.token").unlink(missing_ok=True)
            self._jwt_file_expires = None

    # --- grant and bundles --------------------------------------------------------------------------

    async def _watch_loop(self) -> None:
        """One WatchIdentity stream: bundles, and the pod's grant as soon as kubespiffed sees it change."""
        backoff = _BACKOFF_MIN
        while True:
            delivered = False
            try:
                async for grant in self._client.watch_identity(self._token()):
                    delivered = True
                    backoff = _BACKOFF_MIN
                    self._reconnect_now.clear()
                    self.upstream_health.set(True)
                    await self._on_grant(grant)
            except TokenRefused as exc:
                if delivered:
                    # The token the stream was opened with expired (or the pod is gone): ask again at
                    # once with the file's current token; a refusal then is the answer.
                    log.info(
                        "identity stream ended for its token (%s); reconnecting with the current one", exc
                    )
                    continue
                await self._lose_identity(str(exc))
            except (IssuerError, OSError) as exc:
                log.warning("identity stream ended (%s); reconnecting in %.1fs", exc, backoff)
                self.upstream_health.set(False)
            await _pause(backoff, self._reconnect_now)
            backoff = min(backoff * 2, _BACKOFF_MAX)

    async def _on_grant(self, grant: Grant) -> None:
        if grant.bundles != self._bundles:
            self._bundles = grant.bundles
            self._trust_domain = grant.bundles.trust_domain
            self._client.set_trust(list(grant.bundles.own.x509_authorities))
            log.info("bundles updated: %s", ", ".join(str(b.trust_domain) for b in grant.bundles.bundles()))
            await self._publish()
        previous, self._grant = self._grant, grant.digest
        if previous is not None and previous != grant.digest:
            log.info("grant changed: %s", ",".join(map(str, grant.spiffe_ids)) or "no identity")
            self._jwt_cache.clear()  # JWT-SVIDs of the old grant
        if not grant.spiffe_ids:
            if self._denied is None:
                await self._deny(grant.reason or "no registration matches this pod")
        elif self._x509 is None or self._x509.grant != grant.digest:
            self._renew_now.set()  # mint now, whatever the backoff

    async def _lose_identity(self, reason: str) -> None:
        """The stream's token was refused: deny, and have the X.509 loop ask (with backoff) instead of
        sleeping until the old SVIDs' half-life."""
        await self._deny(reason)
        self._renew_now.set()

    # --- JWT -----------------------------------------------------------------------------------------

    async def mint_jwt(self, audience: Sequence[str], spiffe_id: str) -> Sequence[JWTSVID]:
        """JWT-SVIDs from the cache until half-life, else from kubespiffed (its errors pass through)."""
        return (await self._jwt_entry(audience, spiffe_id)).svids

    async def _jwt_entry(self, audience: Sequence[str], spiffe_id: str) -> Entry:
        key = (spiffe_id, tuple(sorted(audience)))
        now = dt.datetime.now(dt.UTC)
        cached = self._jwt_cache.get(key, now)
        if cached is not None:
            return cached
        svids = await self._client.mint_jwt(self._token(), list(audience), spiffe_id)
        entry = Entry(svids, half_life(now, min(s.expires_at for s in svids)))
        self._jwt_cache.put(key, entry, now)
        return entry

    async def _jwt_file_loop(self) -> None:
        """jwt.0.token always holds a JWT-SVID in the first half of its life: replaced at half-life."""
        assert self.config.write_dir is not None and self.config.jwt_audience
        path = self.config.write_dir / "jwt.0.token"
        while True:
            await self.ready.wait()
            try:
                svids, refresh_at = await self._jwt_entry([self.config.jwt_audience], "")
            except (IssuerError, OSError) as exc:
                log.warning("cannot refresh the JWT-SVID file: %s", exc)
                await asyncio.sleep(_JWT_FILE_RETRY)
                continue
            await asyncio.to_thread(write_atomic, path, svids[0].token.encode(), 0o600)
            self._jwt_file_expires = svids[0].expires_at
            self._held_changed.set()
            await asyncio.sleep(max(0.5, (refresh_at - dt.datetime.now(dt.UTC)).total_seconds()))

    # --- serving -------------------------------------------------------------------------------------

    async def run(self, started: asyncio.Event | None = None) -> None:
        health = Health({OVERALL: [self.svid_health], _Named(UPSTREAM): [self.upstream_health]})
        services: list[Any] = [  # grpclib's servicers: anything with __mapping__
            WorkloadAPI(self.state, self.mint_jwt),
            health,
            sdslazy.LazySecretDiscovery(self.state),  # Envoy SDS (docs/sds.md)
        ]
        # Our Workload API descriptors live in their own pool (see proto/workload_pool.py); reflection is
        # loaded on its first call (agent/reflection.py).
        server = Server([*services, LazyReflection(services, workload_pool.POOL)])
        socket = self.config.socket
        socket.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            socket.unlink()
        await server.start(path=str(socket))
        os.chmod(socket, self.config.socket_mode)
        log.info("Workload API serving on unix://%s", socket)
        if started is not None:
            started.set()
        loops = {
            "X.509 renewal": self._x509_loop,
            "identity stream": self._watch_loop,
            "expiry": self._withdraw_loop,
        }
        if self.config.write_dir and self.config.jwt_audience:
            loops["JWT-SVID file"] = self._jwt_file_loop
        agent = asyncio.current_task()
        assert agent is not None
        try:
            async with asyncio.TaskGroup() as group:
                for name, loop in loops.items():
                    # The agent stops (or a sibling failed) when its run task is being cancelled.
                    life = tasks.for_life(f"agent's {name}", loop, stopping=lambda: agent.cancelling() > 0)
                    group.create_task(life, name=f"agent {name} loop")
        finally:
            server.close()  # open calls end (grpclib cancels their handlers)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_STOP_GRACE):
                    await server.wait_closed()
            await self._client.close()


async def _pause(seconds: float | None, wake: asyncio.Event) -> None:
    """Sleep `seconds` (None: until woken), less if `wake` is set meanwhile; `wake` is clear afterwards."""
    # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a cancellation that races the
    # event being set, and the agent would then not stop on SIGTERM (tests/unit/test_versioned.py).
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await wake.wait()
    wake.clear()
