"""Deprecated since 0.2: the HTTP API client moved to :mod:`hubbub.client.api`.

``from hubbub.api_client import HubbubAPI`` still works and warns
(``DeprecationWarning``); import from ``hubbub.client`` (``HubbubAPI``,
``AsyncHubbubAPI``, ``HubbubAPIError``) or ``hubbub.client.api`` instead.
Importing this module alone imports nothing else: the new module (and httpx
with the client package) is loaded when a name is first read.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any, Final

_NAMES: Final = frozenset(
    {
        "DEFAULT_TIMEOUT",
        "AsyncHubbubAPI",
        "BroadcastOutcome",
        "ChannelHistory",
        "HistoryMessage",
        "HubbubAPI",
        "HubbubAPIError",
        "PresenceInfo",
        "Stats",
    }
)


def __getattr__(name: str) -> Any:
    if name not in _NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(
        f"hubbub.api_client is deprecated; import {name} from hubbub.client.api",
        DeprecationWarning,
        stacklevel=2,
    )
    return getattr(importlib.import_module("hubbub.client.api"), name)


def __dir__() -> list[str]:
    return sorted(_NAMES)
