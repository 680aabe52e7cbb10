"""`kubespiffe dev up`: control planes, kubespiffe installed, kubespiffed running, until a signal.

With `--clusters 2` it starts two clusters (trust domains `a` and `b`) and federates them: each gets a
FederatedTrustDomain for the other, bootstrapped with the other's bundle (https_spiffe profile).

Each kubespiffed also serves OIDC discovery on loopback: the issuer URL is in DIR/oidc-issuer and the CA
of its TLS certificate in DIR/oidc-ca.pem (docs/oidc.md).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from lightkube import AsyncClient, KubeConfig
from lightkube.models.meta_v1 import ObjectMeta

from kubespiffe.authority import store
from kubespiffe.devenv.controlplane import ControlPlane, free_port
from kubespiffe.devenv.oidc import enable_oidc
from kubespiffe.devenv.stack import (
    AUTHORITY_SECRET,
    NAMESPACE,
    Kubespiffed,
    authority_bundle_pem,
    install,
    service_account_token,
)
from kubespiffe.kube.client import FederatedTrustDomain
from kubespiffe.spiffe.bundle import Bundle, bundle_to_json
from kubespiffe.spiffe.spiffeid import TrustDomain

LOCAL_PEERS = "--federation-allowed-networks=127.0.0.0/8"
"""Every local cluster's bundle endpoint is on loopback; kubespiffed fetches from there only if allowed."""


@dataclass
class Cluster:
    """One local cluster: a control plane and a kubespiffed, with its files under `directory`."""

    name: str
    trust_domain: str
    directory: Path
    extra_args: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "logs").mkdir(exist_ok=True)
        self.plane = ControlPlane(self.name, log_dir=self.directory / "logs")
        # Local peers' bundle endpoints are on loopback, which kubespiffed refuses unless allowed.
        args = (LOCAL_PEERS, *self.extra_args)
        self.daemon = Kubespiffed(self.plane, trust_domain=self.trust_domain, extra_args=args)

    @property
    def kubeconfig(self) -> Path:
        return self.directory / "kubeconfig"

    def client(self) -> AsyncClient:
        return AsyncClient(KubeConfig.from_file(self.kubeconfig), field_manager="kubespiffe-devenv")

    @property
    def bundle_endpoint(self) -> str:
        return f"https://127.0.0.1:{self.daemon.bundle_port}/"

    def start(self) -> None:
        self.plane.start()
        _write_private(self.kubeconfig, self.plane.admin_kubeconfig())

        async def prepare() -> bytes:
            client = self.client()
            try:
                await install(client)
                oidc = await enable_oidc(client, free_port())
                oidc.write(self.directory)
                self.daemon.extra_args = (*self.daemon.extra_args, *oidc.args())
                self.daemon.start(await service_account_token(client))
                return await authority_bundle_pem(client)
            finally:
                await client.close()

        bundle = asyncio.run(prepare())
        self.daemon.wait_ready(bundle)
        (self.directory / "bundle.pem").write_bytes(bundle)
        (self.directory / "server").write_text(self.daemon.address + "\n")

    def stop(self) -> None:
        self.daemon.stop()
        self.plane.stop()


async def spiffe_bundle(client: AsyncClient, trust_domain: str) -> bytes:
    """A cluster's bundle in SPIFFE format, as `kubespiffe bundle show` prints it."""
    stored = await store.load(client, NAMESPACE, AUTHORITY_SECRET)
    if stored is None:
        raise RuntimeError("the cluster has no authority Secret yet")
    state = stored.state
    bundle = Bundle(
        TrustDomain(trust_domain), tuple(state.trust_bundle()), state.jwt_authorities(), state.sequence
    )
    return bundle_to_json(bundle)


