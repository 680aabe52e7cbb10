"""The agent's failure paths (issue 12), each through the agent process, kubespiffed and the API server.

Identity lost and regained, the pod deleted, the stream's token expiring, kubespiffed gone while the SVIDs
run out, very short JWT lifetimes, FetchJWTSVID's status codes, the JWT-SVID cache's bound, the socket mode.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse
from lightkube import AsyncClient
from lightkube.resources.core_v1 import Pod
from spiffe._proto import workload_pb2, workload_pb2_grpc

from kubespiffe.constants import JWT_AUDIENCE_MAX_COUNT, JWT_AUDIENCE_MAX_LENGTH
from kubespiffe.devenv.controlplane import ControlPlane
from kubespiffe.devenv.stack import Kubespiffed, agent_command, service_account_token
from kubespiffe.devenv.workloads import create_pod, pod_token
from tests.e2e.conftest import AgentFactory, AgentProcess, _runtime_dir
from tests.integration.kubespiffed import Running, register, unregister

pytestmark = pytest.mark.e2e

HEADER = (("workload.spiffe.io", "true"),)
UPSTREAM = "kubespiffe.upstream"

Launcher = Callable[..., Awaitable[AgentProcess]]
TokenMaker = Callable[[Pod], Awaitable[str]]


async def _probe(agent: AgentProcess, *flags: str) -> int:
    command = [sys.executable, "-m", "kubespiffe.cli.main", "probe", "--socket", str(agent.socket), *flags]
    result = await asyncio.to_thread(subprocess.run, command, capture_output=True, check=False)
    return result.returncode


async def _eventually(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.2)


@pytest.fixture
async def launch(kube: AsyncClient, kubespiffed: Running, namespace: str) -> AsyncIterator[Launcher]:
    """`kubespiffe agent` for a new pod with any extra flags, and a token of the test's choosing."""
    started: list[AgentProcess] = []

    async def start(
        name: str, sa: str, *extra: str, token: TokenMaker | None = None, server: str | None = None
    ) -> AgentProcess:
        pod = await create_pod(kube, namespace, name, sa)
        directory = _runtime_dir()
        (directory / "token").write_text(await (token or (lambda p: pod_token(kube, p)))(pod))
        (directory / "bundle.pem").write_bytes(kubespiffed.bundle_pem)
        socket = directory / "agent.sock"
        log = kubespiffed.daemon.plane.log_dir / f"agent-{namespace}-{name}.log"
        args = agent_command(
            server or kubespiffed.address, directory / "token", directory / "bundle.pem", socket, *extra
        )
        write_dir = Path(extra[extra.index("--write-dir") + 1]) if "--write-dir" in extra else None
        with log.open("ab") as out:
            process = subprocess.Popen(  # noqa: ASYNC220 (a long-running child, not awaited)
                args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        agent = AgentProcess(process, socket, log, write_dir, pod)
        started.append(agent)

        async def serving() -> bool:
            assert process.poll() is None, f"agent exited: {log.read_text()[-2000:]}"
            return socket.exists() and await _probe(agent) == 0

        await _eventually(serving, 20, f"agent never served an SVID: {log.read_text()[-2000:]}")
        return agent

    yield start
    for agent in started:
        agent.stop()


def _workload(channel: grpc.aio.Channel) -> workload_pb2_grpc.SpiffeWorkloadAPIStub:
    return workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)


async def _x509_stream(channel: grpc.aio.Channel) -> Any:
    """An open FetchX509SVID stream whose first message (an SVID) has arrived."""
    call = _workload(channel).FetchX509SVID(workload_pb2.X509SVIDRequest(), metadata=HEADER)
    assert (await call.read()).svids
    return call


async def _end_of(call: Any) -> grpc.StatusCode:
    """Read a stream to its end; the status it ended with."""
    eof = grpc.aio.EOF  # type: ignore[attr-defined]  # in grpc.aio, missing from its type stubs
    try:
        while await call.read() is not eof:
            pass
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


