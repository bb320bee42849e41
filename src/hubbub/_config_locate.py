"""Where a key is in a TOML text: the line a ``ConfigError`` points at.

tomllib returns plain values and keeps no positions, yet an error that says
``hubbub.toml:12:`` is found at once while one that names only the key is not.
So :func:`find_line` reads the text again, line by line, and indexes each
dotted key, table and array element by the line it starts on. It is pure text
work, knows nothing of hubbub's keys, and so sits apart from the loader.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

__all__ = ["find_line"]

_TABLE_ARRAY = re.compile(r"^\[\[\s*(.+?)\s*\]\]\s*(#.*)?$")
_TABLE = re.compile(r"^\[\s*([^\[\]]+?)\s*\]\s*(#.*)?$")
_ASSIGN = re.compile(
    r"""^((?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*'))*)\s*=\s*(.*)$"""
)
_INLINE_KEY = re.compile(r"""(?:^|[{,])\s*([A-Za-z0-9_-]+|"[^"]*")\s*=""")


def _key_parts(text: str) -> list[str]:
    parts = re.findall(r"""[A-Za-z0-9_-]+|"[^"]*"|'[^']*'""", text)
    return [p[1:-1] if p[:1] in "\"'" else p for p in parts]


def _index(text: str) -> dict[str, int]:
    """Each dotted key, table and array element of a TOML text → the line it starts on."""
    index: dict[str, int] = {}
    counts: dict[str, int] = {}
    current: list[str] = []
    open_string: str | None = None
    depth = 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if open_string is not None:
            if line.count(open_string) % 2 == 1:
                open_string = None
            continue
        if depth > 0:
            depth += line.count("[") - line.count("]")
            continue
        if not line or line.startswith("#"):
            continue
        found = _TABLE_ARRAY.match(line)
        if found:
            path = ".".join(_qualify(_key_parts(found.group(1))[:-1], counts))
            name = (path + "." if path else "") + _key_parts(found.group(1))[-1]
            counts[name] = counts.get(name, 0) + 1
            current = [f"{name}[{counts[name] - 1}]"]
            index.setdefault(name, number)
            index.setdefault(current[0], number)
            continue
        found = _TABLE.match(line)
        if found:
            current = [".".join(_qualify(_key_parts(found.group(1)), counts))]
            index.setdefault(current[0], number)
            continue
        found = _ASSIGN.match(line)
        if not found:
            continue
        full = ".".join([*current, *_key_parts(found.group(1))])
        index.setdefault(full, number)
        value = found.group(2)
        if value.startswith("{"):
            for key in _INLINE_KEY.findall(value):
                index.setdefault(f"{full}.{key.strip(chr(34))}", number)
        for quote in ('"""', "'''"):
            if value.startswith(quote) and value.count(quote) == 1:
                open_string = quote
        if value.startswith("["):
            depth = _bracket_depth(value)
    return index


def _bracket_depth(value: str) -> int:
    depth = 0
    quote = None
    for char in value:
        if quote:
            if char == quote:
                quote = None
        elif char in "\"'":
            quote = char
        elif char == "#":
            break
        elif char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
    return max(depth, 0)


def _qualify(parts: list[str], counts: Mapping[str, int]) -> list[str]:
    """``namespaces.access`` under the 2nd ``[[namespaces]]`` → ``namespaces[1].access``."""
    out: list[str] = []
    for part in parts:
        path = ".".join([*out, part]) if out else part
        plain = re.sub(r"\[\d+\]", "", path)
        if plain in counts or path in counts:
            out.append(f"{part}[{counts.get(path, counts.get(plain, 1)) - 1}]")
        else:
            out.append(part)
    return out


def find_line(text: str, key: str) -> int | None:
    """The line of ``text`` where dotted ``key`` (``namespaces[1].history_size``) is set.

    Falls back to the nearest enclosing table or element that is in the text;
    ``None`` when not even the table is (a default value).
    """
    index = _index(text)
    parts = re.findall(r"[^.\[\]]+(?:\[\d+\])?", key)
    while parts:
        found = index.get(".".join(parts))
        if found is not None:
            return found
        last = parts[-1]
        if last.endswith("]"):
            parts[-1] = re.sub(r"\[\d+\]$", "", last)
        else:
            parts.pop()
    return None
