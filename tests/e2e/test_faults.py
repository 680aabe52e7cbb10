"""Faults kubespiffe must survive (issue 12), against a dedicated control plane of this module's own.

The scenarios restart kube-apiserver and etcd, so they run on a ControlPlane of their own rather than the
session's; kubespiffed runs as a real process under the shipped RBAC, each scenario with its own authority
Secret. "Workloads" are issuer-API clients (kubespiffe.agent.issuer_client, what the agent runs) in this
process, each with its own pod and pod-bound token, plus real agent processes where the agent's own
behaviour is the point. docs/security.md ("Faults") records what each scenario measured.

What "no request fails that the caches can answer" means here: kubespiffed answers from its watch caches
(pods, ServiceAccounts, registrations), its verified-token cache and its cached cluster JWKS. So while the
API server (or etcd) is down, issuance keeps succeeding for every pod kubespiffed already knows, with a
token it has seen or not (the JWKS verifies a new one locally). A pod created while kubespiffed could not
watch is not in its cache: that call fails with UNAVAILABLE and a sentence saying the API server cannot be
reached (the agent retries), never with an opaque error. Once the API server is back, the watches resume:
a registration deleted meanwhile stops granting and one created meanwhile starts granting.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import json
import os
import random
import signal
import ssl
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from lightkube import AsyncClient, KubeConfig
from lightkube.core.exceptions import ApiError
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.coordination_v1 import Lease
from lightkube.resources.core_v1 import Pod, Secret
from lightkube.types import PatchType
from spiffe._proto import workload_pb2, workload_pb2_grpc

from kubespiffe.agent.issuer_client import IssuerClient, IssuerError, NoIdentity, ServerUnreachable
from kubespiffe.constants import ROTATE_ANNOTATION
from kubespiffe.devenv.controlplane import ControlPlane, free_port
from kubespiffe.devenv.stack import (
    NAMESPACE,
    Kubespiffed,
    agent_command,
    authority_bundle_pem,
    install,
    service_account_token,
)
from kubespiffe.devenv.workloads import create_pod, ensure_namespace, pod_token
from kubespiffe.spiffe.bundle import parse_der_certificates, parse_pem_certificates
from kubespiffe.spiffe.x509svid import X509Svid, id_from_certificate
from tests.e2e.conftest import _runtime_dir
from tests.integration.kubespiffed import allow_secret, register, unregister

pytestmark = pytest.mark.e2e

OUTAGE_SECONDS = 8.0  # how long each restarted component stays down
RECOVERY_BOUND = 15.0  # once it is back, changes made meanwhile take effect within this (retries: 5 s)


@dataclass
class FaultPlane:
    plane: ControlPlane
    kube: AsyncClient
    log_dir: Path
    daemons: list[Kubespiffed] = field(default_factory=list)

    def admin_client(self, server: str) -> AsyncClient:
        """An admin client of `server` (another API server of this control plane)."""
        doc = yaml.safe_load(self.plane.admin_kubeconfig())
        doc["clusters"][0]["cluster"]["server"] = server
        return AsyncClient(KubeConfig.from_dict(doc), field_manager="kubespiffe-tests")

    async def kubespiffed(self, secret: str, *extra: str, wait: bool = True) -> tuple[Kubespiffed, bytes]:
        """A kubespiffed with its own authority Secret (and Lease); returns it and its trust bundle."""
        await allow_secret(self.kube, secret)
        daemon = Kubespiffed(
            self.plane, extra_args=(f"--authority-secret={secret}", "--bundle-configmap=", *extra)
        )
        self.daemons.append(daemon)
        daemon.start(await service_account_token(self.kube))
        bundle = b""
        if wait:
            bundle = await authority_bundle_pem(self.kube, secret=secret)
            await asyncio.to_thread(daemon.wait_ready, bundle)
        return daemon, bundle


@pytest.fixture(scope="module")
async def faults(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[FaultPlane]:
    log_dir = Path(os.environ.get("KUBESPIFFE_TEST_LOGS") or tmp_path_factory.mktemp("faults-logs"))
    plane = ControlPlane("faults", log_dir=log_dir)
    await asyncio.to_thread(plane.start)
    kube = AsyncClient(KubeConfig.from_dict(yaml.safe_load(plane.admin_kubeconfig())))
    try:
        await install(kube)
        state = FaultPlane(plane, kube, log_dir)
        yield state
        for daemon in state.daemons:
            daemon.stop()
    finally:
        await kube.close()
        await asyncio.to_thread(plane.stop)


@pytest.fixture
async def fault_namespace(faults: FaultPlane) -> str:
    name = f"f-{uuid.uuid4().hex[:10]}"
    await ensure_namespace(faults.kube, name)
    return name


@dataclass
class Workload:
    """One pod's side of the issuer API: its token and a client that keeps a channel open, as an agent."""

    name: str
    token: str
    client: IssuerClient
    outcomes: list[tuple[float, str | None]] = field(default_factory=list)

    async def mint(self, token: str | None = None) -> str:
        """The SPIFFE IDs granted (comma-separated); raises IssuerError."""
        result = await self.client.mint_x509(token or self.token)
        return ",".join(str(s.spiffe_id) for s in result.svids)

    async def renew_continuously(self, stop: asyncio.Event, pause: float = 0.1) -> None:
        """Mint again and again, recording (start time, None or the error) for every call."""
        while not stop.is_set():
            started = time.monotonic()
            try:
                await self.mint()
                self.outcomes.append((started, None))
            except IssuerError as exc:
                self.outcomes.append((started, f"{type(exc).__name__}: {exc}"))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), pause)

    @property
    def failures(self) -> list[tuple[float, str | None]]:
        return [o for o in self.outcomes if o[1] is not None]


