"""Token redaction for logs: what keeps credentials out of every log line.

A leaf module: the connection layer redacts the reasons it logs, the
middleware and ``hubbub serve`` install the filter, and none of them may
import the others for it.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["RedactTokens", "install_log_redaction", "redact"]

_REDACTIONS = (
    # ?token=... / &access_token=... in paths and URLs, hubbub_token=... in a Cookie header
    (
        re.compile(r"((?:^|[?&;\s])(?:access_|hubbub_)?token=)[^&;\s\"']*", re.IGNORECASE),
        r"\1[redacted]",
    ),
    # Authorization: Bearer ..., and the bearer.<token> subprotocol
    (re.compile(r"(bearer[ :.])[A-Za-z0-9\-_.~+/]+=*", re.IGNORECASE), r"\1[redacted]"),
    # "token": "..." in a JSON frame (refresh, subscribe with a channel token)
    (re.compile(r"(\"(?:access_)?token\"\s*:\s*\")[^\"]*", re.IGNORECASE), r"\1[redacted]"),
    # the same in a msgpack frame (read as latin-1): "token", a str header, printable ASCII
    (
        re.compile(r"(\xa5token(?:[\xa0-\xbf]|\xd9[\s\S]|\xda[\s\S]{2}))[\x21-\x7e]*"),
        r"\1[redacted]",
    ),
    # anything shaped like a JWS (three base64url parts, the first a JSON header)
    (re.compile(r"eyJ[A-Za-z0-9_\-]*\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]*"), "[redacted]"),
)


def redact(text: str) -> str:
    """``text`` with every token it may hold replaced by ``[redacted]``."""
    for pattern, replacement in _REDACTIONS:
        text = pattern.sub(replacement, text)
    return text


def _redacted_argument(argument: Any) -> Any:
    """``argument`` unchanged when it shows no token, else a string without it.

    A WebSocket frame (websockets' ``Frame``, logged at DEBUG as ``"< %s"``) shows
    only the start and end of its payload, a token's header and the end of its
    signature among them, where no pattern can recognise it: its whole payload is
    redacted first, then shown the same elided way.
    """
    if isinstance(argument, str):
        return redact(argument)
    if isinstance(argument, int | float | bool | None):
        return argument
    if _is_frame(argument):
        # latin-1 maps bytes to characters one to one, so binary (msgpack) frames too.
        payload = bytes(argument.data).decode("latin-1")
        cleaned = redact(payload)
        if cleaned != payload and dataclasses.is_dataclass(argument):
            argument = dataclasses.replace(argument, data=cleaned.encode("latin-1"))  # type: ignore[type-var]
    try:
        text = str(argument)
    except Exception:  # a broken __str__ is not ours to fix
        return argument
    cleaned = redact(text)
    return argument if cleaned == text else cleaned


def _is_frame(argument: Any) -> bool:
    return hasattr(argument, "opcode") and isinstance(
        getattr(argument, "data", None), bytes | bytearray | memoryview
    )


class RedactTokens(logging.Filter):
    """A logging filter that removes tokens from log records (never drops a record).

    uvicorn writes the full path of every request with its query string at INFO,
    so ``?token=<jwt>`` would land in the access log; ``hubbub serve`` installs
    this filter on every handler. With your own uvicorn, call
    :func:`install_log_redaction` after logging is configured.

    Tokens are redacted inside ``record.args``, which keep their shape: uvicorn's
    access formatter unpacks them as a 5-tuple, so replacing them would turn every
    access line into a ``--- Logging error ---`` traceback. Only a token split
    between the format string and an argument (which no logger here writes) makes
    the filter fall back to the formatted, redacted message without arguments.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        self._redact_traceback(record)
        try:
            message = record.getMessage()
        except Exception:  # a broken record is not ours to fix
            return True
        args = record.args
        frames = isinstance(args, tuple) and any(_is_frame(argument) for argument in args)
        if not frames and redact(message) == message:
            return True
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(args, tuple):
            record.args = tuple(_redacted_argument(argument) for argument in args)
        elif isinstance(args, Mapping):
            record.args = {key: _redacted_argument(value) for key, value in args.items()}
        try:
            cleaned = record.getMessage()
        except Exception:
            cleaned = message
        if redact(cleaned) != cleaned:
            record.msg, record.args = redact(message), ()
        return True

    @staticmethod
    def _redact_traceback(record: logging.LogRecord) -> None:
        """An exception's message can show a URL or header with its token.

        A formatter writes ``exc_text`` when it is set and only formats
        ``exc_info`` itself when it is not: formatting it here, redacted, is the
        one place a filter can reach the traceback. A formatter with its own
        ``formatException`` then gets the standard layout, a price worth paying.
        """
        if record.exc_info and not record.exc_text:
            try:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
            except Exception:  # a broken exception is not ours to fix
                return
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)


def install_log_redaction(
    loggers: Iterable[str] = ("", "uvicorn", "uvicorn.error", "uvicorn.access", "hubbub"),
) -> RedactTokens:
    """Add one :class:`RedactTokens` to every handler of ``loggers`` (and to the loggers).

    Filters on a logger see only records logged on it directly, while handler
    filters see everything the handler writes, propagated records included.
    """
    redactor = RedactTokens()
    for name in loggers:
        logger = logging.getLogger(name)
        if redactor not in logger.filters:
            logger.addFilter(redactor)
        for handler in logger.handlers:
            if redactor not in handler.filters:
                handler.addFilter(redactor)
    return redactor
