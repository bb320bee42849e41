"""The broker contract, part three: presence leases."""

from __future__ import annotations

from typing import ClassVar

from hubbub.brokers import Capability
from hubbub.messages import ClientInfo

from ._contract_support import (
    RunningBroker,
    data_of,
    requires,
)

__all__ = ["PresenceContract"]


class PresenceContract:
    """Contract tests of :attr:`Capability.PRESENCE` (part of
    :class:`~hubbub.testing.contract.BrokerContract`)."""

    TTL: ClassVar[float]
    LIFECYCLE_ERROR: ClassVar[type[BaseException]]

    # -- presence ----------------------------------------------------------------------------

    @requires(Capability.PRESENCE)
    async def test_presence_set_and_remove(self, broker: RunningBroker) -> None:
        """A lease appears once set, with its info, and disappears once removed."""
        channel = broker.channel("room")
        ann = ClientInfo(user="u1", client="n.1", name="Ann")
        bob = ClientInfo(user="u2", client="n.2", info={"role": "admin"})
        assert dict(await broker.broker.presence(channel)) == {}
        await broker.broker.presence_set(channel, "n.1", ann, 60.0)
        await broker.broker.presence_set(channel, "n.2", bob, 60.0)
        assert dict(await broker.broker.presence(channel)) == {"n.1": ann, "n.2": bob}
        await broker.broker.presence_remove(channel, "n.1")
        assert dict(await broker.broker.presence(channel)) == {"n.2": bob}
        await broker.broker.presence_remove(channel, "n.2")
        assert dict(await broker.broker.presence(channel)) == {}

    @requires(Capability.PRESENCE)
    async def test_presence_set_again_replaces_the_info(self, broker: RunningBroker) -> None:
        """Setting a client's lease again updates its info; the client is listed once."""
        channel = broker.channel("room")
        await broker.broker.presence_set(channel, "n.1", ClientInfo(user="u1", client="n.1"), 60.0)
        renamed = ClientInfo(user="u1", client="n.1", name="Ann")
        await broker.broker.presence_set(channel, "n.1", renamed, 60.0)
        assert dict(await broker.broker.presence(channel)) == {"n.1": renamed}

    @requires(Capability.PRESENCE)
    async def test_presence_lease_expires_without_refresh(self, broker: RunningBroker) -> None:
        """A lease not refreshed within its TTL vanishes on its own."""
        channel = broker.channel("room")
        ann = ClientInfo(user="u1", client="n.1")
        await broker.broker.presence_set(channel, "n.1", ann, self.TTL)
        await broker.broker.presence_set(
            channel, "n.2", ClientInfo(user="u2", client="n.2"), 3600.0
        )
        await broker.advance(self.TTL * 1.5)
        assert set(await broker.broker.presence(channel)) == {"n.2"}

    @requires(Capability.PRESENCE)
    async def test_presence_refresh_extends_the_lease(self, broker: RunningBroker) -> None:
        """Refreshing before the TTL keeps the client present past the first TTL."""
        channel = broker.channel("room")
        ann = ClientInfo(user="u1", client="n.1")
        await broker.broker.presence_set(channel, "n.1", ann, self.TTL)
        for _ in range(3):
            await broker.advance(self.TTL * 0.6)
            assert dict(await broker.broker.presence(channel)) == {"n.1": ann}
            await broker.broker.presence_set(channel, "n.1", ann, self.TTL)
        await broker.advance(self.TTL * 1.5)
        assert dict(await broker.broker.presence(channel)) == {}

    @requires(Capability.PRESENCE)
    async def test_presence_is_per_channel(self, broker: RunningBroker) -> None:
        """Leases in one channel do not show, expire or get removed with another's."""
        a, b = broker.channel("a"), broker.channel("b")
        ann = ClientInfo(user="u1", client="n.1")
        await broker.broker.presence_set(a, "n.1", ann, 3600.0)
        await broker.broker.presence_set(b, "n.1", ann, self.TTL)
        assert dict(await broker.broker.presence(a)) == {"n.1": ann}
        await broker.advance(self.TTL * 1.5)
        assert dict(await broker.broker.presence(a)) == {"n.1": ann}
        assert dict(await broker.broker.presence(b)) == {}
        await broker.broker.presence_set(b, "n.1", ann, 3600.0)
        await broker.broker.presence_remove(b, "n.1")
        assert dict(await broker.broker.presence(a)) == {"n.1": ann}

    @requires(Capability.PRESENCE)
    async def test_presence_of_names_that_extend_each_other(self, broker: RunningBroker) -> None:
        """``x``, ``x:info`` and ``x:info:info`` keep separate presence, whatever the order."""
        x = broker.channel("x")
        ann = ClientInfo(user="u1", client="n.1")
        bob = ClientInfo(user="u2", client="n.2")
        cat = ClientInfo(user="u3", client="n.3")
        await broker.broker.presence_set(x + ":info", "n.1", ann, 60.0)
        await broker.broker.presence_set(x, "n.2", bob, 60.0)
        await broker.broker.presence_set(x + ":info:info", "n.3", cat, 60.0)
        assert dict(await broker.broker.presence(x)) == {"n.2": bob}
        assert dict(await broker.broker.presence(x + ":info")) == {"n.1": ann}
        assert dict(await broker.broker.presence(x + ":info:info")) == {"n.3": cat}

    @requires(Capability.HISTORY)
    async def test_streams_of_names_that_look_like_keys(self, broker: RunningBroker) -> None:
        """Names shaped like another channel's internal keys keep their own streams."""
        a = broker.channel("a")
        names = [a, a + ":meta", "stream:" + a, a + "}:stream", "{" + a]
        for n, name in enumerate(names):
            await broker.publish(name, str(n).encode())
        for n, name in enumerate(names):
            assert data_of((await broker.broker.history(name)).publications) == [str(n).encode()]

    @requires(Capability.PRESENCE)
    async def test_removing_an_absent_client_is_harmless(self, broker: RunningBroker) -> None:
        """Removing a lease that does not exist (or expired) raises nothing and changes nothing."""
        channel = broker.channel("room")
        await broker.broker.presence_remove(broker.channel("empty"), "n.1")
        ann = ClientInfo(user="u1", client="n.1")
        await broker.broker.presence_set(channel, "n.1", ann, 3600.0)
        await broker.broker.presence_remove(channel, "n.9")
        await broker.broker.presence_remove(channel, "n.1")
        await broker.broker.presence_remove(channel, "n.1")
        assert dict(await broker.broker.presence(channel)) == {}
