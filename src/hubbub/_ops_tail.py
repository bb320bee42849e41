"""``hubbub tail``: following channels over WebSocket, one JSON line per publication.

It subscribes with the Python client, which recovers what it missed across
reconnects, and says so on stderr when it cannot. Ctrl-C or SIGTERM ends it
quietly with status 0.
"""

from __future__ import annotations

import argparse
import logging
import re
import signal
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import anyio

from ._ops_io import (
    EXIT_NOT_FOUND,
    EXIT_REFUSED_AUTH,
    EXIT_UNAVAILABLE,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    OpsError,
    exit_status,
    quiet_stdout,
    say,
    write_json,
)
from ._ops_settings import OpsSettings
from ._ops_token import signer

if TYPE_CHECKING:
    from .client import Client, Subscription

__all__ = ["DEFAULT_TAIL_USER", "TAIL_TOKEN_TTL", "run_tail"]

TAIL_TOKEN_TTL: Final = 3600
"""Seconds a token ``tail`` mints for itself lives; the client refreshes it before then."""
DEFAULT_TAIL_USER: Final = "hubbub-tail"


@dataclass(slots=True)
class _Tail:
    """One ``tail`` run: its options and how it ended."""

    url: str
    quiet: bool
    history: int | None
    expected: int = 0
    failure: OpsError | None = None
    subscriptions: dict[str, Subscription] = field(default_factory=dict)
    broken_pipe: bool = False
    settled: anyio.Event | None = None
    """Set once every subscription is open, or the run failed."""

    def check_settled(self) -> None:
        if self.settled is not None and (
            self.failure is not None or len(self.subscriptions) >= self.expected
        ):
            self.settled.set()

    def status(self, line: str) -> None:
        if not self.quiet:
            say(f"hubbub tail: {line}")

    def warn(self, line: str) -> None:
        say(f"hubbub tail: warning: {line}")

    def fail(self, error: OpsError, scope: anyio.CancelScope) -> None:
        if self.failure is None:
            self.failure = error
        self.check_settled()
        scope.cancel()


def run_tail(args: argparse.Namespace, settings: OpsSettings) -> int:
    """``hubbub tail`` until interrupted; raises OpsError for how it failed."""
    from .client import Backoff, Client

    token = settings.token
    provider = None
    if token is None:
        found = signer(settings)
        if found is not None:
            user = args.user
            found.mint(user, TAIL_TOKEN_TTL)  # refused now, in one line, if the server would

            async def provider() -> str:
                return found.mint(user, TAIL_TOKEN_TTL)

    try:
        client = Client(
            settings.ws_url,
            token=token,
            token_provider=provider,
            # An operator's restart takes seconds: come back within 5 s of it.
            backoff=Backoff(initial=0.25, maximum=5.0),
            connect_timeout=args.connect_timeout,
        )
    except ValueError as exc:
        raise OpsError(EXIT_USAGE, str(exc)) from None
    _client_log(verbose=args.verbose)
    channels = list(dict.fromkeys(args.channels))
    run = _Tail(url=settings.ws_url, quiet=args.quiet, history=args.history, expected=len(channels))
    anyio.run(_tail_main, client, channels, run)
    if run.broken_pipe:
        quiet_stdout()
        return 0
    if run.failure is not None:
        raise run.failure
    return 0


class _OneLine(logging.Formatter):
    """A log record as one stderr line: the message only, never a traceback."""

    def format(self, record: logging.LogRecord) -> str:
        return "hubbub tail: client: " + " ".join(record.getMessage().split())


def _client_log(*, verbose: bool) -> None:
    """The client's log lines go to stderr with ``--verbose``, nowhere otherwise.

    tail reports what matters to an operator itself (a lost connection, a loss it
    could not recover, a refusal); the client's own lines repeat it in a library's
    words, with tracebacks.
    """
    logger = logging.getLogger("hubbub.client")
    logger.propagate = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLine())
    logger.addHandler(handler)
    logger.setLevel(logging.INFO if verbose else logging.CRITICAL + 1)


async def _tail_main(client: Client, channels: list[str], run: _Tail) -> None:
    async with anyio.create_task_group() as tg:
        tg.start_soon(_stop_on_signals, tg.cancel_scope)
        await _tail_session(client, channels, run, tg.cancel_scope)
        tg.cancel_scope.cancel()


