"""One SDS stream's xDS bookkeeping (state of the world): versions, nonces, ACKs and NACKs. Pure.

The protocol (xDS, "ACK and NACK semantics"): every response carries a version_info and a fresh nonce,
and the client answers each with a request echoing that nonce. An ACK carries the version it applied; a
NACK carries the version it keeps (the last one it ACKed) and an error_detail. A request echoing an older
nonce answers a response that has since been superseded: it is stale and ignored whole, resource names
included, because the client will answer the newer response too.

The server sends whenever what the current resource names resolve to differs from what it last sent:
on the first request, a change of names, a rotation or a bundle change. A NACK with the same names
therefore sends nothing: the client stays on what it last ACKed, and resending the rejected resources
would only be rejected again; the next change is pushed as usual.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from kubespiffe.agent.sdsresources import Resource


class Answer(enum.Enum):
    """What a request is, relative to the last response sent on the stream."""

    SUBSCRIBE = "subscribe"  # nothing sent yet: the first request, or new names before any response
    ACK = "ack"
    NACK = "nack"
    STALE = "stale"  # echoes an older nonce: ignored


@dataclass(frozen=True)
class Sent:
    version: str
    nonce: str


class StreamBook:
    """What one stream asked for, what it was sent, and what it last applied."""

    def __init__(self) -> None:
        self.names: tuple[str, ...] | None = None  # None until the first request
        self.acked = ""  # the version the client last applied ("" before any ACK)
        self._count = 0
        self._nonce = ""
        self._sent: tuple[Resource, ...] | None = None

    @property
    def version(self) -> str:
        """The version of the last response sent ("" before the first)."""
        return str(self._count) if self._count else ""

    def receive(self, version_info: str, nonce: str, names: tuple[str, ...], error: bool) -> Answer:
        """Record a request; a stale one changes nothing."""
        if self._nonce and nonce != self._nonce:
            return Answer.STALE
        if not self._nonce:
            answer = Answer.SUBSCRIBE
        elif error or version_info != self.version:
            answer = Answer.NACK
        else:
            answer = Answer.ACK
            self.acked = version_info
        self.names = names
        return answer

    def due(self, resources: tuple[Resource, ...]) -> bool:
        """Whether `resources` (what the current names resolve to now) must be sent."""
        return self.names is not None and resources != self._sent

    def sent(self, resources: tuple[Resource, ...], nonce: str) -> Sent:
        """Record a response about to be sent; returns its version and nonce."""
        self._count += 1
        self._nonce = nonce
        self._sent = resources
        return Sent(self.version, nonce)
