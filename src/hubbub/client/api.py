"""``HubbubAPI`` and ``AsyncHubbubAPI``: the server HTTP API from users' other Python services.

Install with ``pip install 'hubbub[client]'`` (httpx)::

    from hubbub.client import HubbubAPI

    with HubbubAPI("http://hub.internal:8000", key) as api:
        position = api.publish("room:lobby", {"text": "deploy finished"})
        api.notify("alice", {"type": "mention", "title": "You were mentioned"})

One method per endpoint (PROTOCOL §8), answers decoded by msgspec into typed
values, every refusal raised as :class:`HubbubAPIError` with the server's
``{code, reason}``. Each instance keeps one httpx client, so its connections
are reused; close it (or use it as a context manager) when done. httpx is
imported when an instance is built, never by ``import hubbub``.

Before 0.2 this module was ``hubbub.api_client``, which still works (deprecated).
The answers it decodes are the server's own Structs (``hubbub._api_wire``),
so the client never imports the server.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, TypeVar

import msgspec
from msgspec import Struct

from .._api_wire import (
    BroadcastResult,
    ChannelResult,
    ChannelsResult,
    DisconnectResult,
    ErrorBody,
    PositionResult,
)
from ..chat import Notification
from ..messages import ClientInfo, Position

if TYPE_CHECKING:
    import httpx

__all__ = [
    "AsyncHubbubAPI",
    "BroadcastOutcome",
    "ChannelHistory",
    "HistoryMessage",
    "HubbubAPI",
    "HubbubAPIError",
    "PresenceInfo",
    "Stats",
]

_T = TypeVar("_T")

DEFAULT_TIMEOUT: Final = 10.0
"""Seconds for connecting, and for each read and write, unless told otherwise."""


class HubbubAPIError(Exception):
    """The hub refused a request, or no answer came.

    Attributes:
        code: the HTTP status (equal to the ``code`` of the server's error body),
            or 0 when no answer came at all (connection refused, timeout).
        reason: the server's explanation, or what went wrong on the way.
    """

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


class HistoryMessage(Struct, frozen=True):
    """One kept publication: ``data`` decoded from JSON; no ``sender`` for server publishes."""

    channel: str
    data: Any
    ts: int
    offset: int | None = None
    epoch: str | None = None
    sender: ClientInfo | None = None


class ChannelHistory(Struct, frozen=True):
    """A page of a channel's history, and the stream's newest position."""

    channel: str
    publications: list[HistoryMessage]
    offset: int | None = None
    epoch: str | None = None

    @property
    def position(self) -> Position | None:
        """The stream's newest position, ``None`` for a channel without history."""
        if self.offset is None or self.epoch is None:
            return None
        return Position(offset=self.offset, epoch=self.epoch)


class PresenceInfo(Struct, frozen=True):
    """Who is present in a channel, on every node (client id → who)."""

    channel: str
    clients: dict[str, ClientInfo]
    users: int


class Stats(Struct, frozen=True):
    """One node's figures (the node that answered)."""

    node: str
    connections: int = 0
    channels: int = 0
    connections_total: int = 0
    publications: int = 0
    deliveries: int = 0
    dropped: int = 0
    slow_consumer_closes: int = 0


@dataclass(frozen=True, slots=True)
class BroadcastOutcome:
    """One channel of a broadcast: its position (if it keeps history), or why it failed."""

    channel: str
    position: Position | None = None
    error: HubbubAPIError | None = None


# -- requests and answers, shared by both clients ---------------------------------------------
# The answers decode into the very Structs the server encodes (``hubbub.api``), so
# the two cannot drift apart.


@dataclass(frozen=True, slots=True)
class _Call:
    method: str
    endpoint: str
    body: bytes | None = None
    params: dict[str, str] | None = None


def _json(payload: Mapping[str, Any]) -> bytes:
    return msgspec.json.encode(payload)


def _publish(channel: str, data: Any, idempotency_key: str | None) -> _Call:
    payload: dict[str, Any] = {"channel": channel, "data": data}
    if idempotency_key is not None:
        payload["idempotency_key"] = idempotency_key
    return _Call("POST", "publish", _json(payload))


def _notify(user: str, notification: Notification | Mapping[str, Any]) -> _Call:
    return _Call("POST", "notify", _json({"user": user, "notification": notification}))


def _disconnect(user: str, code: int | None, reason: str | None) -> _Call:
    payload: dict[str, Any] = {"user": user}
    if code is not None:
        payload["code"] = code
    if reason is not None:
        payload["reason"] = reason
    return _Call("POST", "disconnect", _json(payload))


def _history(channel: str, limit: int | None, since: Position | None, reverse: bool) -> _Call:
    params = {"channel": channel}
    if limit is not None:
        params["limit"] = str(limit)
    if since is not None:
        params["since"] = f"{since.offset}:{since.epoch}"
    if reverse:
        params["reverse"] = "true"
    return _Call("GET", "history", params=params)


def _as_position(answer: PositionResult | ChannelResult) -> Position | None:
    offset, epoch = answer.offset, answer.epoch
    if isinstance(offset, int) and isinstance(epoch, str):
        return Position(offset=offset, epoch=epoch)
    return None


def _outcomes(answer: BroadcastResult) -> list[BroadcastOutcome]:
    return [
        BroadcastOutcome(
            channel=result.channel,
            position=_as_position(result),
            error=HubbubAPIError(result.error.code, result.error.reason)
            if isinstance(result.error, ErrorBody)
            else None,
        )
        for result in answer.results
    ]


def _decode(status: int, content: bytes, answer_type: type[_T]) -> _T:
    """The answer as ``answer_type``, or the server's error raised as ``HubbubAPIError``."""
    if status != 200:
        try:
            error = msgspec.json.decode(content, type=ErrorBody)
        except msgspec.MsgspecError:
            text = content[:200].decode(errors="replace").strip()
            raise HubbubAPIError(status, text or f"HTTP {status}") from None
        raise HubbubAPIError(status, error.reason)
    try:
        return msgspec.json.decode(content, type=answer_type)
    except msgspec.MsgspecError as exc:
        raise HubbubAPIError(status, f"unexpected answer from the hub: {exc}") from None


def _import_httpx() -> Any:
    try:
        import httpx
    except ImportError:  # pragma: no cover - exercised only without the extra
        raise ImportError("the HTTP API helpers need httpx: pip install 'hubbub[client]'") from None
    return httpx


def _base_url(url: str) -> str:
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ValueError("url must be the hub's http:// or https:// address")
    return url.rstrip("/") + "/api/"


def _headers(key: str) -> dict[str, str]:
    if not isinstance(key, str) or not key or " " in key or not key.isascii():
        raise ValueError("key must be a non-empty ASCII API key without spaces")
    return {"Authorization": f"apikey {key}", "Content-Type": "application/json"}


class HubbubAPI:
    """The server HTTP API of one hub, over a reused httpx connection pool (blocking).

    Args:
        url: the hub's address, where ``/ws`` and ``/api/`` live (e.g.
            ``http://hub.internal:8000`` or ``https://example.com/realtime``).
        key: one of the hub's API keys.
        timeout: seconds for connecting and for each read and write (or an
            ``httpx.Timeout``).

    Raises (from every method):
        HubbubAPIError: the hub refused the request (its ``code`` and ``reason``),
            or no answer came (``code`` 0).
    """

    def __init__(self, url: str, key: str, *, timeout: float | httpx.Timeout = DEFAULT_TIMEOUT):
        module = _import_httpx()
        self._client: httpx.Client = module.Client(
            base_url=_base_url(url), headers=_headers(key), timeout=timeout
        )

    def close(self) -> None:
        """Close the connections (the instance cannot be used afterwards)."""
        self._client.close()

    def __enter__(self) -> HubbubAPI:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _send(self, call: _Call, answer_type: type[_T]) -> _T:
        module = _import_httpx()
        try:
            response = self._client.request(
                call.method, call.endpoint, content=call.body, params=call.params
            )
        except module.HTTPError as exc:
            raise HubbubAPIError(0, f"no answer from the hub: {exc!r}") from exc
        return _decode(response.status_code, response.content, answer_type)

    def publish(
        self, channel: str, data: Any, idempotency_key: str | None = None
    ) -> Position | None:
        """Publish ``data`` (any JSON-encodable value) into ``channel``.

        Returns the publication's position, ``None`` for a channel without history.
        """
        return _as_position(self._send(_publish(channel, data, idempotency_key), PositionResult))

    def broadcast(self, channels: Iterable[str], data: Any) -> list[BroadcastOutcome]:
        """Publish ``data`` into each of ``channels``; one outcome per channel, in order."""
        call = _Call("POST", "broadcast", _json({"channels": list(channels), "data": data}))
        return _outcomes(self._send(call, BroadcastResult))

    def notify(self, user: str, notification: Notification | Mapping[str, Any]) -> Position | None:
        """Push a notification (``type``, ``title``, ``message``, ``data``) to ``user``."""
        return _as_position(self._send(_notify(user, notification), PositionResult))

    def disconnect(self, user: str, *, code: int | None = None, reason: str | None = None) -> int:
        """Close every connection of ``user`` (default 4403); how many closed on the node."""
        return self._send(_disconnect(user, code, reason), DisconnectResult).disconnected

    def subscribe(self, user: str, channel: str) -> None:
        """Subscribe every connection of ``user``, on every node, to ``channel``."""
        self._send(_Call("POST", "subscribe", _json({"user": user, "channel": channel})), dict)

    def unsubscribe(self, user: str, channel: str) -> None:
        """Remove ``channel`` from every connection of ``user``, on every node."""
        self._send(_Call("POST", "unsubscribe", _json({"user": user, "channel": channel})), dict)

    def channels(self) -> dict[str, int]:
        """The answering node's channels with local subscribers, and how many each has."""
        answer = self._send(_Call("GET", "channels"), ChannelsResult)
        return {item.channel: item.subscribers for item in answer.channels}

    def presence(self, channel: str) -> PresenceInfo:
        """Who is present in ``channel``."""
        return self._send(_Call("GET", "presence", params={"channel": channel}), PresenceInfo)

    def history(
        self,
        channel: str,
        *,
        limit: int | None = None,
        since: Position | None = None,
        reverse: bool = False,
    ) -> ChannelHistory:
        """Kept publications: the newest ``limit``, or the first ``limit`` after ``since``."""
        return self._send(_history(channel, limit, since, reverse), ChannelHistory)

    def stats(self) -> Stats:
        """The answering node's figures."""
        return self._send(_Call("GET", "stats"), Stats)


class AsyncHubbubAPI:
    """The server HTTP API of one hub, over a reused httpx connection pool (async).

    Runs on asyncio and on trio (httpx on anyio). Arguments, methods and errors
    are those of :class:`HubbubAPI`, awaited.
    """

    def __init__(self, url: str, key: str, *, timeout: float | httpx.Timeout = DEFAULT_TIMEOUT):
        module = _import_httpx()
        self._client: httpx.AsyncClient = module.AsyncClient(
            base_url=_base_url(url), headers=_headers(key), timeout=timeout
        )

    async def aclose(self) -> None:
        """Close the connections (the instance cannot be used afterwards)."""
        await self._client.aclose()

    async def __aenter__(self) -> AsyncHubbubAPI:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _send(self, call: _Call, answer_type: type[_T]) -> _T:
        module = _import_httpx()
        try:
            response = await self._client.request(
                call.method, call.endpoint, content=call.body, params=call.params
            )
        except module.HTTPError as exc:
            raise HubbubAPIError(0, f"no answer from the hub: {exc!r}") from exc
        return _decode(response.status_code, response.content, answer_type)

    async def publish(
        self, channel: str, data: Any, idempotency_key: str | None = None
    ) -> Position | None:
        """See :meth:`HubbubAPI.publish`."""
        answer = await self._send(_publish(channel, data, idempotency_key), PositionResult)
        return _as_position(answer)

    async def broadcast(self, channels: Iterable[str], data: Any) -> list[BroadcastOutcome]:
        """See :meth:`HubbubAPI.broadcast`."""
        call = _Call("POST", "broadcast", _json({"channels": list(channels), "data": data}))
        return _outcomes(await self._send(call, BroadcastResult))

    async def notify(
        self, user: str, notification: Notification | Mapping[str, Any]
    ) -> Position | None:
        """See :meth:`HubbubAPI.notify`."""
        return _as_position(await self._send(_notify(user, notification), PositionResult))

    async def disconnect(
        self, user: str, *, code: int | None = None, reason: str | None = None
    ) -> int:
        """See :meth:`HubbubAPI.disconnect`."""
        answer = await self._send(_disconnect(user, code, reason), DisconnectResult)
        return answer.disconnected

    async def subscribe(self, user: str, channel: str) -> None:
        """See :meth:`HubbubAPI.subscribe`."""
        call = _Call("POST", "subscribe", _json({"user": user, "channel": channel}))
        await self._send(call, dict)

    async def unsubscribe(self, user: str, channel: str) -> None:
        """See :meth:`HubbubAPI.unsubscribe`."""
        call = _Call("POST", "unsubscribe", _json({"user": user, "channel": channel}))
        await self._send(call, dict)

    async def channels(self) -> dict[str, int]:
        """See :meth:`HubbubAPI.channels`."""
        answer = await self._send(_Call("GET", "channels"), ChannelsResult)
        return {item.channel: item.subscribers for item in answer.channels}

    async def presence(self, channel: str) -> PresenceInfo:
        """See :meth:`HubbubAPI.presence`."""
        call = _Call("GET", "presence", params={"channel": channel})
        return await self._send(call, PresenceInfo)

    async def history(
        self,
        channel: str,
        *,
        limit: int | None = None,
        since: Position | None = None,
        reverse: bool = False,
    ) -> ChannelHistory:
        """See :meth:`HubbubAPI.history`."""
        return await self._send(_history(channel, limit, since, reverse), ChannelHistory)

    async def stats(self) -> Stats:
        """See :meth:`HubbubAPI.stats`."""
        return await self._send(_Call("GET", "stats"), Stats)
