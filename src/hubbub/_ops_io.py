"""How an operator command answers: its exit status, one line on stderr, JSON on stdout.

The statuses tell a script what to do (docs/operations.md has the table): 1 the
``client`` extra is missing, 2 bad arguments or input, 3 the hub cannot be
reached or the connection ended, 4 a key or token was refused (401/403), 5 not
found (404: the API is off or the URL is wrong), 6 the hub is busy or
unavailable (429, 503, other 5xx), 7 any other refusal.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from typing import Any, Final, TextIO

import msgspec

__all__ = [
    "EXIT_MISSING_EXTRA",
    "EXIT_NOT_FOUND",
    "EXIT_REFUSED",
    "EXIT_REFUSED_AUTH",
    "EXIT_UNAVAILABLE",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "OpsError",
    "decode_json",
    "exit_status",
    "quiet_stdout",
    "say",
    "short",
    "write_json",
]

EXIT_MISSING_EXTRA: Final = 1
EXIT_USAGE: Final = 2
EXIT_UNREACHABLE: Final = 3
EXIT_REFUSED_AUTH: Final = 4
EXIT_NOT_FOUND: Final = 5
EXIT_UNAVAILABLE: Final = 6
EXIT_REFUSED: Final = 7


def exit_status(code: int, otherwise: int = EXIT_REFUSED) -> int:
    """The exit status of a refusal with HTTP status or close ``code``, the one table for
    the HTTP API, the WebSocket handshake and a command's ``error`` reply alike."""
    if code in (401, 403, 4401, 4403):
        return EXIT_REFUSED_AUTH
    if code == 404:
        return EXIT_NOT_FOUND
    if code in (429, 1012, 1013) or 500 <= code < 600:
        return EXIT_UNAVAILABLE
    return otherwise


class OpsError(Exception):
    """A command failed: ``message`` goes to stderr in one line, ``status`` is the exit status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def say(line: str, stream: TextIO | None = None) -> None:
    """One line on stderr, however many lines its parts had."""
    stream = stream or sys.stderr
    stream.write(" ".join(line.split()) + "\n")
    stream.flush()


def quiet_stdout() -> None:
    """The reader went away (``| head``): no complaint when Python flushes stdout at exit."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def write_json(value: Any) -> None:
    """``value`` as one JSON line on stdout, flushed so a pipe sees it at once."""
    sys.stdout.buffer.write(msgspec.json.encode(value) + b"\n")
    sys.stdout.buffer.flush()


def decode_json(text: str, what: str) -> Any:
    """``text`` decoded as JSON, or ArgumentTypeError naming ``what``."""
    try:
        return msgspec.json.decode(text.encode(errors="surrogateescape"))
    except msgspec.DecodeError as exc:
        raise argparse.ArgumentTypeError(f"{what} is not valid JSON: {exc}") from None
    except RecursionError:
        raise argparse.ArgumentTypeError(f"{what} is nested too deeply") from None


def short(text: str, size: int = 60) -> str:
    """``text`` cut to ``size`` characters, so an error line stays one line."""
    return text if len(text) <= size else text[: size - 1] + "…"
