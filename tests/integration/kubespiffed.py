"""Helpers for tests that run kubespiffed as a real process against the real control plane."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Event
from lightkube.resources.rbac_authorization_v1 import Role

from kubespiffe.agent.issuer_client import X509Result, fetch_x509
from kubespiffe.devenv.stack import NAMESPACE, Kubespiffed
from kubespiffe.devenv.workloads import create_pod, pod_token
from kubespiffe.kube.client import ClusterWorkloadRegistration, WorkloadRegistration
from kubespiffe.spiffe.bundle import parse_pem_certificates


@dataclass
class Running:
    daemon: Kubespiffed
    bundle_pem: bytes

    @property
    def address(self) -> str:
        return self.daemon.address

    @property
    def bundle(self) -> list[x509.Certificate]:
        return parse_pem_certificates(self.bundle_pem)

    @property
    def log(self) -> Path:
        return self.daemon.log

    async def fetch(self, token: str, **kwargs: Any) -> X509Result:
        return await fetch_x509(self.address, token, self.bundle, **kwargs)


async def register(
    kube: AsyncClient,
    name: str,
    spec: Mapping[str, Any],
    namespace: str | None = None,
    ready: bool | None = True,
) -> dict[str, Any]:
    """Create a (Cluster)WorkloadRegistration and wait until kubespiffed reports its Ready status."""
    resource = WorkloadRegistration if namespace else ClusterWorkloadRegistration
    obj = resource(metadata=ObjectMeta(name=name, namespace=namespace), spec=dict(spec))
    await kube.create(obj)
    if ready is None:
        return {}
    return await wait_condition(kube, name, namespace, "True" if ready else "False")


async def wait_condition(
    kube: AsyncClient, name: str, namespace: str | None, status: str, timeout: float = 15.0
) -> dict[str, Any]:
    resource = WorkloadRegistration if namespace else ClusterWorkloadRegistration
    deadline = time.monotonic() + timeout
    while True:
        current = (await kube.get(resource, name, namespace=namespace)).to_dict()
        for condition in (current.get("status") or {}).get("conditions") or []:
            if condition["type"] == "Ready" and condition["status"] == status:
                return dict(condition)
        if time.monotonic() > deadline:
            raise AssertionError(f"{name}: Ready never became {status}; status={current.get('status')}")
        await asyncio.sleep(0.1)


async def unregister(kube: AsyncClient, name: str, namespace: str | None = None) -> None:
    resource = WorkloadRegistration if namespace else ClusterWorkloadRegistration
    try:
        await kube.delete(resource, name, namespace=namespace)
    except ApiError as exc:
        if exc.status.code != 404:
            raise


async def pod_with_token(
    kube: AsyncClient,
    namespace: str,
    name: str,
    service_account: str,
    labels: Mapping[str, str] | None = None,
) -> tuple[Any, str]:
    pod = await create_pod(kube, namespace, name, service_account, labels=labels)
    return pod, await pod_token(kube, pod)


async def allow_secret(kube: AsyncClient, name: str) -> None:
    """The shipped Role names the one authority Secret and its Lease; a test with its own Secret adds both."""
    role = await kube.get(Role, "kubespiffe:kubespiffed", namespace=NAMESPACE)
    for rule in role.rules or []:
        if rule.resources == ["secrets"] and rule.resourceNames:
            rule.resourceNames = [*rule.resourceNames, name]
        if rule.resources == ["leases"] and rule.resourceNames:
            rule.resourceNames = [*rule.resourceNames, f"{name}-leader"]
    await kube.replace(role)


async def wait_events(
    kube: AsyncClient, namespace: str, match: Callable[[Event], bool], timeout: float = 15.0
) -> list[Event]:
    """The Events in `namespace` that `match`, once there is at least one (kubespiffed records an Event
    just after the status it explains, so a test that lists them at once races it)."""
    deadline = time.monotonic() + timeout
    while True:
        found = [e async for e in kube.list(Event, namespace=namespace) if match(e)]
        if found:
            return found
        assert time.monotonic() < deadline, f"no matching Event in {namespace} within {timeout:.0f} s"
        await asyncio.sleep(0.3)