async def federate(client: AsyncClient, trust_domain: str, endpoint_url: str, bootstrap: bytes) -> None:
    """Tell a cluster to trust `trust_domain`: a FederatedTrustDomain bootstrapped with its bundle."""
    await client.create(
        FederatedTrustDomain(
            metadata=ObjectMeta(name=trust_domain.replace(".", "-")),
            spec={
                "trustDomain": trust_domain,
                "bundleEndpointURL": endpoint_url,
                "bundleEndpointProfile": {
                    "type": "https_spiffe",
                    "endpointSPIFFEID": f"spiffe://{trust_domain}/kubespiffe/kubespiffed",
                },
                "trustDomainBundle": bootstrap.decode(),
            },
        )
    )


async def federate_pair(a: Cluster, b: Cluster) -> None:
    clients = a.client(), b.client()
    try:
        bundles = [await spiffe_bundle(c, x.trust_domain) for c, x in zip(clients, (a, b), strict=True)]
        await federate(clients[0], b.trust_domain, b.bundle_endpoint, bundles[1])
        await federate(clients[1], a.trust_domain, a.bundle_endpoint, bundles[0])
    finally:
        for client in clients:
            await client.close()


def dev_up(directory: Path, trust_domain: str, clusters: int = 1) -> int:
    stop = _stop_on_signals()
    if clusters == 1:
        started = [Cluster("dev", trust_domain, directory)]
    else:
        started = [Cluster(name, name, directory / name) for name in ("a", "b")]
    try:
        for cluster in started:
            print(
                f"starting cluster {cluster.name} (logs in {cluster.directory / 'logs'}) ...", file=sys.stderr
            )
            cluster.start()
            print(
                f"kubespiffed serving trust domain {cluster.trust_domain} at {cluster.daemon.address}",
                file=sys.stderr,
            )
        if clusters == 2:
            asyncio.run(federate_pair(*started))
            print("trust domains a and b federated (FederatedTrustDomain in each cluster)", file=sys.stderr)
        print("ready", flush=True)
        stop.wait()
        return 0
    finally:
        for cluster in reversed(started):
            cluster.stop()
        print("stopped", file=sys.stderr, flush=True)


def dev_up_node(directory: Path, trust_domain: str) -> int:
    """`dev up --node`: the real node with kubespiffe from its chart, until SIGINT/SIGTERM; then the host
    is restored (and checked: a leftover is reported and the exit code is 1)."""
    from kubespiffe.devenv.image import ImageError
    from kubespiffe.devenv.node import NodeError
    from kubespiffe.devenv.nodecluster import NAMESPACE, NodeCluster, refuse_if_running

    try:
        refuse_if_running()
    except NodeError as exc:
        print(f"kubespiffe dev up --node: {exc}", file=sys.stderr)
        return 1
    _interrupt_on_signals()
    cluster = NodeCluster(directory, trust_domain)
    started = False
    try:
        cluster.start()
        started = True
        assert cluster.image is not None
        print(
            f"kubespiffe installed with helm in namespace {NAMESPACE} (image {cluster.image.name}); pods in "
            "namespaces labelled kubespiffe.io/inject=enabled get the agent",
            file=sys.stderr,
        )
        print("ready", flush=True)
        while True:
            time.sleep(3600)
    except (NodeError, ImageError) as exc:
        print(f"kubespiffe dev up --node: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        if started:
            cluster.stop()
        try:
            cluster.check_clean()
        except AssertionError as exc:
            print(f"the host is not as it was before: {exc}", file=sys.stderr, flush=True)
            return 1  # a leftover outranks how the run ended
        except RuntimeError:
            pass  # the node never started: nothing to check
        print("stopped; host restored", file=sys.stderr, flush=True)


def _interrupt_on_signals() -> None:
    """SIGINT and SIGTERM both unwind the stack (KeyboardInterrupt), so teardown runs in `finally`."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


class _Stop:
    def __init__(self) -> None:
        self.flag = False

    def wait(self) -> None:
        while not self.flag:
            time.sleep(0.2)


def _stop_on_signals() -> _Stop:
    stop = _Stop()

    def handler(signum: int, frame: object) -> None:
        stop.flag = True

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return stop


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
