"""The error tree: each HubbubError maps to the codes its module's docstring table states."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

import hubbub
from hubbub import _errors
from hubbub._errors import HubbubError

_HEADER = re.compile(r"^\s*(?P<name>[A-Za-z]+)\s+code\s+close\s+http\s*$")
_ROW = re.compile(
    r"^(?P<indent>[\s│├└─]*)(?P<name>[A-Za-z]+)"
    r"\s+(?P<code>\d{3})\s+(?P<close>\d{4})\s+(?P<http>\d{3})\s*$"
)


def _table() -> tuple[str | None, dict[str, tuple[int, int, int, str]]]:
    """Parse the docstring table: the root's name, and name → (code, close, http, parent)."""
    root: str | None = None
    rows: dict[str, tuple[int, int, int, str]] = {}
    stack: list[tuple[int, str]] = []
    for line in (_errors.__doc__ or "").splitlines():
        header = _HEADER.match(line)
        if header is not None:
            root = header["name"]
            stack = [(len(line) - len(line.lstrip()), root)]
            continue
        match = _ROW.match(line)
        if match is None:
            continue
        column = len(match["indent"])
        while stack and stack[-1][0] >= column:
            stack.pop()
        if not stack:
            continue
        parent = stack[-1][1]
        rows[match["name"]] = (int(match["code"]), int(match["close"]), int(match["http"]), parent)
        stack.append((column, match["name"]))
    return root, rows


ROOT, TABLE = _table()
ERROR_CLASSES = {
    name: value
    for name, value in vars(_errors).items()
    if inspect.isclass(value) and issubclass(value, HubbubError)
}


def test_table_is_parsed() -> None:
    """The docstring table is found, rooted at HubbubError."""
    assert ROOT == "HubbubError"
    assert len(TABLE) >= 10


def test_table_lists_every_error_class() -> None:
    """Every HubbubError subclass in _errors appears in the table, and nothing else does."""
    assert set(TABLE) | {ROOT} == set(ERROR_CLASSES)


def test_root_is_an_exception() -> None:
    """HubbubError derives from Exception and defaults to the internal-error codes."""
    assert HubbubError.__bases__ == (Exception,)
    internal = TABLE["InternalError"][:3]
    assert (HubbubError.code, HubbubError.close_code, HubbubError.http_status) == internal


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
    assert ERROR_CLASSES[name].__bases__ == (ERROR_CLASSES[parent],)


@pytest.mark.parametrize("name", sorted(ERROR_CLASSES))
def test_error_is_exported(name: str) -> None:
    """Every error of the tree is listed in _errors.__all__ and exported by hubbub."""
    assert name in _errors.__all__
    assert getattr(hubbub, name) is ERROR_CLASSES[name]


@pytest.mark.parametrize("name", sorted(ERROR_CLASSES))
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


# Errors only an HTTP request can cause, never sent in an `error` frame: their
# codes are HTTP statuses of PROTOCOL §1 (SSE) and §8 (the HTTP API), not §3's.
HTTP_ONLY = {"MethodNotAllowed": 405}


def test_error_codes_are_wire_codes() -> None:
    """Every error.code but the HTTP-only ones is one of the codes PROTOCOL §3 lists."""
    documented = {400, 401, 403, 404, 409, 410, 413, 422, 429, 500, 503}
    sent = {cls.code for name, cls in ERROR_CLASSES.items() if name not in HTTP_ONLY}
    assert sent <= documented


@pytest.mark.parametrize("name", sorted(HTTP_ONLY))
def test_http_only_errors_are_documented_statuses(name: str) -> None:
    """An HTTP-only error has its status as code, and PROTOCOL names that status."""
    protocol = (Path(__file__).parent.parent / "docs" / "protocol.md").read_text()
    cls = ERROR_CLASSES[name]
    assert cls.code == cls.http_status == HTTP_ONLY[name]
    assert f"{HTTP_ONLY[name]} " in protocol
    assert name in (_errors.__doc__ or "").split("Configuration mistakes")[-2]


def test_close_codes_are_documented() -> None:
    """Every close code is one of the codes PROTOCOL §7 lists."""
    documented = {1000, 1001, 1008, 1009, 1011, 1012, 1013, 4401, 4403, 4408, 4429}
    assert {cls.close_code for cls in ERROR_CLASSES.values()} <= documented


def test_errors_are_catchable_as_root() -> None:
    """Every error is caught by ``except HubbubError``."""
    for cls in ERROR_CLASSES.values():
        with pytest.raises(HubbubError):
            raise cls()
