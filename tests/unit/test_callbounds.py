"""CallBounds' choice per call (the method's own handler, the same behind a deadline for its request, a
refusal, or nothing: grpc's UNIMPLEMENTED) and its counts of calls in flight: overall, per pod, and of
calls whose token only I/O can verify. Its effect on the wire (refused before the request is read) is
tested against kubespiffed in tests/integration/test_hardening.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, NamedTuple, NoReturn

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding
from prometheus_client import REGISTRY

from kubespiffe.attestation.token import TokenRejected
from kubespiffe.constants import JWT_AUDIENCE_MAX_COUNT, JWT_AUDIENCE_MAX_LENGTH
from kubespiffe.proto import issuer_pb2, issuer_pb2_grpc
from kubespiffe.server.callbounds import (
    MAX_METADATA_BYTES,
    MAX_REQUEST_BYTES,
    CallBounds,
    Handler,
    unverified_share,
)


class Details(NamedTuple):
    method: str
    invocation_metadata: tuple[tuple[str, str | bytes], ...] | None


ISSUER = "/kubespiffe.issuer.v1.Issuer/"
MINT = ISSUER + "MintX509SVID"
# Valid tokens and the pods they speak for; "bad-..." tokens are refused; any other only I/O can decide.
PODS = {"token-a": "uid-a", "token-b": "uid-b", "token-c": "uid-c"}


def _pod_of(token: str) -> str | None:
    if not token:
        raise TokenRejected("no token was presented")
    if token.startswith("bad"):
        raise TokenRejected(f"{token} is forged")
    return PODS.get(token)


class Echo(issuer_pb2_grpc.IssuerServicer):
    """Answers with what it was asked: the request a method got, as grpc would have passed it."""

    async def MintX509SVID(self, request: Any, context: Any) -> Any:
        return ("minted", request)

    async def WatchBundles(self, request: Any, context: Any) -> AsyncIterator[Any]:
        for n in (1, 2):
            yield ("bundles", n, request)


def _bounds(max_in_flight: int = 10, max_per_pod: int = 64, request_timeout: float = 10.0) -> CallBounds:
    return CallBounds(
        Echo(),  # type: ignore[abstract]  # the other methods are only dispatched, never called
        max_in_flight=max_in_flight,
        pod_of=_pod_of,
        max_per_pod=max_per_pod,
        request_timeout=request_timeout,
    )


def _metadata(size: int) -> tuple[tuple[str, str], ...]:
    """Metadata of exactly `size` bytes of names and values."""
    return (("authorization", "x" * (size - len("authorization"))),)


def _from(token: str) -> Details:
    return Details(MINT, (("authorization", f"Bearer {token}"), ("user-agent", "test")))


def _refusal(handler: Handler | None) -> str:
    """Which refusal `handler` is ("" for a method's handler, with or without a deadline for its request):
    refusals read no request."""
    assert handler is not None
    name = str(getattr(handler.stream_unary or handler.stream_stream, "__name__", ""))
    return name.removeprefix("_refuse_") if name.startswith("_refuse_") else ""


def _waits_for_request(handler: Handler | None) -> bool:
    """The method's handler behind a deadline for its request (it reads the request itself)."""
    assert handler is not None
    return handler.request_streaming and not _refusal(handler)


class Aborted(Exception):
    pass


class Context:
    """What CallBounds' handlers use of grpc's servicer context: read, abort, peer."""

    def __init__(self, request: Any = None) -> None:
        self._request = request
        self.aborted: tuple[grpc.StatusCode, str] | None = None

    async def read(self) -> Any:
        if self._request is None:
            await asyncio.Event().wait()  # a request that never comes
        return self._request

    def peer(self) -> str:
        return "ipv4:127.0.0.1:4242"

    async def abort(self, code: grpc.StatusCode, details: str) -> NoReturn:
        self.aborted = (code, details)
        raise Aborted(details)


class Call:
    """One call as grpc's asyncio server runs it: a task that asks for its handler, decodes its request
    when told to, and ends when told to."""

    running: set[asyncio.Task[None]] = set()

    def __init__(self, bounds: CallBounds, details: Details) -> None:
        self.request_in, self.end = asyncio.Event(), asyncio.Event()
        self._asked: asyncio.Future[Handler | None] = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._run(bounds, details))
        Call.running.add(self._task)
        self._task.add_done_callback(Call.running.discard)

    async def _run(self, bounds: CallBounds, details: Details) -> None:
        handler = bounds.service(details)  # type: ignore[arg-type]
        self._asked.set_result(handler)
        await self.request_in.wait()
        if handler is not None and handler.request_deserializer is not None:  # as grpc does, in the task
            handler.request_deserializer(issuer_pb2.MintX509SVIDRequest().SerializeToString())
        await self.end.wait()

    async def handler(self) -> Handler | None:
        return await self._asked

    async def ended(self) -> None:
        self.request_in.set()
        self.end.set()
        await self._task


async def _start(bounds: CallBounds, details: Details) -> tuple[Call, Handler | None]:
    call = Call(bounds, details)
    return call, await call.handler()


