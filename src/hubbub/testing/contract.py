"""The broker contract: one pytest suite that every :class:`hubbub.brokers.Broker` must pass.

This module needs pytest (and anyio's pytest plugin, which anyio installs);
hubbub itself does not. A broker's test module runs the suite by subclassing
:class:`BrokerContract` and providing one fixture, ``make_broker``: an async
factory that builds a new, not yet started broker together with a way to move
that broker's clock forward (``advance(seconds)``)::

    class TestMyBroker(BrokerContract):
        @pytest.fixture
        def make_broker(self) -> BrokerFactory:
            async def make() -> BrokerUnderTest:
                clock = ManualClock()
                return BrokerUnderTest(MyBroker(clock=clock), clock.advance)

            return make

A broker whose time cannot be faked (a server keeping TTLs itself) makes
``advance`` sleep and may shorten :attr:`BrokerContract.TTL`; a broker that runs
on one event loop only overrides the ``anyio_backend`` fixture (e.g. to return
``"asyncio"``). Every test uses channel names under a fresh random prefix, so
brokers sharing a backend between tests do not see each other's streams.

Delivery may be asynchronous (a broker may hand publications to the handler
from its own reader task after ``publish`` returned): tests wait for what they
expect with a bound, and check that something did *not* arrive by publishing a
marker into another subscribed channel afterwards and waiting for that marker
(which assumes one node receives its channels' publications in publish order
across channels, as over one pub/sub connection).

Capabilities: tests of history, presence and idempotency are skipped for a
broker whose :attr:`~hubbub.brokers.Broker.capabilities` lack them (see
:func:`requires`), and pub/sub tests publish without history options to such a
broker; a broker claiming a capability must pass every test of it. The guide
is ``docs/brokers.md``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import ClassVar

import anyio
import pytest

from hubbub.brokers import Capability

from ._contract_history import HistoryContract
from ._contract_presence import PresenceContract
from ._contract_pubsub import PubSubContract
from ._contract_support import KEEP as KEEP
from ._contract_support import WAIT as WAIT
from ._contract_support import BrokerFactory as BrokerFactory
from ._contract_support import BrokerUnderTest as BrokerUnderTest
from ._contract_support import ManualClock as ManualClock
from ._contract_support import Recorder as Recorder
from ._contract_support import RunningBroker as RunningBroker
from ._contract_support import data_of as data_of
from ._contract_support import default_history as default_history
from ._contract_support import offsets as offsets
from ._contract_support import publication as publication
from ._contract_support import requires as requires

__all__ = [
    "KEEP",
    "WAIT",
    "BrokerContract",
    "BrokerFactory",
    "BrokerUnderTest",
    "ManualClock",
    "Recorder",
    "RunningBroker",
    "data_of",
    "default_history",
    "offsets",
    "publication",
    "requires",
]


class BrokerContract(PubSubContract, HistoryContract, PresenceContract):
    """The contract of :class:`hubbub.brokers.Broker`, run against the broker of ``make_broker``.

    Subclass it as ``Test<YourBroker>`` and override the ``make_broker`` fixture.
    The tests live in three parts (pub/sub and lifecycle, history and
    idempotency, presence), each skipped for a broker lacking its capability.
    """

    pytestmark: ClassVar[list[pytest.MarkDecorator]] = [pytest.mark.anyio]

    TTL: ClassVar[float] = 1.0
    """Seconds used as history TTL, idempotency window and presence lease in expiry tests."""

    LIFECYCLE_ERROR: ClassVar[type[BaseException]] = RuntimeError
    """What the broker raises when started twice or used before :meth:`Broker.start`."""

    @pytest.fixture
    def make_broker(self) -> BrokerFactory:
        """Override: an async factory of new, not yet started brokers of the kind under test."""
        raise NotImplementedError("a BrokerContract subclass must provide make_broker")

    @pytest.fixture
    async def broker(
        self, make_broker: BrokerFactory, request: pytest.FixtureRequest
    ) -> AsyncIterator[RunningBroker]:
        """A broker started in a task group, as the hub starts it, with a recorder as its
        handler; stopped (within :data:`WAIT`) after the test.

        Skips the test when the broker lacks a capability it :func:`requires`.
        """
        built = await make_broker()
        needed: frozenset[Capability] = getattr(request.function, "hubbub_requires", frozenset())
        missing = needed - built.broker.capabilities
        if missing:
            pytest.skip(f"the broker does not declare {', '.join(sorted(missing))}")
        recorder = Recorder()
        # Started as the hub starts it: in a task group that owns its background tasks.
        async with anyio.create_task_group() as tg:
            await built.broker.start(recorder.handler, recorder.on_lost, tg)
            try:
                yield RunningBroker(built.broker, recorder, built.advance)
            finally:
                with anyio.fail_after(WAIT):
                    await built.broker.stop()
                tg.cancel_scope.cancel()
