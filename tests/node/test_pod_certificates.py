"""Pod certificates on the real node, through the chart: the kubelet asks kubespiffed, the pod gets files.

The pods are the documented pod spec (docs/pod-certificates.md, read from there): one container, go-spiffe's
reference client (tools/interop) reading its SVID and bundle from the projected files, no agent, no
sidecar. They do mTLS with pods that use the injected Workload API agent, across `kubespiffe ca rotate`.

The kubelet's own refresh cannot be seen in test time: it re-requests at beginRefreshAt plus up to 5
minutes of jitter, and beginRefreshAt is at least 10 minutes after notBefore (the API's rule), while a
deleted request is only noticed after 10 minutes. The tests check the status fields it refreshes on, and
the kubelet's rewrite of a running pod's files, which a refreshed credential takes the same way, through
the bundle projection after the rotation.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from lightkube import AsyncClient, KubeConfig
from lightkube.resources.certificates_v1beta1 import ClusterTrustBundle
from lightkube.resources.core_v1 import Event, Pod

from kubespiffe.devenv.nodecluster import pod_processes
from kubespiffe.devenv.podcerts import PodCertificateRequest
from tests.node.conftest import TRUST_DOMAIN, Env, record
from tests.node.pods import NODE_TESTS, logs, wait_phase
from tests.node.test_kubespiffe_on_node import (
    app_pod,
    kubespiffe_cli,
    new_namespace,
    output,
    register,
    spiffe_id,
)

pytestmark = NODE_TESTS

DOC = Path(__file__).parents[2] / "docs" / "pod-certificates.md"
DOC_MARKER = "<!-- pod spec used by tests/node/test_pod_certificates.py -->"
SIGNER = "kubespiffe.io/svid"
OWN_BUNDLE = f"{SIGNER.replace('/', ':')}:{TRUST_DOMAIN}"
VOLUME = "spiffe"
MOUNT = "/var/run/spiffe"
FILES = ["-svid-file", f"{MOUNT}/svid.pem", "-trust-bundle-file", f"{MOUNT}/bundle.pem"]


@pytest.fixture(scope="module")
async def kube(env: Env) -> AsyncIterator[AsyncClient]:
    client = AsyncClient(KubeConfig.from_file(env.cluster.kubeconfig), field_manager="kubespiffe-node-tests")
    yield client
    await client.close()


def documented_pod() -> dict[str, Any]:
    """The pod spec docs/pod-certificates.md shows for the local node (the yaml block after the marker)."""
    text = DOC.read_text()
    found = re.search(re.escape(DOC_MARKER) + r"\s*```yaml\n(.*?)```", text, re.DOTALL)
    assert found, f"{DOC} lost its marked pod spec"
    document: dict[str, Any] = yaml.safe_load(found.group(1))
    return document


def pod_certificate_pod(name: str, image: str, account: str, args: list[str], restart: str = "Never") -> Pod:
    """The documented pod with this test's names, image and arguments; volumes and mounts as documented."""
    document = documented_pod()
    (volume,) = document["spec"]["volumes"]
    certificate, bundle = volume["projected"]["sources"]
    assert certificate["podCertificate"]["signerName"] == SIGNER
    assert bundle["clusterTrustBundle"]["labelSelector"]["matchLabels"] == {
        "kubespiffe.io/trust-domain": TRUST_DOMAIN
    }
    assert volume["name"] == VOLUME
    document["metadata"] = {"name": name, "labels": {"app": name}}
    spec = document["spec"]
    spec |= {"serviceAccountName": account, "restartPolicy": restart, "terminationGracePeriodSeconds": 0}
    (app,) = spec["containers"]
    assert app["volumeMounts"] == [{"name": VOLUME, "mountPath": MOUNT, "readOnly": True}]
    app |= {"image": image, "imagePullPolicy": "Never", "args": args}
    return Pod.from_dict(document)


async def requests_for(kube: AsyncClient, namespace: str, pod: str) -> list[Any]:
    return [
        r
        async for r in kube.list(PodCertificateRequest, namespace=namespace)
        if (r.spec or {}).get("podName") == pod
    ]


