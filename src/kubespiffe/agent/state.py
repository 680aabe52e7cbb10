"""What the agent currently holds for its pod, as immutable snapshots that streams wait on.

Every change (renewal, bundle update, loss of identity) publishes a new snapshot and wakes the open
Workload API streams, which then send the complete current state, as the spec requires.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes

from kubespiffe.spiffe.spiffeid import SpiffeId, TrustDomain


@dataclass(frozen=True)
class HeldX509SVID:
    spiffe_id: SpiffeId
    chain: tuple[x509.Certificate, ...]
    private_key: PrivateKeyTypes
    hint: str


@dataclass(frozen=True)
class Snapshot:
    """The pod's identities and the bundles it trusts. `denied` means: the pod has no identity (any more)."""

    trust_domain: TrustDomain
    svids: tuple[HeldX509SVID, ...] = ()
    x509_bundles: Mapping[TrustDomain, tuple[x509.Certificate, ...]] = field(default_factory=dict)
    jwt_bundles: Mapping[TrustDomain, Mapping[str, PublicKeyTypes]] = field(default_factory=dict)
    denied: str | None = None

    @property
    def federated_x509(self) -> dict[TrustDomain, tuple[x509.Certificate, ...]]:
        return {td: certs for td, certs in self.x509_bundles.items() if td != self.trust_domain}


class AgentState:
    """Holds the newest snapshot; `changed(version)` waits for a newer one."""

    def __init__(self) -> None:
        self._snapshot: Snapshot | None = None
        self._version = 0
        self._condition = asyncio.Condition()

    @property
    def current(self) -> Snapshot | None:
        return self._snapshot

    @property
    def version(self) -> int:
        return self._version

    async def publish(self, snapshot: Snapshot) -> None:
        async with self._condition:
            self._snapshot = snapshot
            self._version += 1
            self._condition.notify_all()

    async def changed(self, seen: int) -> tuple[int, Snapshot]:
        """Wait until a snapshot newer than version `seen` exists; return it with its version."""
        async with self._condition:
            await self._condition.wait_for(lambda: self._version > seen and self._snapshot is not None)
            assert self._snapshot is not None
            return self._version, self._snapshot
