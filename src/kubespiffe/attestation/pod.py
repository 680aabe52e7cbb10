"""Attest a caller: verify its pod-bound token, then check that the pod still exists, is the same pod
(UID), and has not finished.

    attestor = PodAttestor(TokenVerifier(...), client, registry.pods)
    pod = await attestor.attest(token)    # AttestedPod, or TokenRejected saying why not

The watch cache answers in steady state; a miss (a pod created a moment ago, not yet seen by the watch) or
a UID mismatch (the cache may lag a delete+recreate) is settled by one direct GET, so a brand-new pod is
served at once and a deleted pod's token is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.resources.core_v1 import Pod

from kubespiffe.attestation.token import PodClaims, TokenRejected, TokenVerifier
from kubespiffe.kube.watchcache import WatchCache

_FINISHED = frozenset({"Succeeded", "Failed"})


@dataclass(frozen=True)
class AttestedPod:
    """A caller that proved it is this pod: the token's claims and the live Pod object."""

    claims: PodClaims
    pod: Pod

    @property
    def who(self) -> str:
        """For log lines: which pod, never the token."""
        return f"pod={self.claims.pod_name} namespace={self.claims.namespace}"


class PodAttestor:
    def __init__(self, verifier: TokenVerifier, client: AsyncClient, pods: WatchCache[Pod]) -> None:
        self._verifier = verifier
        self._client = client
        self._pods = pods

    async def attest(self, token: str) -> AttestedPod:
        """The pod the token speaks for, or TokenRejected saying why the token does not attest one."""
        claims = await self._verifier.verify(token)
        return AttestedPod(claims, await self.resolve(claims))

    async def resolve(self, claims: PodClaims) -> Pod:
        """The live Pod object the claims are bound to, or TokenRejected saying why not."""
        pod = self._pods.get(claims.namespace, claims.pod_name)
        if pod is None or _uid(pod) != claims.pod_uid:
            pod = await self._get(claims)
        if _uid(pod) != claims.pod_uid:
            raise TokenRejected("the pod the token is bound to was deleted (a new pod has its name)")
        phase = pod.status.phase if pod.status else None
        if phase in _FINISHED:
            raise TokenRejected(f"the pod the token is bound to has finished ({phase})")
        spec_sa = pod.spec.serviceAccountName if pod.spec else None
        if spec_sa and spec_sa != claims.service_account:
            raise TokenRejected("the token's service account is not the pod's")
        return pod

    async def _get(self, claims: PodClaims) -> Pod:
        try:
            pod: Pod = await self._client.get(Pod, claims.pod_name, namespace=claims.namespace)
        except ApiError as exc:
            if exc.status.code == 404:
                raise TokenRejected("the pod the token is bound to no longer exists") from None
            raise
        self._pods.put(pod)
        return pod


def _uid(pod: Pod) -> str | None:
    return pod.metadata.uid if pod.metadata else None