def condition(request: Any) -> dict[str, Any] | None:
    conditions = (request.status or {}).get("conditions") or []
    return conditions[0] if conditions else None


async def own_bundle(kube: AsyncClient) -> list[x509.Certificate]:
    bundle = await kube.get(ClusterTrustBundle, OWN_BUNDLE)
    return x509.load_pem_x509_certificates(bundle.spec.trustBundle.encode())


def key_id(cert: x509.Certificate) -> bytes:
    return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest


def issuer_key_id(leaf: x509.Certificate) -> bytes:
    aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
    assert aki is not None
    return aki


def uid(pod: Pod) -> str:
    assert pod.metadata is not None and pod.metadata.uid is not None
    return str(pod.metadata.uid)


def pod_files(env: Env, pod: Pod) -> tuple[list[x509.Certificate], list[x509.Certificate]]:
    """The pod's chain (leaf first) and bundle, read where the kubelet writes them on this machine."""
    directory = env.cluster.pod_volume(uid(pod), VOLUME)
    chain = x509.load_pem_x509_certificates((directory / "svid.pem").read_bytes())
    return chain, x509.load_pem_x509_certificates((directory / "bundle.pem").read_bytes())


def der(certs: list[x509.Certificate]) -> set[bytes]:
    return {c.public_bytes(Encoding.DER) for c in certs}


async def running_ip(kube: AsyncClient, name: str, namespace: str) -> tuple[Pod, str]:
    pod = await wait_phase(kube, name, namespace, ("Running",), timeout=90)
    assert pod.status is not None and pod.status.podIP
    return pod, pod.status.podIP


def client_args(ip: str, peer: str, count: int) -> list[str]:
    return [
        "mtls-client",
        "-connect",
        f"{ip}:8443",
        "-authorize",
        peer,
        "-count",
        str(count),
        "-interval",
        "1s",
    ]


async def handshakes(kube: AsyncClient, name: str, namespace: str, timeout: float = 120) -> list[Any]:
    """The results of a finished mtls-client pod; every handshake must have succeeded."""
    await wait_phase(kube, name, namespace, ("Succeeded",), timeout=timeout)
    results: list[Any] = output(await logs(kube, name, namespace, container="app"))["results"]
    failed = [r for r in results if "error" in r]
    assert not failed, f"{name}: {len(failed)} of {len(results)} handshakes failed: {failed[:3]}"
    return results


async def test_pod_gets_its_svid_as_files(env: Env, kube: AsyncClient) -> None:
    """Only the two projections: the file holds exactly the registered SPIFFE ID, go-spiffe verifies its
    chain against the projected bundle, and the request's times are what the kubelet refreshes on."""
    namespace = await new_namespace(kube, inject=False, accounts=("web",))
    await register(kube, namespace, "web", ttl="1m")  # raised to the API's 1 h minimum
    created = time.monotonic()
    pod = pod_certificate_pod("fetch", env.interop_image, "web", ["fetch-files", *FILES])
    await kube.create(pod, namespace=namespace)
    await wait_phase(kube, "fetch", namespace, ("Succeeded",), timeout=60)
    record("pod certificate: pod created -> app exited with its SVID", time.monotonic() - created)
    fetched = output(await logs(kube, "fetch", namespace))
    assert [s["id"] for s in fetched["svids"]] == [spiffe_id(namespace, "web")]
    assert list(fetched["bundles"]) == [TRUST_DOMAIN]

    pod = await kube.get(Pod, "fetch", namespace=namespace)
    assert pod.spec is not None and [c.name for c in pod.spec.containers] == ["app"]
    assert not pod.spec.initContainers, "something was injected into a pod-certificate pod"
    (request,) = await requests_for(kube, namespace, "fetch")
    assert request.spec["signerName"] == SIGNER and request.spec["nodeName"] == env.cluster.node.name
    issued = condition(request)
    assert issued is not None and issued["type"] == "Issued", issued
    status = request.status
    (leaf,) = x509.load_pem_x509_certificates(status["certificateChain"].encode())
    assert str(leaf.serial_number) == fetched["serial"]

    def when(field: str) -> dt.datetime:
        return dt.datetime.fromisoformat(status[field])

    assert when("notBefore") == leaf.not_valid_before_utc and when("notAfter") == leaf.not_valid_after_utc
    # 1 m raised to 1 h from signing; the leaf is backdated a little for clock skew.
    lifetime = when("notAfter") - when("notBefore")
    assert dt.timedelta(hours=1) <= lifetime <= dt.timedelta(hours=1, minutes=1), lifetime
    half_life = when("notBefore") + lifetime / 2
    assert abs(when("beginRefreshAt") - half_life) <= dt.timedelta(seconds=1), status


