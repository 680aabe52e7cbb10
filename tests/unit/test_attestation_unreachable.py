"""A pod the caches do not hold, while the API server cannot be reached: a ClusterUnreachable (the
issuer answers UNAVAILABLE, retryable), never a bare transport error (an opaque UNKNOWN to the caller)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from lightkube.resources.core_v1 import Pod

from kubespiffe.attestation.pod import ClusterUnreachable, PodAttestor
from kubespiffe.attestation.token import PodClaims
from kubespiffe.errors import KubespiffeError
from kubespiffe.kube.watchcache import WatchCache

CLAIMS = PodClaims(
    namespace="demo",
    service_account="app",
    pod_name="app-1",
    pod_uid="uid-1",
    node_name=None,
    expires_at=dt.datetime.now(dt.UTC) + dt.timedelta(minutes=10),
    service_account_uid="sa-uid",
)


class Verifier:
    async def verify(self, token: str) -> PodClaims:
        return CLAIMS


class DownClient:
    """Every request fails the way lightkube's transport does when nothing listens."""

    async def get(self, *args: Any, **kwargs: Any) -> Any:
        raise ConnectionRefusedError("All connection attempts failed")


async def test_a_pod_missing_from_the_cache_while_the_api_server_is_down_is_cluster_unreachable() -> None:
    client: Any = DownClient()
    attestor = PodAttestor(Verifier(), client, WatchCache(client, Pod))  # type: ignore[arg-type]
    with pytest.raises(ClusterUnreachable, match="Kubernetes API server") as caught:
        await attestor.attest("token")
    assert isinstance(caught.value, KubespiffeError)
