"""CallBounds' choice per call (the method's own handler, a refusal, or nothing: grpc's UNIMPLEMENTED) and its
count of calls in flight. Its effect on the wire (refused before the request is read) is tested against
kubespiffed in tests/integration/test_hardening.py."""

from __future__ import annotations

import asyncio
from typing import NamedTuple

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding

from kubespiffe.constants import JWT_AUDIENCE_MAX_COUNT, JWT_AUDIENCE_MAX_LENGTH
from kubespiffe.proto import issuer_pb2, issuer_pb2_grpc
from kubespiffe.server.callbounds import MAX_METADATA_BYTES, MAX_REQUEST_BYTES, CallBounds, Handler


class Details(NamedTuple):
    method: str
    invocation_metadata: tuple[tuple[str, str | bytes], ...] | None


ISSUER = "/kubespiffe.issuer.v1.Issuer/"
MINT = ISSUER + "MintX509SVID"


def _bounds(max_in_flight: int = 10) -> CallBounds:
    servicer = issuer_pb2_grpc.IssuerServicer()  # type: ignore[abstract]  # only dispatched, never called
    return CallBounds(servicer, max_in_flight=max_in_flight)


def _metadata(size: int) -> tuple[tuple[str, str], ...]:
    """Metadata of exactly `size` bytes of names and values."""
    return (("authorization", "x" * (size - len("authorization"))),)


_calls: set[asyncio.Task[None]] = set()  # the running calls, referenced until they end


async def _call(bounds: CallBounds, details: Details, ends: asyncio.Event) -> Handler | None:
    """Asks for a handler inside a task of its own, as grpc's asyncio server does per call; that task
    (the call) runs until `ends` is set."""
    asked: asyncio.Future[Handler | None] = asyncio.get_running_loop().create_future()

    async def call() -> None:
        asked.set_result(bounds.service(details))  # type: ignore[arg-type]
        await ends.wait()

    task = asyncio.create_task(call())
    _calls.add(task)
    task.add_done_callback(_calls.discard)
    return await asked


async def test_every_issuer_method_is_served() -> None:
    bounds, done = _bounds(), asyncio.Event()
    done.set()
    for method in issuer_pb2.DESCRIPTOR.services_by_name["Issuer"].methods:
        handler = await _call(bounds, Details(ISSUER + method.name, _metadata(100)), done)
        assert handler is not None and handler.response_streaming == method.server_streaming
        assert not handler.request_streaming  # the method's own handler: grpc reads the request first


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
    bounds, done = _bounds(), asyncio.Event()
    done.set()
    handler = await _call(bounds, Details(MINT, metadata), done)
    assert handler is not None
    # A refusal reads no request first (request streaming); MintX509SVID's own handler reads one.
    assert handler.request_streaming is refused


async def test_calls_count_from_their_start_to_their_end() -> None:
    bounds = _bounds(max_in_flight=2)
    first, second = asyncio.Event(), asyncio.Event()
    await _call(bounds, Details(MINT, ()), first)
    await _call(bounds, Details(MINT, ()), second)
    assert bounds.in_flight == 2
    third = asyncio.Event()
    refused = await _call(bounds, Details(MINT, ()), third)
    assert refused is not None and refused.request_streaming, "the third call is refused"
    assert bounds.in_flight == 2, "a refused call is not counted"
    first.set()
    for _ in range(3):  # the call's task ends, then its done callback runs
        await asyncio.sleep(0)
    assert bounds.in_flight == 1, "an ended call (whatever its outcome) no longer counts"
    fourth = asyncio.Event()
    accepted = await _call(bounds, Details(MINT, ()), fourth)
    assert accepted is not None and not accepted.request_streaming
    assert bounds.in_flight == 2
    for event in (second, third, fourth):
        event.set()
    await asyncio.gather(*_calls)
    assert bounds.in_flight == 0


async def test_a_handler_asked_for_outside_a_task_is_an_error() -> None:
    """grpc asks inside the call's task; if that ever changed, calls would go uncounted."""
    bounds = _bounds()
    outcome: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def ask() -> None:  # a plain callback of the loop: no task is current
        try:
            bounds.service(Details(MINT, ()))  # type: ignore[arg-type]
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
    bounds, done = _bounds(), asyncio.Event()
    done.set()
    assert await _call(bounds, Details(method, _metadata(100)), done) is None


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