async def _settle() -> None:
    """Lets ended calls' done callbacks run."""
    for _ in range(3):
        await asyncio.sleep(0)


async def test_every_issuer_method_is_served() -> None:
    bounds = _bounds()
    for method in issuer_pb2.DESCRIPTOR.services_by_name["Issuer"].methods:
        for token, waits in (("token-a", False), ("unknown", True)):
            call, handler = await _start(bounds, Details(ISSUER + method.name, _from(token)[1]))
            assert handler is not None and handler.response_streaming == method.server_streaming
            assert _refusal(handler) == ""
            assert _waits_for_request(handler) == waits  # else grpc reads the request first
            await call.ended()


async def test_a_token_refused_at_the_start_ends_the_call_before_its_request() -> None:
    """UNAUTHENTICATED, as the method would have answered once it had read the request."""
    bounds = _bounds(max_in_flight=1)
    before = REGISTRY.get_sample_value(
        "kubespiffe_issuer_requests_total", {"rpc": "x509", "outcome": "token_rejected"}
    )
    for _ in range(3):  # not counted: a bound of 1 holds none of them
        call, handler = await _start(bounds, _from("bad-token"))
        assert _refusal(handler) == "token" and bounds.in_flight == 0
        await call.ended()
    context = Context()
    assert handler is not None
    refuse: Any = handler.stream_unary
    with pytest.raises(Aborted):
        await refuse(None, context)
    assert context.aborted == (grpc.StatusCode.UNAUTHENTICATED, "token refused: bad-token is forged")
    after = REGISTRY.get_sample_value(
        "kubespiffe_issuer_requests_total", {"rpc": "x509", "outcome": "token_rejected"}
    )
    assert after == (before or 0) + 1


async def test_a_call_only_io_can_verify_gets_its_request_in_time_or_ends() -> None:
    bounds = _bounds(request_timeout=0.05)
    call, handler = await _start(bounds, _from("unknown"))
    _, watch_handler = await _start(bounds, Details(ISSUER + "WatchBundles", _from("unknown")[1]))
    assert handler is not None and watch_handler is not None
    mint: Any = handler.stream_unary
    watch: Any = watch_handler.stream_stream
    assert await mint(None, Context("csr")) == ("minted", "csr")
    assert [r async for r in watch(None, Context("w"))] == [("bundles", 1, "w"), ("bundles", 2, "w")]
    timeouts = {"limit": "request_timeout"}
    before = REGISTRY.get_sample_value("kubespiffe_issuer_limit_refusals_total", timeouts)
    late = Context()
    with pytest.raises(Aborted):
        await mint(None, late)
    assert late.aborted == (grpc.StatusCode.RESOURCE_EXHAUSTED, "no request within 0.05 s")
    after = REGISTRY.get_sample_value("kubespiffe_issuer_limit_refusals_total", timeouts)
    assert after == (before or 0) + 1
    ended = Context(grpc.aio.EOF)  # type: ignore[attr-defined]
    with pytest.raises(Aborted):
        await mint(None, ended)
    assert ended.aborted == (grpc.StatusCode.INVALID_ARGUMENT, "the call ended without its request")
    await call.ended()


@pytest.mark.parametrize(
    ("metadata", "refused"),
    [
        (None, False),
        ((), False),
        (_metadata(MAX_METADATA_BYTES), False),
        (_metadata(MAX_METADATA_BYTES + 1), True),
        ((("a", "b" * 9000), ("c-bin", b"d" * 9000)), True),  # the sum over all pairs, bytes values too
        (tuple((f"k{i}", "v" * 200) for i in range(100)), True),  # many small pairs
    ],
    ids=["none", "empty", "at-the-bound", "one-byte-over", "two-pairs-over", "many-pairs-over"],
)
async def test_metadata_over_the_bound_gets_the_refusal(
    metadata: tuple[tuple[str, str | bytes], ...] | None, refused: bool
) -> None:
    bounds = _bounds()
    call, handler = await _start(bounds, Details(MINT, metadata))
    assert (_refusal(handler) == "metadata") == refused
    await call.ended()


async def test_calls_count_from_their_start_to_their_end() -> None:
    bounds = _bounds(max_in_flight=2)
    first, accepted = await _start(bounds, _from("token-a"))
    second, _ = await _start(bounds, _from("token-b"))
    assert _refusal(accepted) == "" and bounds.in_flight == 2
    third, refused = await _start(bounds, _from("token-c"))
    assert _refusal(refused) == "busy"
    assert bounds.in_flight == 2, "a refused call is not counted"
    await first.ended()
    await _settle()
    assert bounds.in_flight == 1, "an ended call (whatever its outcome) no longer counts"
    fourth, accepted = await _start(bounds, _from("token-c"))
    assert _refusal(accepted) == "" and bounds.in_flight == 2
    for call in (second, third, fourth):
        await call.ended()
    await _settle()
    assert bounds.in_flight == 0 and bounds.busiest_pod == 0


