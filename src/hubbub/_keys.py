"""``Authorization: apikey <key>``: one reading and one comparison for every keyed endpoint.

The HTTP API, the admin page and ``/metrics`` all take a key this way; reading
it in one place keeps them agreeing on the details (scheme case, whitespace),
and comparing against every key without stopping early keeps the time taken
from telling which key, or how much of one, matched.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from typing import Any

__all__ = ["key_matches", "presented_key"]


def presented_key(scope: Any) -> bytes:
    """The key of the request's ``Authorization: apikey <key>`` header; ``b""`` without one."""
    for name, value in scope.get("headers") or ():
        if name.lower() == b"authorization":
            scheme, _, rest = bytes(value).strip().partition(b" ")
            return rest.strip() if scheme.lower() == b"apikey" else b""
    return b""


def key_matches(given: bytes, keys: Iterable[bytes]) -> bool:
    """Whether ``given`` is one of ``keys``, in time independent of which one."""
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(given, key)
    return matched and bool(given)
