"""Leader election on a coordination.k8s.io Lease, so exactly one replica rotates keys and fetches bundles.

The holder renews every third of the lease duration; anyone may take a lease whose renewTime is older
than its duration. A standby checks every third of the duration too, but never later than the moment the
lease it saw expires, so a killed holder's lease moves within its duration of the kill. Writes carry the
resourceVersion they read, so two replicas racing for an expired lease cannot both win.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging

from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.models.coordination_v1 import LeaseSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.coordination_v1 import Lease

log = logging.getLogger(__name__)


class LeaderElector:
    def __init__(
        self, client: AsyncClient, namespace: str, name: str, identity: str, duration: float = 15.0
    ) -> None:
        self._client = client
        self._namespace = namespace
        self._name = name
        self.identity = identity
        self._duration = duration
        self.is_leader = False
        self._expires_in: float | None = None  # the other holder's lease, as last seen

    async def run(self) -> None:
        while True:
            try:
                leading = await self._try()
            except ApiError as exc:
                leading = False
                if exc.status.code != 409:
                    log.warning("lease %s/%s: %s", self._namespace, self._name, exc)
            except Exception as exc:
                # The API server cannot be reached (restarting, network): step down, keep serving from
                # the caches, and renew or take the Lease again once it answers. Ending here would end
                # kubespiffed, which cannot start again until the API server is back.
                leading = False
                log.warning("lease %s/%s: API server unreachable: %r", self._namespace, self._name, exc)
            if leading != self.is_leader:
                log.info("%s leadership of %s/%s", "took" if leading else "lost", self._namespace, self._name)
            self.is_leader = leading
            pause = self._duration / 3
            if not leading and self._expires_in is not None:
                pause = min(pause, max(self._expires_in, 0.0) + 0.05)
            await asyncio.sleep(pause)

    async def _try(self) -> bool:
        self._expires_in = None
        now = dt.datetime.now(dt.UTC)
        spec = LeaseSpec(
            holderIdentity=self.identity,
            leaseDurationSeconds=int(self._duration),
            renewTime=now,
            acquireTime=now,
        )
        try:
            lease = await self._client.get(Lease, self._name, namespace=self._namespace)
        except ApiError as exc:
            if exc.status.code != 404:
                raise
            await self._client.create(
                Lease(metadata=ObjectMeta(name=self._name, namespace=self._namespace), spec=spec)
            )
            return True
        current = lease.spec or LeaseSpec()
        renewed = current.renewTime
        expired = renewed is None or (now - renewed).total_seconds() > (current.leaseDurationSeconds or 0)
        if current.holderIdentity != self.identity and not expired:
            assert renewed is not None
            self._expires_in = (current.leaseDurationSeconds or 0) - (now - renewed).total_seconds()
            return False
        if current.holderIdentity == self.identity and current.acquireTime:
            spec.acquireTime = current.acquireTime
        lease.spec = spec
        await self._client.replace(lease)
        return True