async def test_mtls_with_agent_pods_across_ca_rotation(env: Env, kube: AsyncClient) -> None:
    """A pod-certificate server and Workload API clients (the injected agent) trust each other, before,
    during and after `kubespiffe ca rotate`: the ClusterTrustBundle has the new CA before it signs, pods
    after activation get credentials under it, and old and new credentials keep working together."""
    files_ns = await new_namespace(kube, inject=False, accounts=("web",))
    agent_ns = await new_namespace(kube, inject=True, accounts=("client",))
    await register(kube, files_ns, "web")
    # 1 h: the agent client keeps its first SVID, under the old CA, through the whole test.
    await register(kube, agent_ns, "client", ttl="1h")
    web_id, client_id = spiffe_id(files_ns, "web"), spiffe_id(agent_ns, "client")
    server_args = ["mtls-server", "-listen", "0.0.0.0:8443", *FILES, "-authorize", f"{client_id},{web_id}"]
    server_args += ["-timeout", "10m"]

    created = time.monotonic()
    await kube.create(
        pod_certificate_pod("web", env.interop_image, "web", server_args, restart="Always"),
        namespace=files_ns,
    )
    web, web_ip = await running_ip(kube, "web", files_ns)
    record("pod certificate: pod created -> Running", time.monotonic() - created)
    assert pod_processes(uid(web)) == ["pause", "spiffe-interop"], "a process besides the app in the pod"
    old_chain, old_bundle = pod_files(env, web)

    await kube.create(
        app_pod("client", env.interop_image, "client", client_args(web_ip, web_id, 40)), namespace=agent_ns
    )
    await wait_phase(kube, "client", agent_ns, ("Running",), timeout=90)
    await asyncio.sleep(3)  # some handshakes under the old CA alone

    before = der(await own_bundle(kube))
    rotate = await kubespiffe_cli(env, "ca", "rotate")
    assert rotate.returncode == 0, rotate.stderr
    rotated = time.monotonic()
    while not (added := [c for c in await own_bundle(kube) if c.public_bytes(Encoding.DER) not in before]):
        assert time.monotonic() - rotated < 20, "the ClusterTrustBundle never got the new CA"
        await asyncio.sleep(0.1)
    published = time.monotonic()
    record("pod certificate: ca rotate -> new CA in the ClusterTrustBundle", published - rotated)
    (new_ca,) = added
    show = (await kubespiffe_cli(env, "ca", "show")).stdout
    assert "prepared" in show, f"the new CA was active before the ClusterTrustBundle had it: {show}"
    while "prepared" in (await kubespiffe_cli(env, "ca", "show")).stdout:
        assert time.monotonic() - rotated < 60, "the new CA never activated"
        await asyncio.sleep(0.5)

    # After activation: a new pod-certificate server's credential chains to the new CA; a new agent
    # pod (new CA too) and the old agent client (old CA) both do mTLS with it.
    await kube.create(
        pod_certificate_pod("web2", env.interop_image, "web", server_args, restart="Always"),
        namespace=files_ns,
    )
    web2, web2_ip = await running_ip(kube, "web2", files_ns)
    new_chain, new_bundle = pod_files(env, web2)
    assert issuer_key_id(new_chain[0]) == key_id(new_ca) != issuer_key_id(old_chain[0])
    assert new_ca.public_bytes(Encoding.DER) in der(new_bundle)
    await kube.create(
        app_pod("client2", env.interop_image, "client", client_args(web2_ip, web_id, 3)), namespace=agent_ns
    )

    # The old server's bundle file: the kubelet rewrites it on its own pod sync, in a running pod.
    while key_id(new_ca) not in {key_id(c) for c in pod_files(env, web)[1]}:
        assert time.monotonic() - published < 150, "the kubelet never wrote the new CA into the running pod"
        await asyncio.sleep(0.5)
    record("pod certificate: new CA -> in a running pod's bundle file", time.monotonic() - published)
    assert pod_files(env, web)[0] == old_chain, "the old server's credential changed"
    # New pod-certificate client -> old server (new CA presented to a pod that learned it from its file).
    await kube.create(
        pod_certificate_pod(
            "files-client", env.interop_image, "web", [*client_args(web_ip, web_id, 3), *FILES]
        ),
        namespace=files_ns,
    )

    old_to_old = await handshakes(kube, "client", agent_ns, timeout=150)
    assert all(r["body"] == f"hello {client_id}" for r in old_to_old)
    assert {r["server_svid_serial"] for r in old_to_old} == {str(old_chain[0].serial_number)}
    new_agent = await handshakes(kube, "client2", agent_ns)
    assert {r["server_svid_serial"] for r in new_agent} == {str(new_chain[0].serial_number)}
    new_files = await handshakes(kube, "files-client", files_ns)
    assert all(r["body"] == f"hello {web_id}" for r in new_files)
    assert len(old_bundle) < len(new_bundle) or der(old_bundle) != der(new_bundle)


