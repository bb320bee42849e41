"""The close-code table: every WebSocket close code hubbub sends, meets or names, in one place.

``docs/protocol.md`` §7 is the contract; this table is its code form, and
everything else is derived from it or checked against it by a test
(``tests/test_closes.py``): the server's :data:`RECONNECT` (what ``disconnect``
says), the metrics' close-code labels (:func:`close_label`), the Python
client's final closes and ``hubbub.js``'s ``FINAL_CLOSE_CODES`` (both must
equal :data:`FINAL`; the clients keep their own copy because they must not
import the server, and hubbub.js is not Python).

A leaf: it imports nothing from hubbub.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

__all__ = ["CLOSE_CODES", "COUNTED", "FINAL", "RECONNECT", "CloseCode", "close_label"]


@dataclass(frozen=True, slots=True)
class CloseCode:
    """One close code and what it means to a client.

    Attributes:
        code: the close code.
        name: its constant's name (``hubbub.protocol`` has the hub's as constants).
        meaning: what it says, as §7 words it.
        reconnect: ``yes``: reconnect (with back-off); ``no``: reconnecting cannot
            help; ``new token``: only with a new token (4401).
        counted: counted by its own value in ``hubbub_connections_closed_total``;
            any other code a client sends is counted as ``other``, so the label
            set stays small.
        observed: never sent in a close frame (RFC 6455 reserves it): only seen
            when a connection ended without one.
    """

    code: int
    name: str
    meaning: str
    reconnect: Literal["yes", "no", "new token"]
    counted: bool = True
    observed: bool = False


CLOSE_CODES: Final[dict[int, CloseCode]] = {
    c.code: c
    for c in (
        CloseCode(1000, "NORMAL", "normal (the client closed)", "no"),
        CloseCode(1001, "GOING_AWAY", "the hub is stopping", "yes"),
        CloseCode(1002, "PROTOCOL_ERROR", "WebSocket protocol error", "no", counted=False),
        CloseCode(1003, "UNSUPPORTED_DATA", "a frame the peer cannot take", "no", counted=False),
        CloseCode(1005, "NO_STATUS", "closed without a status code", "yes", observed=True),
        CloseCode(1006, "ABNORMAL", "connection lost without a close", "yes", observed=True),
        CloseCode(1007, "INVALID_PAYLOAD", "a text frame that is not UTF-8", "no", counted=False),
        CloseCode(1008, "POLICY_VIOLATION", "too many invalid messages", "no"),
        CloseCode(1009, "TOO_BIG", "frame too large", "no"),
        CloseCode(1010, "MANDATORY_EXTENSION", "a required extension", "no", counted=False),
        CloseCode(1011, "INTERNAL_ERROR", "internal error", "yes"),
        CloseCode(1012, "SERVICE_RESTART", "the server is restarting", "yes"),
        CloseCode(1013, "TRY_AGAIN_LATER", "try again later (slow consumer, overload)", "yes"),
        CloseCode(4401, "TOKEN_EXPIRED", "token expired and not refreshed", "new token"),
        CloseCode(4403, "KICKED", "disconnected by the server (kicked, banned)", "no"),
        CloseCode(4408, "HEARTBEAT_TIMEOUT", "heartbeat timeout", "yes"),
        CloseCode(4429, "FLOODING", "kept flooding after rate-limit errors", "yes"),
    )
}

RECONNECT: Final = frozenset(
    c.code for c in CLOSE_CODES.values() if c.reconnect == "yes" and not c.observed
)
"""Codes hubbub closes with after which a client should reconnect (``disconnect.reconnect``)."""

FINAL: Final = frozenset(c.code for c in CLOSE_CODES.values() if c.reconnect == "no")
"""Codes after which reconnecting cannot help: the clients stop (4401 is decided apart)."""

COUNTED: Final = frozenset(c.code for c in CLOSE_CODES.values() if c.counted)
"""Codes counted by value in the metrics; every other code is ``other``."""


def close_label(code: int) -> str:
    """The ``code`` label of ``hubbub_connections_closed_total`` for a connection's end."""
    return str(code) if code in COUNTED else "other"