@contextlib.asynccontextmanager
async def _health(agent: AgentProcess, service: str) -> AsyncIterator[list[str]]:
    """Every status the agent's health service reports for `service` (Watch sends each change)."""
    seen: list[str] = []
    async with grpc.aio.insecure_channel(agent.address) as channel:
        # The agent's health.proto is grpclib's (one copy per process: grpcio-health-checking's would clash).
        watch = channel.unary_stream(
            "/grpc.health.v1.Health/Watch",
            request_serializer=HealthCheckRequest.SerializeToString,
            response_deserializer=HealthCheckResponse.FromString,
        )
        call = watch(HealthCheckRequest(service=service))

        async def collect() -> None:
            async for response in call:
                seen.append(HealthCheckResponse.ServingStatus.Name(response.status))

        task = asyncio.create_task(collect())
        try:
            yield seen
        finally:
            call.cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                await task


async def _fetch_jwt(agent: AgentProcess, *audience: str) -> tuple[grpc.StatusCode, str]:
    """FetchJWTSVID's status, and the token on success."""
    async with grpc.aio.insecure_channel(agent.address) as channel:
        try:
            response = await _workload(channel).FetchJWTSVID(
                workload_pb2.JWTSVIDRequest(audience=list(audience)), metadata=HEADER, timeout=15
            )
        except grpc.aio.AioRpcError as exc:
            return exc.code(), exc.details() or ""
        return grpc.StatusCode.OK, response.svids[0].svid


def _claims(token: str) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return claims


async def test_a_regained_identity_is_served_within_seconds(
    kube: AsyncClient, namespace: str, launch: Launcher
) -> None:
    await register(kube, "comeback", {"serviceAccountNames": ["comeback"]}, namespace)
    agent = await launch("comeback-1", "comeback")
    async with grpc.aio.insecure_channel(agent.address) as channel:
        stream = await _x509_stream(channel)
        await unregister(kube, "comeback", namespace)
        assert await asyncio.wait_for(_end_of(stream), 20) == grpc.StatusCode.PERMISSION_DENIED
        await register(kube, "comeback", {"serviceAccountNames": ["comeback"]}, namespace)
        regained = time.monotonic()

        async def serving() -> bool:
            return await _probe(agent) == 0

        await _eventually(serving, 15, f"identity not served again: {agent.log.read_text()[-1500:]}")
        await _x509_stream(channel)
    print(f"identity served again {time.monotonic() - regained:.1f}s after the registration came back")


async def test_pod_deletion_is_identity_loss_not_upstream_down(
    kube: AsyncClient, namespace: str, launch: Launcher
) -> None:
    await register(kube, "doomed", {"serviceAccountNames": ["doomed"]}, namespace)
    agent = await launch("doomed-1", "doomed")
    async with (
        _health(agent, UPSTREAM) as upstream,
        _health(agent, "") as svid,
        grpc.aio.insecure_channel(agent.address) as channel,
    ):
        stream = await _x509_stream(channel)
        await kube.delete(Pod, "doomed-1", namespace=namespace, grace_period=0)
        assert await asyncio.wait_for(_end_of(stream), 20) == grpc.StatusCode.PERMISSION_DENIED
        await asyncio.sleep(2)  # the bundle stream's reconnects, had they been counted as an outage
        assert svid[-1] == "NOT_SERVING", svid
        assert upstream and "NOT_SERVING" not in upstream, (
            f"kubespiffed answered (it refused the token); upstream went {upstream}"
        )


