"""The broker contract suite, now public as :mod:`hubbub.testing.contract`.

Kept as a re-export so broker test modules import it unchanged; ``task_group``
(``task_group_fixture``) is a fixture for tests that start a networked broker themselves.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest
from anyio.abc import TaskGroup

from hubbub.testing.contract import KEEP as KEEP
from hubbub.testing.contract import WAIT as WAIT
from hubbub.testing.contract import BrokerContract as BrokerContract
from hubbub.testing.contract import BrokerFactory as BrokerFactory
from hubbub.testing.contract import BrokerUnderTest as BrokerUnderTest
from hubbub.testing.contract import ManualClock as ManualClock
from hubbub.testing.contract import Recorder as Recorder
from hubbub.testing.contract import RunningBroker as RunningBroker
from hubbub.testing.contract import data_of as data_of
from hubbub.testing.contract import default_history as default_history
from hubbub.testing.contract import offsets as offsets
from hubbub.testing.contract import publication as publication
from hubbub.testing.contract import requires as requires


@pytest.fixture(name="task_group")
async def task_group_fixture() -> AsyncIterator[TaskGroup]:
    """A task group that owns the background tasks of brokers a test starts (the hub's
    role); cancelled when the test ends."""
    async with anyio.create_task_group() as tg:
        yield tg
        tg.cancel_scope.cancel()


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
    "task_group_fixture",
]
