"""The authority Secret on a real kube-apiserver: created once, one CA after a race, stale writes refused."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Secret

from kubespiffe.authority import store
from kubespiffe.authority.keys import KeyType
from kubespiffe.authority.state import BUNDLE_KEY, DOCUMENT_KEY, AuthorityState, StateError, new_slot
from kubespiffe.authority.x509ca import create_self_signed_ca
from kubespiffe.spiffe.bundle import parse_pem_certificates
from kubespiffe.spiffe.spiffeid import TrustDomain

pytestmark = pytest.mark.integration

TD = TrustDomain("example.org")
SECRET = "kubespiffe-authority"


class _Creator:
    """A `create` callable that makes a fresh CA each time and counts its calls."""

    def __init__(self) -> None:
        self.made: list[AuthorityState] = []

    def __call__(self) -> AuthorityState:
        now = dt.datetime.now(dt.UTC)
        state = AuthorityState.new(
            create_self_signed_ca(TD, KeyType.EC_P256, dt.timedelta(days=1), now), now=now
        )
        self.made.append(state)
        return state


class _GetsMeetFirst:
    """The real client, except that the first `parties` GETs all return before any of them does.

    That forces the race the store must survive: every replica sees 404 and then tries to create.
    """

    def __init__(self, client: AsyncClient, parties: int) -> None:
        self._client = client
        self._parties = parties
        self._done = 0
        self._all_done = asyncio.Event()

    async def get(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await self._client.get(*args, **kwargs)
        finally:
            self._done += 1
            if self._done >= self._parties:
                self._all_done.set()
            await self._all_done.wait()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


async def _stored_bundle(kube: AsyncClient, namespace: str, name: str = SECRET) -> list[bytes]:
    secret = await kube.get(Secret, name, namespace=namespace)
    assert secret.data is not None
    return [_fp(c) for c in parse_pem_certificates(base64.b64decode(secret.data[BUNDLE_KEY]))]


def _fp(cert: x509.Certificate) -> bytes:
    return cert.fingerprint(hashes.SHA256())


def _ca_fingerprint(state: AuthorityState) -> bytes:
    return _fp(state.active_x509().certificate)


async def test_load_of_a_missing_secret_is_none(kube: AsyncClient, namespace: str) -> None:
    assert await store.load(kube, namespace, SECRET) is None


async def test_load_or_create_creates_once(kube: AsyncClient, namespace: str) -> None:
    create = _Creator()
    first = await store.load_or_create(kube, namespace, SECRET, create)
    assert len(create.made) == 1 and _ca_fingerprint(first.state) == _ca_fingerprint(create.made[0])

    secret = await kube.get(Secret, SECRET, namespace=namespace)
    assert secret.type == "Opaque"
    assert secret.metadata.labels == {
        "app.kubernetes.io/name": "kubespiffe",
        "app.kubernetes.io/component": "authority",
    }
    assert set(secret.data) == {DOCUMENT_KEY, BUNDLE_KEY}
    assert secret.metadata.resourceVersion == first.resource_version

    second = await store.load_or_create(kube, namespace, SECRET, create)
    assert len(create.made) == 1  # the Secret existed: nothing was generated
    assert second.resource_version == first.resource_version
    assert _ca_fingerprint(second.state) == _ca_fingerprint(first.state)
    assert second.state.active_jwt()[0] == first.state.active_jwt()[0]
    assert await _stored_bundle(kube, namespace) == [_ca_fingerprint(first.state)]


@pytest.mark.parametrize("replicas", [2, 5])
async def test_replicas_racing_to_create_end_with_one_ca(
    kube: AsyncClient, namespace: str, replicas: int
) -> None:
    creators = [_Creator() for _ in range(replicas)]
    racing = _GetsMeetFirst(kube, replicas)
    results = await asyncio.gather(*(store.load_or_create(racing, namespace, SECRET, c) for c in creators))

    assert all(len(c.made) == 1 for c in creators)  # every replica saw 404 and built its own CA
    assert len({_ca_fingerprint(c.made[0]) for c in creators}) == replicas
    stored = await _stored_bundle(kube, namespace)
    assert len(stored) == 1
    assert {_ca_fingerprint(r.state) for r in results} == set(stored)
    assert len({r.resource_version for r in results}) == 1
    assert len({r.state.active_jwt()[0] for r in results}) == 1
    reloaded = await store.load(kube, namespace, SECRET)
    assert reloaded is not None and _ca_fingerprint(reloaded.state) == stored[0]


def _rotated(state: AuthorityState) -> AuthorityState:
    now = dt.datetime.now(dt.UTC)
    ca = create_self_signed_ca(TD, KeyType.EC_P256, dt.timedelta(days=1), now)
    return state.prepare(new_slot(ca, KeyType.EC_P256, "prepared", now))


async def test_update_with_a_stale_resource_version_is_refused(kube: AsyncClient, namespace: str) -> None:
    read = await store.load_or_create(kube, namespace, SECRET, _Creator())
    winner = _rotated(read.state)
    written = await store.update(
        kube, namespace, SECRET, winner, read.resource_version, {"kubespiffe.io/note": "first writer"}
    )
    assert written.resource_version != read.resource_version
    assert written.annotations == {"kubespiffe.io/note": "first writer"}

    loser = _rotated(read.state)
    with pytest.raises(store.StaleStateError, match=f"Secret {namespace}/{SECRET} changed since it was read"):
        await store.update(kube, namespace, SECRET, loser, read.resource_version)

    now_stored = await store.load(kube, namespace, SECRET)
    assert now_stored is not None
    assert now_stored.resource_version == written.resource_version
    assert now_stored.annotations == {"kubespiffe.io/note": "first writer"}
    assert [s.id for s in now_stored.state.slots] == [s.id for s in winner.slots]
    assert await _stored_bundle(kube, namespace) == [_fp(s.authority.certificate) for s in winner.slots]
    secret = await kube.get(Secret, SECRET, namespace=namespace)
    assert secret.metadata.labels["app.kubernetes.io/component"] == "authority"

    again = await store.update(kube, namespace, SECRET, now_stored.state, now_stored.resource_version)
    assert again.annotations == {} and again.resource_version != written.resource_version


async def test_a_malformed_secret_is_reported_not_replaced(kube: AsyncClient, namespace: str) -> None:
    """A Secret that exists but holds no usable document must never be overwritten by a new CA."""
    junk = {DOCUMENT_KEY: base64.b64encode(b'{"version": 99}').decode()}
    await kube.create(Secret(metadata=ObjectMeta(name=SECRET, namespace=namespace), type="Opaque", data=junk))
    create = _Creator()
    with pytest.raises(StateError, match="unsupported version"):
        await store.load_or_create(kube, namespace, SECRET, create)
    assert create.made == []
    secret = await kube.get(Secret, SECRET, namespace=namespace)
    assert secret.data == junk


async def test_a_failing_create_is_not_swallowed(kube: AsyncClient, namespace: str) -> None:
    """Only 409 means "someone else won"; any other refusal (here: a name the API server rejects) surfaces."""
    create = _Creator()
    with pytest.raises(ApiError) as caught:
        await store.load_or_create(kube, namespace, "Not_A_Valid_Name", create)
    assert caught.value.status.code == 422
    assert len(create.made) == 1
