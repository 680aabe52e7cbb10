"""Attest a caller: verify its pod-bound token, then check what the API server's own token authenticator
checks and a bit more: the pod still exists, is the same pod (UID), is not past its deletion grace period
and has not finished; the token's ServiceAccount still exists and is the same one (UID).

    attestor = PodAttestor(TokenVerifier(...), client, registry.pods)
    await attestor.run()                  # in a task: list+watch ServiceAccounts
    pod = await attestor.attest(token)    # AttestedPod, or TokenRejected saying why not

The watch caches answer in steady state; a miss (an object created a moment ago, not yet seen by the
watch) or a UID mismatch (the cache may lag a delete+recreate) is settled by one direct GET, so a brand-new
pod is served at once and a deleted pod's token is refused.

While the API server cannot be reached, the caches still answer for every pod and ServiceAccount they
hold; a miss then raises ClusterUnreachable (the issuer answers UNAVAILABLE, and the agent retries).

A pod being deleted is served until its deletionTimestamp (deletion plus its grace period), then refused:
a pod shutting down gracefully still drains work that may need SVIDs (its agent renews and serves them as
before, as SPIRE's does), while a pod held by a finalizer, which can stay in that state indefinitely, loses
its identity when its grace period ends. The API server's own check allows a minute more.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass

from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.resources.core_v1 import ServiceAccount

from kubespiffe.attestation.token import PodClaims, TokenRejected, TokenVerifier
from kubespiffe.errors import KubespiffeError
from kubespiffe.kube.pods import PodView
from kubespiffe.kube.watchcache import WatchCache

_FINISHED = frozenset({"Succeeded", "Failed"})


class ClusterUnreachable(KubespiffeError):
    """The caches do not hold the caller's pod or ServiceAccount and the API server cannot be asked now
    (down, restarting, or failing): nothing is refused, the caller should retry."""


@dataclass(frozen=True)
class AttestedPod:
    """A caller that proved it is this pod: the token's claims and the live pod (the fields of it that
    attestation and matching read)."""

    claims: PodClaims
    pod: PodView

    @property
    def who(self) -> str:
        """For log lines: which pod, never the token."""
        return f"pod={self.claims.pod_name} namespace={self.claims.namespace}"


class PodAttestor:
    def __init__(self, verifier: TokenVerifier, client: AsyncClient, pods: WatchCache[PodView]) -> None:
        self._verifier = verifier
        self._client = client
        self._pods = pods
        self.service_accounts: WatchCache[ServiceAccount] = WatchCache(client, ServiceAccount)

    async def run(self) -> None:
        """Keep the ServiceAccount cache current (the pod cache belongs to the registry)."""
        await self.service_accounts.run()

    async def wait_synced(self) -> None:
        await self.service_accounts.synced.wait()

    def pod_now(self, token: str) -> str | None:
        """The UID of the pod the token speaks for, told without I/O (`TokenVerifier.verify_now`): None
        when only I/O can tell, TokenRejected when the token is refused. `attest` still decides: the pod
        itself is checked there."""
        claims = self._verifier.verify_now(token)
        return claims.pod_uid if claims is not None else None

    async def attest(self, token: str) -> AttestedPod:
        """The pod the token speaks for, or TokenRejected saying why the token does not attest one."""
        claims = await self._verifier.verify(token)
        return AttestedPod(claims, await self.resolve(claims))

    async def resolve(self, claims: PodClaims) -> PodView:
        """The live pod the claims are bound to, or TokenRejected saying why not."""
        pod = self._pods.get(claims.namespace, claims.pod_name)
        if pod is None or _uid(pod) != claims.pod_uid:
            pod = await self._get(claims)
        if _uid(pod) != claims.pod_uid:
            raise TokenRejected("the pod the token is bound to was deleted (a new pod has its name)")
        deleting = pod.metadata.deletionTimestamp if pod.metadata is not None else None
        if deleting is not None and deleting <= dt.datetime.now(dt.UTC):
            raise TokenRejected("the pod the token is bound to was deleted and its grace period is over")
        phase = pod.status.phase if pod.status else None
        if phase in _FINISHED:
            raise TokenRejected(f"the pod the token is bound to has finished ({phase})")
        spec_sa = pod.spec.serviceAccountName if pod.spec else None
        if spec_sa and spec_sa != claims.service_account:
            raise TokenRejected("the token's service account is not the pod's")
        await self._check_service_account(claims)
        return pod

    async def _check_service_account(self, claims: PodClaims) -> None:
        """The ServiceAccount the token names exists and is the same object (UID) it was issued for."""
        if claims.service_account_uid is None:  # TokenReview's answer: the API server checked it
            return
        account = self.service_accounts.get(claims.namespace, claims.service_account)
        if account is None or _uid(account) != claims.service_account_uid:
            try:
                with _unreachable("service account"):
                    account = await self._client.get(
                        ServiceAccount, claims.service_account, namespace=claims.namespace
                    )
            except ApiError as exc:
                if exc.status.code == 404:
                    raise TokenRejected("the token's service account no longer exists") from None
                raise ClusterUnreachable(_api_failed("service account", exc)) from exc
            self.service_accounts.put(account)
        if _uid(account) != claims.service_account_uid:
            raise TokenRejected("the token's service account was deleted (a new one has its name)")

    async def _get(self, claims: PodClaims) -> PodView:
        try:
            with _unreachable("pod"):
                pod: PodView = await self._client.get(PodView, claims.pod_name, namespace=claims.namespace)
        except ApiError as exc:
            if exc.status.code == 404:
                raise TokenRejected("the pod the token is bound to no longer exists") from None
            raise ClusterUnreachable(_api_failed("pod", exc)) from exc
        self._pods.put(pod)
        return pod


@contextlib.contextmanager
def _unreachable(what: str) -> Iterator[None]:
    """A lookup that did not get an answer (lightkube's transport errors: refused, reset, timed out)."""
    try:
        yield
    except ApiError:
        raise
    except Exception as exc:
        raise ClusterUnreachable(
            f"cannot reach the Kubernetes API server to look up the token's {what} "
            f"({type(exc).__name__}); retry"
        ) from exc


def _api_failed(what: str, exc: ApiError) -> str:
    return f"the Kubernetes API server could not look up the token's {what} ({exc.status.code}); retry"


def _uid(obj: PodView | ServiceAccount) -> str | None:
    return obj.metadata.uid if obj.metadata else None