async def test_upstream_stays_serving_when_the_stream_token_expires(
    control_plane: ControlPlane, kube: AsyncClient, namespace: str, launch: Launcher
) -> None:
    """The API server does not issue tokens under 10 minutes: the first token is the pod's own, re-signed
    with the API server's key to expire in 15 s; the kubelet's refresh is the file rewritten meanwhile."""
    await register(kube, "shortlived", {"serviceAccountNames": ["shortlived"]}, namespace)
    signing_key = serialization.load_pem_private_key(control_plane.service_account_key.read_bytes(), None)
    expires = int(time.time()) + 15

    async def short_token(pod: Pod) -> str:
        token = await pod_token(kube, pod)
        claims = {**_claims(token), "exp": expires}
        kid = jwt.get_unverified_header(token)["kid"]
        return jwt.encode(claims, signing_key, algorithm="RS256", headers={"kid": kid})  # type: ignore[arg-type]

    agent = await launch("shortlived-1", "shortlived", token=short_token)
    async with _health(agent, UPSTREAM) as upstream:
        await _eventually(lambda: _true(upstream == ["SERVING"]), 5, f"upstream not serving: {upstream}")
        (agent.socket.parent / "token").write_text(await pod_token(kube, agent.pod))
        # kubespiffed re-checks the stream's token every 5 s and ends the stream once it has expired.
        await asyncio.sleep(max(0.0, expires - time.time()) + 8)
    assert "token no longer valid" in agent.log.read_text(), "the stream was never ended for its token"
    assert upstream == ["SERVING"], f"upstream flapped when the stream's token expired: {upstream}"


async def _true(value: bool) -> bool:
    return value


async def test_expired_svids_are_withdrawn_while_kubespiffed_is_down(
    control_plane: ControlPlane,
    kube: AsyncClient,
    kubespiffed: Running,
    namespace: str,
    launch: Launcher,
) -> None:
    spec = {"serviceAccountNames": ["brief"], "x509SVIDTTL": "1m", "jwtSVIDTTL": "30s"}
    await register(kube, "brief", spec, namespace)
    own = Kubespiffed(control_plane)
    own.start(await service_account_token(kube))
    try:
        await asyncio.to_thread(own.wait_ready, kubespiffed.bundle_pem)
        out = _runtime_dir() / "svids"
        agent = await launch(
            "brief-1", "brief", "--write-dir", str(out), "--jwt-audience", "db", server=own.address
        )
        files = [out / "svid.0.pem", out / "svid.0.key", out / "jwt.0.token"]
        await _eventually(lambda: _true(all(f.exists() for f in files)), 10, "files never written")
        async with grpc.aio.insecure_channel(agent.address) as channel:
            stream = await _x509_stream(channel)
            own.stop()
            jwt_expires = _claims((out / "jwt.0.token").read_text())["exp"]
            await asyncio.sleep(max(0.0, jwt_expires - time.time()) + 3)
            assert not (out / "jwt.0.token").exists(), "an expired JWT-SVID is still in jwt.0.token"
            svid_expires = x509.load_pem_x509_certificate(
                (out / "svid.0.pem").read_bytes()
            ).not_valid_after_utc
            remaining = (svid_expires - dt.datetime.now(dt.UTC)).total_seconds()
            assert await asyncio.wait_for(_end_of(stream), remaining + 5) == grpc.StatusCode.UNAVAILABLE
            await asyncio.sleep(1)
            assert not (out / "svid.0.pem").exists() and not (out / "svid.0.key").exists(), (
                "an expired X.509-SVID is still on disk"
            )
            assert (out / "bundle.0.pem").exists(), "the trust bundle is not withdrawn with the SVID"
            assert await _probe(agent) == 1
            code, _ = await _fetch_jwt(agent, "db")
            assert code == grpc.StatusCode.UNAVAILABLE
    finally:
        own.stop()


async def test_jwt_file_is_replaced_in_the_first_half_of_its_life(
    kube: AsyncClient, namespace: str, launch: Launcher
) -> None:
    await register(kube, "quick", {"serviceAccountNames": ["quick"], "jwtSVIDTTL": "30s"}, namespace)
    out = _runtime_dir() / "svids"
    await launch("quick-1", "quick", "--write-dir", str(out), "--jwt-audience", "db")
    token_file = out / "jwt.0.token"
    await _eventually(lambda: _true(token_file.exists()), 10, "jwt.0.token never written")
    tokens: set[str] = set()
    deadline = time.monotonic() + 25
    while time.monotonic() < deadline:
        token = token_file.read_text()
        tokens.add(token)
        claims, now = _claims(token), time.time()
        assert now < claims["exp"], "jwt.0.token holds an expired JWT-SVID"
        assert now < claims["iat"] + (claims["exp"] - claims["iat"]) / 2 + 2, (
            f"jwt.0.token kept past half its lifetime: {now - claims['iat']:.1f}s of "
            f"{claims['exp'] - claims['iat']}s"
        )
        await asyncio.sleep(0.1)
    assert len(tokens) >= 2


