"""The JSON depth check (``hubbub.messages.json_too_deep``) against a plain reference.

The check works on bytes with ``translate``/``replace`` passes instead of a
regex, so it is held to the obvious implementation — strings matched by a
regex that knows escapes, then a running count of brackets — on generated
documents whose strings are full of brackets, quotes and backslashes, around
the limit, and on payloads that hubbub refuses end to end.
"""

from __future__ import annotations

import re
from itertools import accumulate
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hubbub._errors import InvalidMessage
from hubbub.messages import JSON, MAX_DEPTH, json_too_deep

_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_DELTA = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}
_NOT_BRACKETS = bytes(b for b in range(256) if b not in _DELTA)


def reference_depth(buf: bytes) -> int:
    brackets = _STRING.sub(b"", buf).translate(None, _NOT_BRACKETS)
    return max(accumulate((_DELTA[b] for b in brackets), initial=0))


TRICKY = st.sampled_from(["[", "]", "{", "}", '"', "\\", '\\"', "\\\\", '"]', "a", ""])
STRINGS = st.lists(TRICKY, max_size=6).map("".join)
LEAVES = st.one_of(st.none(), st.integers(), st.floats(allow_nan=False), STRINGS)


def documents(max_leaves: int) -> st.SearchStrategy[Any]:
    return st.recursive(
        LEAVES,
        lambda inner: st.one_of(
            st.lists(inner, max_size=3), st.dictionaries(STRINGS, inner, max_size=3)
        ),
        max_leaves=max_leaves,
    )


def nest(value: Any, levels: int, kinds: list[str]) -> Any:
    for i in range(levels):
        value = [value] if kinds[i % len(kinds)] == "list" else {'k"[\\': value}
    return value


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    documents(40),
    st.integers(min_value=0, max_value=2 * MAX_DEPTH),
    st.lists(st.sampled_from(["list", "dict"]), min_size=1, max_size=4),
)
def test_depth_check_agrees_with_the_reference(value: Any, extra: int, kinds: list[str]) -> None:
    buf = msgspec.json.encode(nest(value, extra, kinds))
    assert json_too_deep(buf) == (reference_depth(buf) > MAX_DEPTH)


@pytest.mark.parametrize("depth", [MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1, 3 * MAX_DEPTH])
@pytest.mark.parametrize(
    ("opener", "closer"),
    [(b"[", b"]"), (b'{"a":', b"}"), (b'["[{",', b"]"), (b'{"\\"}":', b"}"), (b'[{"x":', b"}]")],
)
def test_at_the_limit(depth: int, opener: bytes, closer: bytes) -> None:
    buf = opener * depth + b"1" + closer * depth
    assert json_too_deep(buf) == (reference_depth(buf) > MAX_DEPTH)


def test_a_wide_shallow_payload_with_bracket_laden_strings_passes() -> None:
    payload = msgspec.json.encode(
        [{"text": '[[[{{{"\\', "n": i, "tags": ["]", "}"]} for i in range(2000)]
    )
    assert not json_too_deep(payload)
    frame = b'{"type":"publish","channel":"a","id":3,"data":' + payload + b"}"
    JSON.decode(frame)


def test_a_deep_payload_hidden_among_strings_is_refused() -> None:
    payload = msgspec.json.encode(["[" * 100, nest(1, MAX_DEPTH, ["list", "dict"]), "]" * 100])
    frame = b'{"type":"publish","channel":"a","id":3,"data":' + payload + b"}"
    with pytest.raises(InvalidMessage) as info:
        JSON.decode(frame)
    assert "nested deeper" in info.value.reason
