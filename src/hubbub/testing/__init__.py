"""Helpers for testing applications built on hubbub, and brokers written for it.

``HubTester`` runs a hub in-process; its ``connect()`` returns a
``ScriptedClient`` speaking the wire protocol through the real ASGI app
without sockets; ``FaultyBroker`` breaks the broker on command (outage, lost
deliveries, stall, epoch reset) and clients can be dropped or frozen. Works on
asyncio and trio, needs no test framework. The broker contract suite lives in
``hubbub.testing.contract`` (it needs pytest). Guide: ``docs/testing.md``.
"""

from __future__ import annotations

from ._client import CommandFailed as CommandFailed
from ._client import ConnectionClosed as ConnectionClosed
from ._client import HandshakeRefused as HandshakeRefused
from ._client import ScriptedClient as ScriptedClient
from ._faults import FaultyBroker as FaultyBroker
from ._tester import HubTester as HubTester

__all__ = [
    "CommandFailed",
    "ConnectionClosed",
    "FaultyBroker",
    "HandshakeRefused",
    "HubTester",
    "ScriptedClient",
]