async def test_fetch_jwt_svid_answers_with_the_spec_status_codes(
    kube: AsyncClient, namespace: str, launch: Launcher
) -> None:
    await register(kube, "statuses", {"serviceAccountNames": ["statuses"]}, namespace)
    agent = await launch("statuses-1", "statuses")
    invalid = {
        "too many audiences": [f"a{i}" for i in range(JWT_AUDIENCE_MAX_COUNT + 1)],
        "too long an audience": ["a" * (JWT_AUDIENCE_MAX_LENGTH + 1)],
        "a newline in an audience": ["db\nforged log line"],
        "a non-ASCII audience": ["dbé"],
    }
    for case, audience in invalid.items():
        code, details = await _fetch_jwt(agent, *audience)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, f"{case}: {code} {details}"
    code, _ = await _fetch_jwt(agent, *[f"a{i}" for i in range(JWT_AUDIENCE_MAX_COUNT)])
    assert code == grpc.StatusCode.OK
    code, _ = await _fetch_jwt(agent, "a" * JWT_AUDIENCE_MAX_LENGTH)
    assert code == grpc.StatusCode.OK

    token_file = agent.socket.parent / "token"
    good = token_file.read_text()
    token_file.unlink()  # the kubelet has not (re)written it: that clears by itself
    code, details = await _fetch_jwt(agent, "no-token-file")
    assert code == grpc.StatusCode.UNAVAILABLE, f"{code} {details}"
    token_file.write_text("not.a.jwt")  # refused by kubespiffed: the pod cannot prove who it is
    code, details = await _fetch_jwt(agent, "refused-token")
    assert code == grpc.StatusCode.PERMISSION_DENIED, f"{code} {details}"
    token_file.write_text(good)
    code, _ = await _fetch_jwt(agent, "good-token-again")
    assert code == grpc.StatusCode.OK


async def test_the_jwt_cache_is_bounded(kube: AsyncClient, namespace: str, launch: Launcher) -> None:
    await register(kube, "many-aud", {"serviceAccountNames": ["many-aud"]}, namespace)
    agent = await launch("many-aud-1", "many-aud", "--jwt-cache-size", "4")
    first = await _fetch_jwt(agent, "aud-0")
    assert first[0] == grpc.StatusCode.OK
    assert await _fetch_jwt(agent, "aud-0") == first, "a repeated request is answered from the cache"
    await asyncio.sleep(1.1)  # a new mint has a later iat
    for i in range(1, 5):
        assert (await _fetch_jwt(agent, f"aud-{i}"))[0] == grpc.StatusCode.OK
    again = await _fetch_jwt(agent, "aud-4")
    assert _claims(again[1])["iat"] == _claims((await _fetch_jwt(agent, "aud-4"))[1])["iat"]
    evicted = await _fetch_jwt(agent, "aud-0")
    assert evicted[0] == grpc.StatusCode.OK
    assert _claims(evicted[1])["iat"] > _claims(first[1])["iat"], "the least recently used entry stayed"


async def test_socket_mode_is_configurable(
    kube: AsyncClient, namespace: str, launch: Launcher, start_agent: AgentFactory
) -> None:
    await register(kube, "modes", {"serviceAccountNames": ["modes"]}, namespace)
    default: AgentProcess = await start_agent("modes-1", "modes")
    assert default.socket.stat().st_mode & 0o777 == 0o666
    narrow = await launch("modes-2", "modes", "--socket-mode", "0660")
    assert narrow.socket.stat().st_mode & 0o777 == 0o660
    assert (await _fetch_jwt(narrow, "db"))[0] == grpc.StatusCode.OK
    bad = agent_command("127.0.0.1:1", Path("t"), Path("b"), Path("s"), "--socket-mode", "0999")
    refused = await asyncio.to_thread(subprocess.run, bad, capture_output=True, text=True, check=False)
    assert refused.returncode == 2 and "--socket-mode" in refused.stderr, refused.stderr
