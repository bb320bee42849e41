"""An HTTP request whose body starts and then stops arriving: the body readers' 408 tests."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import anyio


def dripped_request(
    first_chunk: bytes,
) -> tuple[
    Callable[[], Awaitable[Mapping[str, Any]]],
    Callable[[Mapping[str, Any]], Awaitable[None]],
    list[Mapping[str, Any]],
]:
    """``receive`` (one chunk with ``more_body``, then nothing), ``send``, and what was sent."""
    sent: list[Mapping[str, Any]] = []
    first = True

    async def receive() -> Mapping[str, Any]:
        nonlocal first
        if first:
            first = False
            return {"type": "http.request", "body": first_chunk, "more_body": True}
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    async def send(message: Mapping[str, Any]) -> None:
        sent.append(message)

    return receive, send, sent
