"""What every fuzz target shares: the Target record, input decoding, and fixed (not random) key material.

A target is a function of one byte string. It returns normally when the code under test either returned
a result that keeps the module's invariants or raised the module's documented error family; anything
else (another exception, a broken invariant as an AssertionError) escapes and is a finding. Time per
input is bounded by libFuzzer's -timeout, set by the runner.

Keys are derived from fixed scalars so that committed seeds (signed tokens) verify in every process, and
no key material has to be stored in the repository.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import ec

SEPARATOR = b"\x00"
"""Splits one input into fields (a template and the pod facts it is rendered with, say); NUL never
occurs in any of the texts the targets take, so seeds stay readable."""


@dataclass(frozen=True)
class Target:
    """One fuzz target: `run` takes the raw input; `max_len` bounds libFuzzer's inputs; `dictionary`
    holds tokens libFuzzer splices in (field names, placeholders) to reach past the syntax checks."""

    name: str
    run: Callable[[bytes], None]
    max_len: int = 4096
    dictionary: tuple[bytes, ...] = ()


def text(data: bytes) -> str:
    """Bytes as the str a caller could hand us: UTF-8, undecodable bytes as lone surrogates (which JSON
    and gRPC can carry too), so every str shape is reachable."""
    return data.decode("utf-8", "surrogateescape")


def fields(data: bytes, count: int) -> list[str]:
    """`count` SEPARATOR-separated texts, missing ones empty, the rest kept in the last."""
    parts = data.split(SEPARATOR, count - 1)
    return [text(p) for p in parts] + [""] * (count - len(parts))


def quoted(*words: str) -> tuple[bytes, ...]:
    """Dictionary entries for JSON: each whitespace-separated word as a JSON string."""
    return tuple(f'"{w}"'.encode() for group in words for w in group.split())


def fixed_ec_key(scalar: int) -> ec.EllipticCurvePrivateKey:
    """A P-256 key from a fixed scalar: the same key in every process."""
    return ec.derive_private_key(scalar, ec.SECP256R1())
