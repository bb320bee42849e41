"""A hub with anonymous access off and no authenticator: every client is refused 401."""

from __future__ import annotations

from hubbub import Hub

hub = Hub()
