"""The close-code table (``hubbub._closes``) against §7 and every list that copies it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hubbub import _closes, _errors, protocol
from hubbub._closes import CLOSE_CODES, COUNTED, FINAL, RECONNECT, close_label

ROOT = Path(__file__).parent.parent
JS = (ROOT / "src" / "hubbub" / "static" / "hubbub.js").read_text()


def _js_set(name: str) -> frozenset[int]:
    """The integers of ``const <name> = new Set([...]);`` in hubbub.js."""
    match = re.search(rf"const {name} = new Set\(\[([0-9,\s]*)\]\);", JS)
    assert match is not None, name
    return frozenset(int(n) for n in match[1].split(",") if n.strip())


def _js_const(name: str) -> int:
    match = re.search(rf"const {name} = (\d+);", JS)
    assert match is not None, name
    return int(match[1])


def _section_7() -> dict[int, str]:
    """§7 of docs/protocol.md as code → the first word of its "reconnect?" cell."""
    text = (ROOT / "docs" / "protocol.md").read_text()
    section = text.split("## 7. Close codes", 1)[1].split("\n## ", 1)[0]
    rows: dict[int, str] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not re.fullmatch(r"\d{4}(, \d{4})*", cells[0]):
            continue
        answer = cells[2]
        verdict = "new token" if answer.startswith("with a new token") else answer.split(",")[0]
        for code in cells[0].split(", "):
            rows[int(code)] = verdict
    return rows


def test_table_matches_section_7() -> None:
    """Every code of the table is in §7 with the same reconnect answer, and nothing else is."""
    documented = _section_7()
    assert {code: c.reconnect for code, c in CLOSE_CODES.items()} == documented


def test_table_rows_are_consistent() -> None:
    """Each row is filed under its own code; reserved codes are never final."""
    for code, row in CLOSE_CODES.items():
        assert row.code == code
        assert row.name.isupper()
        if row.observed:
            assert row.reconnect == "yes"


def test_python_client_final_closes_match() -> None:
    """The Python client's final closes are the table's, and 4401 is its token code."""
    pytest.importorskip("httpx_ws")
    from hubbub.client import _client

    assert _client._FINAL_CLOSES == FINAL
    assert CLOSE_CODES[_client._TOKEN_EXPIRED].reconnect == "new token"


def test_js_client_final_closes_match() -> None:
    """hubbub.js's FINAL_CLOSE_CODES are the table's, and its TOKEN_EXPIRED is 4401."""
    assert _js_set("FINAL_CLOSE_CODES") == FINAL
    assert CLOSE_CODES[_js_const("TOKEN_EXPIRED")].reconnect == "new token"


def test_protocol_constants_name_the_table() -> None:
    """``hubbub.protocol``'s close-code constants carry the table's names and codes."""
    for row in CLOSE_CODES.values():
        value = getattr(protocol, row.name, None)
        if value is not None:
            assert value == row.code, row.name
    assert protocol.RECONNECT is RECONNECT


def test_server_sets_are_unchanged() -> None:
    """The derived sets are the ones the server used before the table existed."""
    assert RECONNECT == {1001, 1011, 1012, 1013, 4408, 4429}
    assert COUNTED == {1000, 1001, 1005, 1006, 1008, 1009, 1011, 1012, 1013, 4401, 4403, 4408, 4429}
    assert FINAL == {1000, 1002, 1003, 1007, 1008, 1009, 1010, 4403}


def test_every_error_close_code_is_in_the_table() -> None:
    """Each HubbubError's close code is a row of the table."""
    for name in _errors.__all__:
        assert getattr(_errors, name).close_code in CLOSE_CODES, name


@pytest.mark.parametrize(
    ("code", "label"), [(1000, "1000"), (4429, "4429"), (1007, "other"), (3000, "other")]
)
def test_close_label(code: int, label: str) -> None:
    """Counted codes are labelled by value, every other code (client-chosen too) ``other``."""
    assert close_label(code) == label


def test_module_is_a_leaf() -> None:
    """``hubbub._closes`` imports nothing from hubbub."""
    source = Path(_closes.__file__).read_text()
    assert not re.search(r"^from \.|^import hubbub|^from hubbub", source, re.MULTILINE)
