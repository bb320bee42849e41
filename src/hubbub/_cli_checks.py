"""``hubbub serve``'s argument checks and target loading: refuse before anything starts.

Every flag and ``HUBBUB_*`` value is checked here with one-line errors (exit
status 2, argparse's), and the ``module:attribute`` target is imported and
checked to be something servable (exit status 1 otherwise), so a mistake never
shows as a traceback or as a server answering 500 to every request.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import math
import os
import socket
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any, NoReturn

from .app import HubApp
from .hub import Hub

__all__ = [
    "LOG_LEVELS",
    "WS_COMPRESSIONS",
    "WS_IMPLEMENTATIONS",
    "BadArgument",
    "BadVariable",
    "Parser",
    "check_host",
    "check_servable",
    "env",
    "import_target_module",
    "load_target",
    "log_level",
    "port",
    "positive_bytes",
    "positive_seconds",
    "seconds",
    "summary",
    "switch",
    "ws_compression",
    "ws_name",
]

# uvicorn's levels; its "trace" (5) is not one of logging's names until uvicorn configures logging.
LOG_LEVELS = {"critical": 50, "error": 40, "warning": 30, "info": 20, "debug": 10, "trace": 5}
# uvicorn's --ws names, and the module each needs ("auto" needs either).
WS_IMPLEMENTATIONS = {
    "auto": ("websockets", "wsproto"),
    "websockets-sansio": ("websockets",),
    "websockets": ("websockets",),
    "wsproto": ("wsproto",),
    "none": (),
}
# server.ws_compression's values (docs/design.md, "Pre-framed fan-out"), the default first.
WS_COMPRESSIONS = ("shared", "per-connection", "off")


class BadArgument(SystemExit):
    """A flag or ``HUBBUB_*`` value refused after parsing: one line, exit status 2 (argparse's)."""


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``hubbub serve: error: ...`` and exit 2, no usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class BadVariable:
    """A ``HUBBUB_*`` value that its flag's check refused.

    Kept as the option's default and reported only when the flag is not given
    on the command line (the flag wins), and only by ``serve``.
    """

    def __init__(self, message: str) -> None:
        self.message = message


def env(name: str, default: Any = None, convert: Callable[[str], Any] = str) -> Any:
    raw = os.environ.get(f"HUBBUB_{name}")
    if raw is None:
        return default
    try:
        return convert(raw)
    except (ValueError, argparse.ArgumentTypeError) as exc:
        return BadVariable(f"HUBBUB_{name}={raw!r}: {exc}")


def port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 1 <= port <= 65535:
        # uvicorn would take it modulo 65536 and bind another port.
        raise argparse.ArgumentTypeError(f"{port} is not a TCP port (1-65535)")
    return port


def check_host(host: str) -> None:
    """``--host`` names an address this machine can bind: resolved and tried before serving.

    uvicorn would log ``[Errno -2] Name or service not known`` without naming the host.
    """
    flag = f"--host/HUBBUB_HOST {host!r}"
    try:
        addresses = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise BadArgument(f"hubbub serve: error: {flag} is not an address: {reason}") from None
    error: OSError | None = None
    for family, kind, proto, _, address in addresses:
        try:
            with socket.socket(family, kind, proto) as probe:
                probe.bind((address[0], 0, *address[2:]))
        except OSError as exc:
            error = exc
        else:
            return
    reason = error.strerror if error is not None and error.strerror else str(error)
    raise BadArgument(f"hubbub serve: error: {flag} is not an address of this machine: {reason}")


def _finite(text: str) -> float:
    """``text`` as a finite number, or NaN (which every range check refuses)."""
    try:
        number = float(text)
    except ValueError:
        return math.nan
    return number if math.isfinite(number) else math.nan


def positive_seconds(text: str) -> float:
    value = _finite(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def seconds(text: str) -> float:
    value = _finite(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds (0 or more)")
    return value


def positive_bytes(text: str) -> int:
    try:
        size = int(text)
    except ValueError:
        size = 0
    if size <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number of bytes")
    return size


def log_level(text: str) -> str:
    if text.lower() not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a log level: {', '.join(LOG_LEVELS)}")
    return text.lower()


def ws_name(text: str) -> str:
    if text not in WS_IMPLEMENTATIONS:
        names = ", ".join(WS_IMPLEMENTATIONS)
        raise argparse.ArgumentTypeError(f"{text!r} is not one of uvicorn's: {names}")
    return text


def ws_compression(text: str) -> str:
    if text not in WS_COMPRESSIONS:
        raise argparse.ArgumentTypeError(f"{text!r} is not one of: {', '.join(WS_COMPRESSIONS)}")
    return text


def switch(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("", "0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not 1/true/yes/on or 0/false/no/off")


def summary(exc: BaseException) -> str:
    """``Type: first line of the message``: what a traceback's last line says."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def import_target_module(module_name: str) -> ModuleType:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        parts = module_name.split(".")
        if exc.name in {".".join(parts[:end]) for end in range(1, len(parts) + 1)}:
            raise SystemExit(
                f"hubbub serve: error: no module named {exc.name!r} "
                f"(searched the current directory and sys.path)"
            ) from None
        failure: Exception = exc
    except Exception as exc:
        failure = exc
    raise SystemExit(
        f"hubbub serve: error: importing {module_name!r} raised {summary(failure)} "
        f"(python -c 'import {module_name}' shows the traceback)"
    )


def check_servable(target: str, obj: Any) -> None:
    """Refuse what is neither a Hub, a HubApp nor an ASGI app: it would answer 500 to everything."""
    if isinstance(obj, Hub | HubApp):
        return
    if inspect.isclass(obj):
        what = f"the class {obj.__name__}, not an instance of it"
    elif not callable(obj):
        name = type(obj).__name__
        what = f"{'an' if name[0] in 'aeiouAEIOU' else 'a'} {name}"
    else:
        try:
            signature = inspect.signature(obj)
        except (TypeError, ValueError):
            return  # a callable without a signature: let the server judge it
        for arity in (3, 1):  # ASGI 3 (scope, receive, send), ASGI 2 (scope)
            try:
                signature.bind(*[None] * arity)
            except TypeError:
                continue
            return
        what = f"a {type(obj).__name__} taking {signature} (an app factory? call it in the module)"
    raise SystemExit(
        f"hubbub serve: error: {target!r} is {what}, not a Hub, a HubApp or an ASGI app"
    )


def load_target(target: str) -> Any:
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise BadArgument(f"hubbub serve: error: expected module:attribute, got {target!r}")
    sys.path.insert(0, os.getcwd())
    obj: Any = import_target_module(module_name)
    where = module_name
    for name in attr.split("."):
        try:
            obj = getattr(obj, name)
        except AttributeError:
            owner = f"module {where!r}" if where == module_name else repr(where)
            raise SystemExit(f"hubbub serve: error: {owner} has no attribute {name!r}") from None
        where = f"{where}:{name}" if where == module_name else f"{where}.{name}"
    check_servable(target, obj)
    return obj