async def _stop_on_signals(scope: anyio.CancelScope) -> None:
    """Ctrl-C and SIGTERM end ``tail`` the way the block ends: the client closes with 1000."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            scope.cancel()
            return


async def _tail_session(
    client: Client, channels: list[str], run: _Tail, scope: anyio.CancelScope
) -> None:
    from .client import ConnectFailed

    run.settled = settled = anyio.Event()
    try:
        async with client:
            user = client.welcome.user if client.welcome is not None else ""
            run.status(f"connected to {run.url} as {user or 'an anonymous client'}")
            async with anyio.create_task_group() as tg:
                for channel in channels:
                    tg.start_soon(_follow, client, channel, run, scope)
                tg.start_soon(_watch_connection, client, run)
                await settled.wait()
                if run.failure is None:
                    run.status("subscribed to " + ", ".join(channels))
    except ConnectFailed as exc:
        run.fail(_connect_failure(exc.status, exc.reason, run.url), scope)


def _connect_failure(status: int | None, reason: str, url: str) -> OpsError:
    if status is None:
        # Retried until the deadline: the last refusal, if it was one, tells why.
        found = re.search(r"handshake refused: (\d{3})", reason)
        if found is None:
            return OpsError(EXIT_UNREACHABLE, f"cannot connect to {url}: {reason}")
        status = int(found[1])
    if status in (401, 4401):
        return OpsError(
            EXIT_REFUSED_AUTH,
            f"{status} from {url}: the token was refused or is missing ({reason}); give "
            "--token/HUBBUB_TOKEN, or the server's key to mint one",
        )
    if status in (403, 4403):
        return OpsError(
            EXIT_REFUSED_AUTH, f"{status} from {url}: refused (Origin, ban or kick) ({reason})"
        )
    if status == 404:
        return OpsError(EXIT_NOT_FOUND, f"404 from {url}: no WebSocket endpoint there ({reason})")
    if exit_status(status, otherwise=EXIT_UNREACHABLE) == EXIT_UNAVAILABLE:
        return OpsError(EXIT_UNAVAILABLE, f"{status} from {url}: the hub is busy ({reason})")
    return OpsError(EXIT_UNREACHABLE, f"{status} from {url}: the connection ended ({reason})")


async def _follow(client: Client, channel: str, run: _Tail, scope: anyio.CancelScope) -> None:
    from .client import ClientError, Disconnected, RequestFailed, Unrecovered

    try:
        async with client.subscribe(channel, history=run.history) as sub:
            run.subscriptions[channel] = sub
            run.check_settled()
            async for item in sub:
                if isinstance(item, Unrecovered):
                    run.warn(_unrecovered(item))
                    continue
                if item.kind != "message":
                    continue
                line = {
                    "channel": item.channel,
                    "offset": item.offset,
                    "epoch": item.epoch,
                    "data": item.data,
                    "info": item.info,
                }
                try:
                    write_json(line)
                except BrokenPipeError:
                    run.broken_pipe = True
                    scope.cancel()
                    return
        if not scope.cancel_called:
            run.warn(f"{channel}: the server ended the subscription")
            del run.subscriptions[channel]
            if not run.subscriptions:
                run.fail(OpsError(EXIT_UNREACHABLE, "the server ended every subscription"), scope)
    except RequestFailed as exc:
        status = exit_status(exc.code)
        run.fail(OpsError(status, f"subscribe {channel}: {exc.code}: {exc.reason}"), scope)
    except Disconnected as exc:
        run.fail(_connect_failure(exc.code, exc.reason, run.url), scope)
    except ClientError as exc:
        run.fail(OpsError(EXIT_UNREACHABLE, f"{channel}: {exc}"), scope)


def _unrecovered(item: Any) -> str:
    previous, position = item.previous, item.position
    where = "" if position is None else f"; continuing after offset {position.offset}"
    if item.epoch_changed:
        return (
            f"{item.channel}: publications missed, not recoverable: the stream was replaced "
            f"(epoch {previous.epoch} -> {position.epoch}; the server lost its history, e.g. "
            f"a restart on the memory broker) after offset {previous.offset}{where}"
        )
    seen = "" if previous is None else f" after offset {previous.offset}"
    return (
        f"{item.channel}: publications missed, not recoverable: the history no longer "
        f"reaches back{seen}{where}"
    )


async def _watch_connection(client: Client, run: _Tail) -> None:
    """Say when the connection drops and comes back; warn for channels that keep no history."""
    seen = client.connections
    connected = True
    while True:
        await anyio.sleep(0.1)
        if connected and not client.connected:
            connected = False
            run.status("connection lost: reconnecting")
        if client.connections != seen:
            seen = client.connections
            connected = True
            run.status("reconnected: recovering what was missed")
            for channel, sub in run.subscriptions.items():
                if sub.position is None and not sub.closed:
                    run.warn(
                        f"{channel} keeps no history: what was published there while "
                        "disconnected is lost"
                    )