async def workload(
    kube: AsyncClient, namespace: str, name: str, sa: str, address: str, bundle: bytes
) -> Workload:
    pod = await create_pod(kube, namespace, name, sa)
    client = IssuerClient(address, parse_pem_certificates(bundle))
    return Workload(name, await pod_token(kube, pod), client)


async def until(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> float:
    """Seconds until `check()` is true (polled every 0.2 s); fails after `timeout`."""
    started = time.monotonic()
    while not await check():
        assert time.monotonic() - started < timeout, f"{what}: not within {timeout:.0f} s"
        await asyncio.sleep(0.2)
    return time.monotonic() - started


async def granted(w: Workload) -> bool:
    try:
        await w.mint()
    except NoIdentity:
        return False
    except IssuerError:
        return False
    return True


async def refused(w: Workload) -> bool:
    try:
        await w.mint()
    except NoIdentity:
        return True
    except IssuerError:
        return False
    return False


async def retry_write(write: Callable[[], Awaitable[Any]], timeout: float = 60.0) -> float:
    """Retry a write until the control plane accepts it (etcd just came back); seconds it took."""
    started = time.monotonic()
    while True:
        try:
            await write()
            return time.monotonic() - started
        except Exception:
            if time.monotonic() - started > timeout:
                raise
            await asyncio.sleep(0.2)


def report(line: str) -> None:
    """Measurements go to the test output (pytest -s) for docs/security.md."""
    print(f"\n[faults] {line}", flush=True)


async def test_kube_apiserver_restart_during_continuous_issuance(
    faults: FaultPlane, fault_namespace: str
) -> None:
    ns, kube = fault_namespace, faults.kube
    daemon, bundle = await faults.kubespiffed(f"faults-api-{uuid.uuid4().hex[:6]}")
    await register(kube, "keep", {"serviceAccountNames": ["keep"]}, ns)
    await register(kube, "gone", {"serviceAccountNames": ["gone"]}, ns)
    keep = await workload(kube, ns, "keep-1", "keep", daemon.address, bundle)
    gone = await workload(kube, ns, "gone-1", "gone", daemon.address, bundle)
    fresh = await workload(kube, ns, "fresh-1", "fresh", daemon.address, bundle)
    assert await granted(keep) and await granted(gone) and await refused(fresh)

    # The cluster's other API server (an HA control plane) takes the writes made while kubespiffed's
    # API server is down.
    other_port = free_port()
    other_url = await asyncio.to_thread(faults.plane.start_apiserver, other_port)
    other = faults.admin_client(other_url)
    stop = asyncio.Event()
    renewing = asyncio.create_task(keep.renew_continuously(stop))
    try:
        await asyncio.to_thread(faults.plane.stop_apiserver)
        down_at = time.monotonic()
        # Answered from the caches: a token kubespiffed has never seen, for a pod it knows.
        unseen = await pod_token(other, await other.get(Pod, "keep-1", namespace=ns))
        assert await keep.mint(unseen) == f"spiffe://example.org/ns/{ns}/sa/keep"
        # A deletion kubespiffed cannot hear of yet: it still grants until its watch is back.
        await unregister(other, "gone", ns)
        await register(other, "fresh", {"serviceAccountNames": ["fresh"]}, ns, ready=None)
        assert await granted(gone) and await refused(fresh)
        # A pod created meanwhile is not in the caches: a clear, retryable error.
        late = await workload(other, ns, "late-1", "keep", daemon.address, bundle)
        with pytest.raises(ServerUnreachable, match="API server"):
            await late.mint()
        await asyncio.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - down_at)))
        await asyncio.to_thread(faults.plane.start_apiserver)
        back_at = time.monotonic()
        report(f"kube-apiserver down {back_at - down_at:.1f} s (stopped, started again, ready)")
        deleted = await until(lambda: refused(gone), RECOVERY_BOUND, "deleted registration still grants")
        created = await until(lambda: granted(fresh), RECOVERY_BOUND, "created registration never grants")
        new_pod = await until(lambda: granted(late), RECOVERY_BOUND, "the pod created meanwhile")
        report(
            f"after kube-apiserver is ready: deleted registration refused after {deleted:.1f} s, "
            f"created one granted {created:.1f} s later, the new pod {new_pod:.1f} s later"
        )
        await asyncio.sleep(2)  # renewals go on after the recovery too
    finally:
        stop.set()
        await renewing
        await other.close()
        await asyncio.to_thread(faults.plane.stop_apiserver, other_port)
    assert daemon.process is not None and daemon.process.poll() is None, "kubespiffed exited"
    report(f"kube-apiserver restart: {len(keep.outcomes)} renewals, {len(keep.failures)} failed")
    assert keep.failures == []


