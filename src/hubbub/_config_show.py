"""The configuration shown back: ``hubbub config show``, ``schema`` and ``example``.

An operator reads the effective configuration (each namespace's defaults filled
in by the same function that builds it, secrets masked), editors complete the
file from the JSON Schema the Structs give, and the example is a real file that
``hubbub config check`` accepts (a test holds every key in it). tomllib cannot
write TOML, and the file's shape is simple (tables of plain values, arrays of
tables), so :func:`dump` writes it itself rather than adding a dependency.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Literal

import msgspec

from ._config_hub import DEFAULTED_BY_KIND, namespace_options, shown_url
from ._config_model import SECRET_KEYS, Config

__all__ = ["dump", "effective", "example", "schema"]


def effective(config: Config) -> Config:
    """``config`` with each namespace's defaults filled in (those of its kind, chat or not)."""
    built, _ = namespace_options(config)
    sections = []
    for section, namespace in zip(config.namespaces, built, strict=True):
        options = {name: getattr(namespace, name) for name in DEFAULTED_BY_KIND}
        if section.chat and section.max_length is None:
            options["max_length"] = 2000
        sections.append(msgspec.structs.replace(section, **options))
    return msgspec.structs.replace(config, namespaces=sections)


def dump(config: Config, fmt: Literal["toml", "json"] = "toml", *, mask: bool = True) -> str:
    """``config`` as TOML or JSON, secrets shown as ``***`` unless ``mask`` is false."""
    document = msgspec.to_builtins(config)
    if mask:
        for key in SECRET_KEYS:
            table, name = key.split(".")
            value = document[table].get(name)
            if isinstance(value, list):
                document[table][name] = ["***" for _ in value]
            elif value is not None:
                document[table][name] = "***"
        document["broker"]["url"] = shown_url(document["broker"]["url"])
    if fmt == "json":
        return json.dumps(document, indent=2)
    return _to_toml(document)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        items = ", ".join(
            f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items() if v is not None
        )
        return "{ " + items + " }" if items else "{}"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def _to_toml(document: dict[str, Any]) -> str:
    lines: list[str] = []
    for table, section in document.items():
        if isinstance(section, list):
            for item in section:
                lines.append(f"[[{table}]]")
                lines.extend(f"{k} = {_toml_value(v)}" for k, v in item.items() if v is not None)
                lines.append("")
            continue
        lines.append(f"[{table}]")
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in section.items() if v is not None)
        lines.append("")
    return "\n".join(lines)


def schema() -> dict[str, Any]:
    """The JSON Schema of the file (draft 2020-12), for editors that complete TOML."""
    document = msgspec.json.schema(Config, ref_template="#/$defs/{name}")
    document["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    document["title"] = "hubbub configuration file"
    return document


def example() -> str:
    """A complete, commented configuration file: every key, that ``hubbub config check`` accepts."""
    return (Path(__file__).parent / "static" / "hubbub.example.toml").read_text(encoding="utf-8")
