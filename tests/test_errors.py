"""The error tree: each HubbubError maps to the codes its module's docstring table states."""

from __future__ import annotations

import inspect
import re

import pytest

import hubbub
from hubbub import _errors
from hubbub._errors import HubbubError

_ROW = re.compile(r"^(?P<indent>[\s│├└─]*)(?P<name>[A-Za-z]+)\s+(?P<code>\d{3})\s+(?P<close>\d{4})\s+(?P<http>\d{3})\s*$")


def _table() -> dict[str, tuple[int, int, int, str | None]]:
    """Parse the docstring table into name → (code, close code, HTTP status, parent name)."""
    rows: dict[str, tuple[int, int, int, str | None]] = {}
    stack: list[tuple[int, str]] = []
    for line in (_errors.__doc__ or "").splitlines():
        match = _ROW.match(line)
        if match is None:
            continue
        column = len(match["indent"])
        while stack and stack[-1][0] >= column:
            stack.pop()
        parent = stack[-1][1] if stack else None
        rows[match["name"]] = (int(match["code"]), int(match["close"]), int(match["http"]), parent)
        stack.append((column, match["name"]))
    return rows


TABLE = _table()
ERROR_CLASSES = {
    name: value
    for name, value in vars(_errors).items()
    if inspect.isclass(value) and issubclass(value, HubbubError)
}


def test_table_is_parsed() -> None:
    """The docstring table is found and has HubbubError as its only root."""
    assert len(TABLE) >= 10
    roots = [name for name, row in TABLE.items() if row[3] is None]
    assert roots == ["HubbubError"]


def test_table_lists_every_error_class() -> None:
    """Every HubbubError subclass in _errors appears in the table, and nothing else does."""
    assert set(TABLE) == set(ERROR_CLASSES)


@pytest.mark.parametrize("name", sorted(TABLE))
def test_error_codes_match_table(name: str) -> None:
    """Each error class carries the code, close code and HTTP status of its table row."""
    code, close_code, http_status, _ = TABLE[name]
    cls = ERROR_CLASSES[name]
    assert (cls.code, cls.close_code, cls.http_status) == (code, close_code, http_status)


@pytest.mark.parametrize("name", sorted(TABLE))
def test_error_tree_matches_table(name: str) -> None:
    """Each error class derives directly from the parent the drawn tree shows."""
    parent = TABLE[name][3]
    cls = ERROR_CLASSES[name]
    if parent is None:
        assert cls.__bases__ == (Exception,)
    else:
        assert cls.__bases__ == (ERROR_CLASSES[parent],)


@pytest.mark.parametrize("name", sorted(TABLE))
def test_error_is_exported(name: str) -> None:
    """Every error of the tree is listed in _errors.__all__ and exported by hubbub."""
    assert name in _errors.__all__
    assert getattr(hubbub, name) is ERROR_CLASSES[name]


@pytest.mark.parametrize("name", sorted(TABLE))
def test_error_reason_defaults(name: str) -> None:
    """Without a reason an error uses its default reason; with one, it keeps it."""
    cls = ERROR_CLASSES[name]
    default = cls()
    assert default.reason == cls.default_reason
    assert default.reason
    assert str(default) == cls.default_reason
    given = cls("something specific")
    assert given.reason == "something specific"
    assert str(given) == "something specific"


def test_error_codes_are_wire_codes() -> None:
    """Every error.code is one of the codes PROTOCOL §3 lists."""
    documented = {400, 401, 403, 404, 409, 410, 413, 422, 429, 500, 503}
    assert {cls.code for cls in ERROR_CLASSES.values()} <= documented


def test_close_codes_are_documented() -> None:
    """Every close code is one of the codes PROTOCOL §7 lists."""
    documented = {1000, 1001, 1008, 1009, 1011, 1012, 1013, 4401, 4403, 4408, 4429}
    assert {cls.close_code for cls in ERROR_CLASSES.values()} <= documented


def test_errors_are_catchable_as_root() -> None:
    """Every error is caught by ``except HubbubError``."""
    for cls in ERROR_CLASSES.values():
        with pytest.raises(HubbubError):
            raise cls()