async def test_etcd_restart_during_continuous_issuance(faults: FaultPlane, fault_namespace: str) -> None:
    ns, kube = fault_namespace, faults.kube
    daemon, bundle = await faults.kubespiffed(f"faults-etcd-{uuid.uuid4().hex[:6]}")
    await register(kube, "keep", {"serviceAccountNames": ["keep"]}, ns)
    await register(kube, "gone", {"serviceAccountNames": ["gone"]}, ns)
    keep = await workload(kube, ns, "keep-1", "keep", daemon.address, bundle)
    gone = await workload(kube, ns, "gone-1", "gone", daemon.address, bundle)
    fresh = await workload(kube, ns, "fresh-1", "fresh", daemon.address, bundle)
    unseen = await pod_token(kube, await kube.get(Pod, "keep-1", namespace=ns))
    assert await granted(keep) and await granted(gone) and await refused(fresh)

    stop = asyncio.Event()
    renewing = asyncio.create_task(keep.renew_continuously(stop))
    try:
        await asyncio.to_thread(faults.plane.stop_etcd)
        down_at = time.monotonic()
        assert await keep.mint(unseen) == f"spiffe://example.org/ns/{ns}/sa/keep"
        await asyncio.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - down_at)))
        await asyncio.to_thread(faults.plane.start_etcd)
        back_at = time.monotonic()
        # Nothing can change while etcd is down; what changes right after must reach kubespiffed, so its
        # watches did not silently die with etcd.
        writable = await retry_write(lambda: unregister(kube, "gone", ns))
        await register(kube, "fresh", {"serviceAccountNames": ["fresh"]}, ns, ready=None)
        report(
            f"etcd down {back_at - down_at:.1f} s; the API server took writes {writable:.1f} s after "
            "etcd was back"
        )
        deleted = await until(lambda: refused(gone), RECOVERY_BOUND, "deleted registration still grants")
        created = await until(lambda: granted(fresh), RECOVERY_BOUND, "created registration never grants")
        report(
            f"after etcd: deletion refused {deleted:.1f} s after the write, creation granted "
            f"{created:.1f} s later"
        )
        await asyncio.sleep(2)
    finally:
        stop.set()
        await renewing
    assert daemon.process is not None and daemon.process.poll() is None, "kubespiffed exited"
    report(f"etcd restart: {len(keep.outcomes)} renewals, {len(keep.failures)} failed")
    assert keep.failures == []


