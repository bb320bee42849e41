"""Brokers: the :class:`Broker` extension point and the brokers that ship.

``MemoryBroker`` (one process, the default) is imported here; other brokers
live in their own modules and are imported only when used, so ``import
hubbub`` never imports a backend's client library.
"""

from __future__ import annotations

from ._base import Broker as Broker
from ._base import HistoryOptions as HistoryOptions
from ._base import HistoryPage as HistoryPage
from ._base import Idempotency as Idempotency
from ._base import LossHandler as LossHandler
from ._base import Publication as Publication
from ._base import PublicationHandler as PublicationHandler
from ._base import PublicationKind as PublicationKind
from .memory import MemoryBroker as MemoryBroker

__all__ = [
    "Broker",
    "HistoryOptions",
    "HistoryPage",
    "Idempotency",
    "LossHandler",
    "MemoryBroker",
    "Publication",
    "PublicationHandler",
    "PublicationKind",
]