async def test_one_pod_holds_at_most_its_share() -> None:
    bounds = _bounds(max_in_flight=10, max_per_pod=2)
    calls = [(await _start(bounds, _from("token-a")))[0] for _ in range(2)]
    assert bounds.busiest_pod == 2
    third, refused = await _start(bounds, _from("token-a"))
    assert _refusal(refused) == "pod_busy"
    other, accepted = await _start(bounds, _from("token-b"))
    assert _refusal(accepted) == "", "another pod is not held back"
    await calls[0].ended()
    await _settle()
    again, accepted = await _start(bounds, _from("token-a"))
    assert _refusal(accepted) == "" and bounds.busiest_pod == 2
    for call in (calls[1], third, other, again):
        await call.ended()
    await _settle()
    assert bounds.busiest_pod == 0 and bounds.in_flight == 0


async def test_calls_only_io_can_verify_wait_for_their_request_in_a_share_of_their_own() -> None:
    """Calls whose token cannot be told valid or not without I/O fill only this share: pods whose tokens
    are valid go on; a call with no token, or a refused one, is not let in at all."""
    bounds = _bounds(max_in_flight=8)
    share = unverified_share(8)
    assert share == 2
    waiting = [(await _start(bounds, _from(f"new-{i}")))[0] for i in range(share)]
    no_token = Details(MINT, (("user-agent", "test"),))
    refused_calls = [
        await _start(bounds, _from("new-x")),
        await _start(bounds, no_token),
        await _start(bounds, _from("bad-x")),
    ]
    assert [_refusal(handler) for _, handler in refused_calls] == ["unverified_busy", "token", "token"]
    known, accepted = await _start(bounds, _from("token-a"))
    assert _refusal(accepted) == ""
    # Once its request is in, a call is attested like any other: it leaves the share, still in flight.
    waiting[0].request_in.set()
    await _settle()
    assert bounds.waiting_unverified == 1 and bounds.in_flight == 3
    later, accepted = await _start(bounds, _from("new-y"))
    assert _refusal(accepted) == ""
    for call in [*waiting, known, later, *(c for c, _ in refused_calls)]:
        await call.ended()
    await _settle()
    assert bounds.waiting_unverified == 0 and bounds.in_flight == 0


def _gauges() -> dict[str, float | None]:
    names = {
        "in_flight": "calls_in_flight",
        "unverified": "calls_unverified",
        "busiest_pod": "busiest_pod_calls",
    }
    return {key: REGISTRY.get_sample_value(f"kubespiffe_issuer_{name}") for key, name in names.items()}


async def test_published_gauges_show_how_full_each_bound_is() -> None:
    bounds = _bounds(max_in_flight=8)
    bounds.publish()
    tokens = ("token-a", "token-a", "token-b", "new-1")
    calls = [(await _start(bounds, _from(token)))[0] for token in tokens]
    assert _gauges() == {"in_flight": 4, "unverified": 1, "busiest_pod": 2}
    for call in calls:
        await call.ended()
    await _settle()
    assert _gauges() == {"in_flight": 0, "unverified": 0, "busiest_pod": 0}


def test_the_unverified_share_is_a_quarter_and_never_none() -> None:
    assert [unverified_share(n) for n in (1, 3, 4, 7, 8, 4096)] == [1, 1, 1, 1, 2, 1024]


async def test_a_handler_asked_for_outside_a_task_is_an_error() -> None:
    """grpc asks inside the call's task; if that ever changed, calls would go uncounted."""
    bounds = _bounds()
    outcome: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def ask() -> None:  # a plain callback of the loop: no task is current
        try:
            bounds.service(_from("token-a"))  # type: ignore[arg-type]
        except RuntimeError as exc:
            outcome.set_exception(exc)
        else:
            outcome.set_result(None)

    asyncio.get_running_loop().call_soon(ask)
    with pytest.raises(RuntimeError, match="outside a call's task"):
        await outcome
    assert bounds.in_flight == 0


@pytest.mark.parametrize("method", ["/other.Service/MintX509SVID", ISSUER + "Unknown", ""])
async def test_other_methods_are_left_to_grpc(method: str) -> None:
    bounds = _bounds()
    call = Call(bounds, Details(method, _metadata(100)))
    assert await call.handler() is None
    await call.ended()
    assert bounds.in_flight == 0


def test_the_largest_legitimate_requests_fit_the_request_bound() -> None:
    """MintJWTSVID with every audience at its longest and a SPIFFE ID at the spec's 2,048 bytes;
    MintX509SVID with an RSA-4096 key's CSR (the agent's keys are P-256)."""
    spiffe_id = "spiffe://" + "t" * 255 + "/" + "p" * (2048 - len("spiffe://") - 256)
    jwt = issuer_pb2.MintJWTSVIDRequest(
        audience=["a" * JWT_AUDIENCE_MAX_LENGTH] * JWT_AUDIENCE_MAX_COUNT, spiffe_id=spiffe_id
    )
    key = rsa.generate_private_key(public_exponent=65537, key_size=4096)
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, hashes.SHA256())
    mint = issuer_pb2.MintX509SVIDRequest(csr=csr.public_bytes(Encoding.DER), spiffe_id=spiffe_id)
    for request in (jwt, mint):
        assert request.ByteSize() < MAX_REQUEST_BYTES / 2, type(request).__name__