async def test_unregistered_pod_is_denied_and_waits(env: Env, kube: AsyncClient) -> None:
    """No registration: the request is Denied with the reason, the pod stays in ContainerCreating, and the
    pod's events say why, as the docs describe; nothing runs for it on the node."""
    namespace = await new_namespace(kube, inject=False, accounts=("stranger",))
    pod = pod_certificate_pod("stranger", env.interop_image, "stranger", ["fetch-files", *FILES])
    await kube.create(pod, namespace=namespace)
    deadline = time.monotonic() + 30
    while not ((found := await requests_for(kube, namespace, "stranger")) and condition(found[0])):
        assert time.monotonic() < deadline, f"the request was not decided: {found}"
        await asyncio.sleep(0.2)
    (request,) = found
    decided = condition(request)
    assert decided is not None
    assert (decided["type"], decided["reason"]) == ("Denied", "NotRegistered"), decided
    assert f"{namespace}/stranger" in decided["message"] or "registration" in decided["message"], decided

    deadline = time.monotonic() + 60
    while True:
        events = [e async for e in kube.list(Event, namespace=namespace)]
        reasons = {(e.reason, e.source.component if e.source else None) for e in events}
        mounts = [e.message or "" for e in events if e.reason == "FailedMount"]
        if ("PodCertificateDenied", "kubespiffed") in reasons and any("denied" in m for m in mounts):
            break
        assert time.monotonic() < deadline, f"events: {[(e.reason, e.message) for e in events]}"
        await asyncio.sleep(0.5)
    # The kubelet's status manager posts the container's status on its own schedule, which can come after
    # the FailedMount event.
    while True:
        current = await kube.get(Pod, "stranger", namespace=namespace)
        assert current.status is not None and current.status.phase == "Pending"
        if current.status.containerStatuses:
            break
        assert time.monotonic() < deadline, f"no container status reported: {current.status}"
        await asyncio.sleep(0.5)
    (waiting,) = current.status.containerStatuses
    assert waiting.state is not None and waiting.state.waiting is not None
    assert waiting.state.waiting.reason == "ContainerCreating"
    # The kubelet makes the sandbox only once the volumes are mounted: nothing runs at all.
    assert pod_processes(uid(current)) == []
