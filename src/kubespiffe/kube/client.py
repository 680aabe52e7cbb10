"""Kubernetes client setup (lightkube) and the kubespiffe.io resource classes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lightkube import AsyncClient, KubeConfig
from lightkube.generic_resource import create_global_resource, create_namespaced_resource

from kubespiffe.constants import GROUP, VERSION

WorkloadRegistration = create_namespaced_resource(
    GROUP, VERSION, "WorkloadRegistration", "workloadregistrations"
)
ClusterWorkloadRegistration = create_global_resource(
    GROUP, VERSION, "ClusterWorkloadRegistration", "clusterworkloadregistrations"
)
FederatedTrustDomain = create_global_resource(GROUP, VERSION, "FederatedTrustDomain", "federatedtrustdomains")


def load_config(kubeconfig: str | Path | None) -> KubeConfig:
    """A kubeconfig file when given, else the in-cluster ServiceAccount, else $KUBECONFIG / ~/.kube/config."""
    if kubeconfig:
        return KubeConfig.from_file(kubeconfig)
    return KubeConfig.from_env()


def make_client(config: KubeConfig, field_manager: str = "kubespiffed") -> AsyncClient:
    return AsyncClient(config, field_manager=field_manager, trust_env=False)


async def get_raw_json(client: AsyncClient, path: str) -> Any:
    """GET a non-resource path (e.g. /openid/v1/jwks) with the client's credentials.

    lightkube has no public call for non-resource URLs; its httpx client already carries the server
    address, CA and credentials, so this is the one place that reaches for it.
    """
    http = client._client._client
    response = await http.get(path)
    response.raise_for_status()
    return json.loads(response.content)
