"""Limits: the protocol's defaults, and every option checked when Limits is built."""

from __future__ import annotations

import dataclasses
import math

import pytest

from hubbub.limits import Limits

SECONDS = ("ping_interval", "pong_timeout", "close_timeout")
COUNTS = (
    "max_message_size",
    "max_invalid",
    "max_channels",
    "queue_messages",
    "queue_bytes",
    "batch_bytes",
)


def test_defaults_follow_the_protocol() -> None:
    """The defaults are the figures of PROTOCOL §6 and §9."""
    limits = Limits()
    assert limits.ping_interval == 25
    assert limits.pong_timeout == 10
    assert limits.max_message_size == 64 * 1024
    assert limits.max_invalid == 10
    assert limits.max_channels == 128
    assert limits.queue_messages == 1000
    assert limits.queue_bytes == 1024 * 1024


def test_idle_timeout_is_ping_plus_pong_timeout() -> None:
    """A client is idle after ping_interval + pong_timeout seconds of silence."""
    assert Limits().idle_timeout == 35
    assert Limits(ping_interval=2, pong_timeout=0.5).idle_timeout == 2.5


def test_limits_are_frozen() -> None:
    """Limits cannot be changed after construction (and so cannot bypass validation)."""
    limits = Limits()
    with pytest.raises(dataclasses.FrozenInstanceError):
        limits.max_channels = 1  # type: ignore[misc]


def test_smallest_valid_values_are_accepted() -> None:
    """Every count accepts 1 and every duration accepts a small positive float."""
    limits = Limits(**dict.fromkeys(COUNTS, 1), **dict.fromkeys(SECONDS, 0.001))
    assert limits.max_channels == 1
    assert limits.ping_interval == 0.001


@pytest.mark.parametrize("option", SECONDS)
@pytest.mark.parametrize("value", [0, -1, -0.5, math.nan])
def test_durations_must_be_positive(option: str, value: float) -> None:
    """A zero, negative or NaN duration is a ValueError naming the option."""
    with pytest.raises(ValueError, match=rf"Limits\.{option}"):
        Limits(**{option: value})


@pytest.mark.parametrize("option", SECONDS)
@pytest.mark.parametrize("value", ["5", None, True])
def test_durations_must_be_numbers(option: str, value: object) -> None:
    """A duration that is not a number is a TypeError or ValueError naming the option."""
    with pytest.raises((TypeError, ValueError), match=rf"Limits\.{option}"):
        Limits(**{option: value})


@pytest.mark.parametrize("option", COUNTS)
@pytest.mark.parametrize("value", [0, -1, 1.5, 2.0, "10", None, True])
def test_counts_must_be_positive_integers(option: str, value: object) -> None:
    """A count that is not a positive int (bool excluded) is refused, naming the option."""
    with pytest.raises((TypeError, ValueError), match=rf"Limits\.{option}"):
        Limits(**{option: value})