class FailoverProxy:
    """The Service in front of kubespiffed's replicas: each TCP connection goes to the first backend that
    accepts it, starting from the next one in turn (so both replicas serve, and a dead one is skipped);
    `in_order`: always from the first (every connection to it while it lives)."""

    def __init__(self, backends: list[int], in_order: bool = False) -> None:
        self.backends = backends
        self._in_order = in_order
        self._turn = 0
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._turn += 0 if self._in_order else 1
        order = (
            self.backends[self._turn % len(self.backends) :]
            + self.backends[: self._turn % len(self.backends)]
        )
        for port in order:
            try:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                continue
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
            return
        writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


@dataclass
class Agent:
    process: subprocess.Popen[bytes]
    socket: Path
    log: Path

    def leaf(self) -> x509.Certificate | None:
        """The X.509-SVID the agent serves now (None: none, or the agent did not answer)."""
        try:
            with grpc.insecure_channel(f"unix://{self.socket}") as channel:
                stream = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel).FetchX509SVID(
                    workload_pb2.X509SVIDRequest(), metadata=(("workload.spiffe.io", "true"),), timeout=2
                )
                response = next(iter(stream))
                stream.cancel()
        except grpc.RpcError:
            return None
        if not response.svids:
            return None
        return parse_der_certificates(response.svids[0].x509_svid)[0]

    def authorities(self) -> set[bytes]:
        """The DER X.509 authorities of the trust domain's bundle the agent serves now."""
        with grpc.insecure_channel(f"unix://{self.socket}") as channel:
            stream = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel).FetchX509SVID(
                workload_pb2.X509SVIDRequest(), metadata=(("workload.spiffe.io", "true"),), timeout=2
            )
            response = next(iter(stream))
            stream.cancel()
        return {c.public_bytes(Encoding.DER) for c in parse_der_certificates(response.svids[0].bundle)}


async def start_agent(kube: AsyncClient, ns: str, name: str, sa: str, server: str, bundle: bytes) -> Agent:
    """`kubespiffe agent` for a new pod, as its sidecar runs it; waits until it serves an SVID."""
    pod = await create_pod(kube, ns, name, sa)
    directory = _runtime_dir()
    token, bundle_file, socket = directory / "token", directory / "bundle.pem", directory / "agent.sock"
    token.write_text(await pod_token(kube, pod))
    bundle_file.write_bytes(bundle)
    log = directory / "agent.log"
    with log.open("ab") as out:
        process = subprocess.Popen(  # noqa: ASYNC220 (a long-running child, not awaited)
            agent_command(server, token, bundle_file, socket), stdout=out, stderr=subprocess.STDOUT
        )
    agent = Agent(process, socket, log)
    deadline = time.monotonic() + 30
    while not socket.exists() or await asyncio.to_thread(agent.leaf) is None:
        assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
        await asyncio.sleep(0.2)
    return agent


@dataclass
class SecretHistory:
    """Every version of an authority Secret, as a watch delivers them: (event, resourceVersion, slots)."""

    versions: list[tuple[str, str, list[tuple[str, str]]]] = field(default_factory=list)

    async def follow(self, kube: AsyncClient, name: str) -> None:
        async for event, secret in kube.watch(Secret, namespace=NAMESPACE, fields={"metadata.name": name}):
            assert secret.metadata is not None
            document = json.loads(base64.b64decode((secret.data or {})["authority.json"]))
            slots = [(slot["id"], slot["state"]) for slot in document["slots"]]
            self.versions.append((event, str(secret.metadata.resourceVersion), slots))

    def slot_ids(self) -> list[str]:
        """Every slot id ever stored, in the order it first appeared."""
        seen: list[str] = []
        for _, _, slots in self.versions:
            seen += [slot for slot, _ in slots if slot not in seen]
        return seen

    def active(self) -> str:
        return next(slot for slot, state in self.versions[-1][2] if state == "active")


async def rotate(kube: AsyncClient, secret: str, history: SecretHistory, timeout: float = 30.0) -> str:
    """Ask for a rotation (as `kubespiffe ca rotate`) and wait until the new slot signs; returns its id."""
    before = history.active()
    annotation = {ROTATE_ANNOTATION: dt.datetime.now(dt.UTC).isoformat()}
    await kube.patch(
        Secret,
        secret,
        Secret(metadata=ObjectMeta(annotations=annotation)),
        namespace=NAMESPACE,
        patch_type=PatchType.MERGE,
    )
    await until(_true(lambda: history.active() != before), timeout, "the rotation never activated")
    return history.active()


