"""The authority as every replica sees it: the Secret's state, followed by polling, rotated by the leader.

    authority = LiveAuthority(client, namespace=..., secret=..., stored=await store.load_or_create(...), ...)
    authority.on_activate(serving_identity.set_authority)  # called with each newly active CA
    authority.active_x509(); authority.active_jwt()  # what signs now
    authority.trust   # Versioned[BundleSet]: the bundles, as they change
    await authority.run()  # follow the Secret; rotate when this replica leads

Every replica re-reads the Secret every `poll` seconds and applies what changed: a new published key
set goes to `trust` (and from there to WatchBundles streams and the bundle endpoint), a new active slot
goes to the signers and to the `on_activate` callbacks. Only the Lease holder writes.

With an `upstream` (authority.upstream), every new slot's CA is an intermediate the upstream signs, made
before the step that publishes it; when the upstream cannot sign, the leader logs why, keeps signing with
the current slot and tries again after `upstream_retry`. A slot the upstream did not sign (a self-signed
CA from before the upstream was configured, or one under a replaced upstream CA) is rotated out at once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable

from lightkube import AsyncClient

from kubespiffe.authority import store
from kubespiffe.authority.keys import KeyType
from kubespiffe.authority.rotation import RotationPolicy, next_step, plan
from kubespiffe.authority.state import AuthorityState, JwtSigningKey, Slot, new_slot
from kubespiffe.authority.upstream import Upstream, UpstreamError, new_intermediate
from kubespiffe.authority.x509ca import X509Authority, create_self_signed_ca
from kubespiffe.constants import ROTATE_ANNOTATION
from kubespiffe.kube.leader import LeaderElector
from kubespiffe.spiffe.bundle import Bundle, BundleSet
from kubespiffe.spiffe.spiffeid import SpiffeId, TrustDomain
from kubespiffe.versioned import Versioned

log = logging.getLogger("kubespiffed.authority")


class LiveAuthority:
    def __init__(
        self,
        client: AsyncClient,
        *,
        namespace: str,
        secret: str,
        stored: store.Stored,
        trust_domain: TrustDomain,
        ca_key_type: KeyType,
        ca_ttl: dt.timedelta,
        jwt_key_type: KeyType,
        policy: RotationPolicy,
        leader: LeaderElector,
        poll: float = 2.0,
        upstream: Upstream | None = None,
        probe: tuple[SpiffeId, tuple[str, ...]] | None = None,
        upstream_retry: dt.timedelta = dt.timedelta(seconds=30),
    ) -> None:
        self._client = client
        self._namespace = namespace
        self._secret = secret
        self.stored = stored
        self._trust_domain = trust_domain
        self._ca_key_type = ca_key_type
        self._ca_ttl = ca_ttl
        self._jwt_key_type = jwt_key_type
        self.policy = policy
        self._leader = leader
        self._poll = poll
        self._upstream = upstream
        # The SVID an upstream's intermediate must be able to sign (kubespiffed's own ID and DNS names).
        self._probe = probe or (SpiffeId(trust_domain, "/kubespiffe/upstream-check"), ())
        self._upstream_retry = upstream_retry
        self._upstream_failed_at: dt.datetime | None = None
        self.trust: Versioned[BundleSet] = Versioned(BundleSet(self.bundle()))
        self._on_active: list[Callable[[X509Authority], None]] = []

    @property
    def state(self) -> AuthorityState:
        return self.stored.state

    def active_x509(self) -> X509Authority:
        return self.state.active_x509()

    def active_jwt(self) -> JwtSigningKey:
        return self.state.active_jwt()

    def bundle(self) -> Bundle:
        return Bundle(
            self._trust_domain,
            tuple(self.state.trust_bundle()),
            self.state.jwt_authorities(),
            sequence=self.state.sequence,
            refresh_hint=int(self.policy.refresh_hint.total_seconds()),
        )

    def on_activate(self, callback: Callable[[X509Authority], None]) -> None:
        """Call `callback` with each newly active CA (never a prepared one: it must not sign yet)."""
        self._on_active.append(callback)

    async def new_x509_authority(self, now: dt.datetime) -> X509Authority:
        """A new signing CA: self-signed, or an intermediate from the upstream (else UpstreamError)."""
        if self._upstream is None:
            return create_self_signed_ca(self._trust_domain, self._ca_key_type, self._ca_ttl, now)
        probe_id, probe_dns = self._probe
        return await new_intermediate(
            self._upstream, self._trust_domain, self._ca_key_type, self._ca_ttl, now, probe_id, probe_dns
        )

    def _wants_upstream(self, state: AuthorityState) -> bool:
        """The newest slot is not the upstream's: prepare one that is (a prepared one waits its turn)."""
        newest = state.prepared or state.active
        return self._upstream is not None and not self._upstream.adopts(newest.authority)

    async def _new_slot(self, state: AuthorityState, now: dt.datetime) -> Slot | None:
        """The slot to prepare; None when the upstream cannot sign (logged, retried later)."""
        failed = self._upstream_failed_at
        if failed is not None and now < failed + self._upstream_retry:
            return None
        try:
            ca = await self.new_x509_authority(now)
        except UpstreamError as exc:
            self._upstream_failed_at = now
            log.error("cannot prepare a new signing CA, still signing with slot %s: %s", state.active.id, exc)
            return None
        self._upstream_failed_at = None
        return new_slot(ca, self._jwt_key_type, "prepared", now)

    async def _apply(self, stored: store.Stored) -> None:
        before = self.stored.state
        self.stored = stored
        after = stored.state
        if after.sequence != before.sequence or after.active.id != before.active.id:
            own = self.bundle()
            await self.trust.update(lambda current: current.with_own(own))
        if after.active.id != before.active.id:
            log.info("signing with slot %s (jwt kid %s)", after.active.id, after.active.jwt_kid)
            for callback in self._on_active:
                callback(after.active_x509())

    async def tick(self) -> None:
        stored = await store.load(self._client, self._namespace, self._secret)
        if stored is None:
            log.error(
                "authority Secret %s/%s disappeared; keeping the keys in memory",
                self._namespace,
                self._secret,
            )
            return
        if self._leader.is_leader:
            now = dt.datetime.now(dt.UTC)
            rotate = stored.rotate_requested or self._wants_upstream(stored.state)
            planned = stored.state
            if next_step(stored.state, self.policy, now, rotate) != "prepare":
                planned = plan(stored.state, self.policy, now, _no_slot, rotate)
            elif (slot := await self._new_slot(stored.state, now)) is not None:
                planned = stored.state.prepare(slot)
            if planned is not stored.state:
                annotations = dict(stored.annotations)
                if planned.prepared is not None and stored.state.prepared is None:
                    annotations.pop(ROTATE_ANNOTATION, None)
                try:
                    stored = await store.update(
                        self._client,
                        self._namespace,
                        self._secret,
                        planned,
                        stored.resource_version,
                        annotations,
                    )
                except store.StaleStateError:
                    return
                log.info(
                    "authority rotated: sequence=%d slots=%s",
                    planned.sequence,
                    ",".join(f"{s.id[:8]}:{s.state}" for s in planned.slots),
                )
        await self._apply(stored)

    async def run(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:
                log.exception("authority refresh failed")
            await asyncio.sleep(self._poll)


def _no_slot() -> Slot:
    raise AssertionError("plan prepared a slot although next_step said it would not")