def _true(check: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def wrapped() -> bool:
        return check()

    return wrapped


async def lease_holder(kube: AsyncClient, secret: str) -> str:
    """The Lease's holder; "" while nobody holds it or it does not exist yet."""
    try:
        lease = await kube.get(Lease, f"{secret}-leader", namespace=NAMESPACE)
    except ApiError as exc:
        if exc.status.code != 404:
            raise
        return ""
    return (lease.spec.holderIdentity if lease.spec else None) or ""


async def test_kubespiffed_sigkilled_with_two_replicas(faults: FaultPlane, fault_namespace: str) -> None:
    ns, kube = fault_namespace, faults.kube
    secret = f"faults-ha-{uuid.uuid4().hex[:6]}"
    history = SecretHistory()
    following = asyncio.create_task(history.follow(kube, secret))
    # Both replicas start at once, racing to create the authority.
    flags = ("--bundle-refresh-hint=1s", "--x509-svid-ttl=1m")
    replicas = [(await faults.kubespiffed(secret, *flags, wait=False))[0] for _ in range(2)]
    bundle = await authority_bundle_pem(kube, secret=secret)
    for replica in replicas:
        await asyncio.to_thread(replica.wait_ready, bundle)

    # Ready means able to issue, not leading: the authority Secret is created by the first replica to start
    # (optimistic concurrency, no Lease needed), and the Lease once appeared after both were ready.
    async def held() -> bool:
        return bool(await lease_holder(kube, secret))

    await until(held, 15, "no replica holds the Lease")
    holder = await lease_holder(kube, secret)
    by_pid = {str(r.process.pid): r for r in replicas if r.process is not None}
    leader = next(r for pid, r in by_pid.items() if holder.endswith(f"-{pid}"))
    survivor = next(r for r in replicas if r is not leader)
    # The agent's connection goes to the leader, which is then killed under its identity stream.
    proxy = FailoverProxy([leader.port, survivor.port], in_order=True)
    await proxy.start()
    await register(kube, "ha", {"serviceAccountNames": ["ha"]}, ns)
    agent = await start_agent(kube, ns, "ha-1", "ha", f"127.0.0.1:{proxy.port}", bundle)
    gaps: list[str] = []
    serials: list[tuple[float, int]] = []
    watching = True

    def watch_agent() -> None:
        while watching:
            leaf = agent.leaf()
            now = time.monotonic()
            if leaf is None:
                gaps.append(f"{now:.1f}: no SVID")
            elif leaf.not_valid_after_utc <= dt.datetime.now(dt.UTC):
                gaps.append(f"{now:.1f}: expired SVID")
            elif not serials or serials[-1][1] != leaf.serial_number:
                serials.append((now, leaf.serial_number))
            time.sleep(0.25)

    watcher = asyncio.create_task(asyncio.to_thread(watch_agent))
    try:
        assert leader.process is not None
        leader.process.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()

        async def moved() -> bool:
            return (await lease_holder(kube, secret)) not in ("", holder)

        took = await until(moved, 30, "the Lease never moved")
        report(
            f"SIGKILL of the leader: the Lease moved to the other replica after {took:.1f} s (duration 15 s)"
        )
        assert took <= 15 + 1, f"the Lease moved after {took:.1f} s, more than its 15 s duration"

        # Rotation resumes on the new leader: it prepares, publishes and activates a new slot.
        first = history.active()
        new_slot = await rotate(kube, secret, history)
        assert new_slot != first
        # The agent's identity stream, broken by the kill, came back and delivers the rotated bundle (it
        # once ended for good here, and the agent served the old bundle only: issue 8).
        published = {
            c.public_bytes(Encoding.DER)
            for c in parse_pem_certificates(await authority_bundle_pem(kube, secret=secret))
        }
        await until(
            _true(lambda: agent.authorities() == published),
            10,
            "the agent never served the rotated bundle after the kill",
        )
        # The agent renews through the survivor (its SVIDs last 1 minute, renewed at half-life).
        await until(
            _true(lambda: any(at > killed_at for at, _ in serials)),
            45,
            "the agent never renewed after the kill",
        )
        renewed = next(at for at, _ in serials if at > killed_at) - killed_at
        report(f"the agent's first renewal after the kill: {renewed:.1f} s; SVID gaps: {len(gaps)}")
        assert survivor.process is not None and survivor.process.poll() is None
    finally:
        watching = False
        await watcher
        following.cancel()
        await proxy.close()
        agent.process.terminate()
        agent.process.wait(10)
    assert gaps == [], f"the agent had no valid SVID at times: {gaps[:5]}"
    # No second CA, ever: one Secret creation holding one slot, then exactly one new slot per rotation,
    # and never two slots signing at once.
    assert [event for event, _, _ in history.versions].count("ADDED") == 1
    assert len(history.versions[0][2]) == 1
    assert history.slot_ids() == [history.versions[0][2][0][0], new_slot]
    assert all(sum(state == "active" for _, state in slots) == 1 for _, _, slots in history.versions)
    report(f"authority Secret history: {len(history.versions)} versions, slots {len(history.slot_ids())}")


@dataclass(frozen=True)
class Credentials:
    """A workload's X.509-SVID (files, for ssl) and the bundle it trusts, as of its last renewal."""

    spiffe_id: str
    cert_file: Path
    key_file: Path
    bundle_pem: str


@dataclass
class Renewer:
    """A workload that renews its SVID continuously and, after each renewal, does an mTLS handshake with
    another workload's current SVID (each side verifying the other against its own bundle)."""

    workload: Workload
    directory: Path
    credentials: Credentials | None = None
    handshakes: int = 0
    failed_handshakes: list[str] = field(default_factory=list)

    async def run(self, peers: list[Renewer], stop: asyncio.Event, rng: random.Random) -> None:
        w = self.workload
        while not stop.is_set():
            started = time.monotonic()
            try:
                result = await w.client.mint_x509(w.token)
                w.outcomes.append((started, None))
                self._keep(result.svids[0], result.bundle)
            except IssuerError as exc:
                w.outcomes.append((started, f"{type(exc).__name__}: {exc}"))
            peer = rng.choice(peers)
            if self.credentials is not None and peer.credentials is not None:
                self.handshakes += 1
                error = handshake(self.credentials, peer.credentials)
                if error is not None:
                    self.failed_handshakes.append(f"{w.name} -> {peer.workload.name}: {error}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), rng.uniform(0.5, 1.5))

    def _keep(self, svid: X509Svid, bundle: tuple[x509.Certificate, ...]) -> None:
        version = uuid.uuid4().hex[:8]
        cert_file, key_file = self.directory / f"{version}.crt", self.directory / f"{version}.key"
        cert_file.write_bytes(b"".join(c.public_bytes(Encoding.PEM) for c in svid.chain))
        key = svid.private_key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
        key_file.write_bytes(key)
        bundle_pem = b"".join(c.public_bytes(Encoding.PEM) for c in bundle).decode()
        old = self.credentials
        self.credentials = Credentials(str(svid.spiffe_id), cert_file, key_file, bundle_pem)
        if old is not None:  # handshakes run synchronously: nothing reads the old files any more
            old.cert_file.unlink()
            old.key_file.unlink()


def handshake(client: Credentials, server: Credentials) -> str | None:
    """A mutual TLS handshake in memory; None when both sides accepted each other, else the error."""
    client_context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_context.check_hostname = False  # SPIFFE: the peer's ID is checked below, not a host name
    client_context.load_verify_locations(cadata=client.bundle_pem)
    client_context.load_cert_chain(client.cert_file, client.key_file)
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.verify_mode = ssl.CERT_REQUIRED
    server_context.load_verify_locations(cadata=server.bundle_pem)
    server_context.load_cert_chain(server.cert_file, server.key_file)
    client_in, client_out, server_in, server_out = (ssl.MemoryBIO() for _ in range(4))
    tls_client = client_context.wrap_bio(client_in, client_out)
    tls_server = server_context.wrap_bio(server_in, server_out, server_side=True)
    try:
        for _ in range(10):
            pending = False
            for side in (tls_client, tls_server):
                try:
                    side.do_handshake()
                except ssl.SSLWantReadError:
                    pending = True
            server_in.write(client_out.read())
            client_in.write(server_out.read())
            if not pending:
                break
        else:
            return "the handshake did not finish"
    except ssl.SSLError as exc:
        return str(exc)
    peer = tls_client.getpeercert(binary_form=True)
    if peer is None or str(id_from_certificate(x509.load_der_x509_certificate(peer))) != server.spiffe_id:
        return "the server's certificate does not carry its SPIFFE ID"
    return None


async def bounded_gather(count: int, make: Callable[[int], Awaitable[Any]], limit: int = 10) -> list[Any]:
    gate = asyncio.Semaphore(limit)

    async def one(i: int) -> Any:
        async with gate:
            return await make(i)

    return list(await asyncio.gather(*(one(i) for i in range(count))))


def go_spiffe(interop: Path, agent: Agent, *args: str) -> subprocess.Popen[str]:
    """tools/interop (go-spiffe v2) on the agent's socket, as a workload in the agent's pod."""
    env = {**os.environ, "SPIFFE_ENDPOINT_SOCKET": f"unix://{agent.socket}"}
    return subprocess.Popen(
        [str(interop), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


FLEET = 50  # workloads renewing in this process, each its own pod and token
GO_CONNECTIONS = 120  # go-spiffe mTLS connections, one every 250 ms: they span the three rotations


async def test_three_ca_rotations_while_fifty_workloads_renew(
    faults: FaultPlane, fault_namespace: str, interop: Path
) -> None:
    ns, kube = fault_namespace, faults.kube
    secret = f"faults-rot-{uuid.uuid4().hex[:6]}"
    history = SecretHistory()
    following = asyncio.create_task(history.follow(kube, secret))
    daemon, bundle = await faults.kubespiffed(secret, "--bundle-refresh-hint=1s", "--x509-svid-ttl=1m")
    await register(kube, "fleet", {"serviceAccountNames": ["fleet"]}, ns)
    await register(kube, "mesh", {"serviceAccountNames": ["mesh-server", "mesh-client"]}, ns)
    workloads = await bounded_gather(
        FLEET, lambda i: workload(kube, ns, f"fleet-{i}", "fleet", daemon.address, bundle)
    )
    fleet = [Renewer(w, _runtime_dir()) for w in workloads]
    server = await start_agent(kube, ns, "mesh-server-1", "mesh-server", daemon.address, bundle)
    client = await start_agent(kube, ns, "mesh-client-1", "mesh-client", daemon.address, bundle)
    server_id, client_id = (f"spiffe://example.org/ns/{ns}/sa/mesh-{side}" for side in ("server", "client"))
    mtls_server = go_spiffe(interop, server, "mtls-server", "-authorize", client_id, "-timeout", "300s")
    assert mtls_server.stdout is not None
    listening = json.loads(await asyncio.to_thread(mtls_server.stdout.readline))["listening"]
    stop = asyncio.Event()
    rng = random.Random(12)
    renewing = [asyncio.create_task(r.run(fleet, stop, rng)) for r in fleet]
    go_args = ("-connect", listening, "-authorize", server_id, "-interval", "250ms", "-timeout", "300s")
    mtls_client = go_spiffe(interop, client, "mtls-client", "-count", str(GO_CONNECTIONS), *go_args)
    try:
        await asyncio.sleep(3)  # every workload holds an SVID before the first rotation
        started = time.monotonic()
        slots = [history.active()]
        for _ in range(3):
            slots.append(await rotate(kube, secret, history))
        rotated = time.monotonic() - started
        go_out, go_err = await asyncio.wait_for(asyncio.to_thread(mtls_client.communicate), 90)
    finally:
        stop.set()
        await asyncio.gather(*renewing)
        for process in (mtls_client, mtls_server, server.process, client.process):
            if process.poll() is None:
                process.terminate()
                await asyncio.to_thread(process.wait, 10)
        following.cancel()
    assert len(set(slots)) == 4, "three rotations: four CAs, each one new"
    mints = sum(len(r.workload.outcomes) for r in fleet)
    failed_mints = [f for r in fleet for f in r.workload.failures]
    handshakes = sum(r.handshakes for r in fleet)
    failed = [f for r in fleet for f in r.failed_handshakes]
    assert mtls_client.returncode == 0, go_err
    go_results = json.loads(go_out.strip().splitlines()[-1])["results"]
    go_failed = [r for r in go_results if "error" in r]
    report(
        f"3 CA rotations in {rotated:.1f} s; {FLEET} issuer-API workloads: {mints} renewals "
        f"({len(failed_mints)} failed), {handshakes} mTLS handshakes between them ({len(failed)} failed); "
        f"2 agents with go-spiffe: {len(go_results)} mTLS connections ({len(go_failed)} failed)"
    )
    assert failed_mints == [] and failed == [] and go_failed == [], (
        failed_mints[:3],
        failed[:3],
        go_failed[:3],
    )
    assert handshakes >= FLEET * 10 and len(go_results) == GO_CONNECTIONS
