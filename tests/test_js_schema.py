"""The served browser client (``hubbub.js``, ``hubbub.d.ts``) against ``hubbub schema``.

The JSON Schema comes from the real CLI (``python -m hubbub schema``); the two
files come from a real ``HubApp`` over HTTP, exactly as a browser gets them.
The JS is read for the tags it switches on (``case "…":``) and the tags it sends
(``type: "…"``), the declarations for their ``type: "…"`` interfaces and fields.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

from hubbub import Hub, HubApp

from .servers import ROOT

CASE = re.compile(r'\bcase\s+"([a-z_]+)"\s*:')
SENT = re.compile(r'\btype:\s*"([a-z_]+)"')
INTERFACE = re.compile(
    r"^export interface (\w+)(?:<[^>]*>)? \{\n(.*?)^\}", re.MULTILINE | re.DOTALL
)
FIELD = re.compile(r"^  (\w+)(\?)?:\s*(.+?);$", re.MULTILINE)
TAG = re.compile(r'^"([a-z_]+)"$')


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    """What ``hubbub schema`` prints."""
    result = subprocess.run(
        [sys.executable, "-m", "hubbub", "schema"],
        capture_output=True,
        check=True,
        cwd=ROOT,
        timeout=60,
    )
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def tags(schema: dict[str, Any], side: str) -> dict[str, dict[str, Any]]:
    """``type`` tag → its definition, for the ``client`` or ``server`` union."""
    mapping = schema["properties"][side]["discriminator"]["mapping"]
    return {tag: schema["$defs"][ref.rsplit("/", 1)[1]] for tag, ref in mapping.items()}


@pytest.fixture(scope="module")
def served() -> Iterator[TestClient]:
    with TestClient(HubApp(Hub(anonymous=True)), backend="asyncio") as client:
        yield client


def fetch(client: TestClient, path: str, content_type: str) -> str:
    response = client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(content_type)
    assert response.headers["etag"]
    return response.text


def code_of(js: str) -> str:
    """The JS without its comments, so a tag named in prose does not count."""
    js = re.sub(r"/\*.*?\*/", "", js, flags=re.DOTALL)
    return re.sub(r"(?m)^\s*//.*$|\s//\s.*$", "", js)


def test_the_client_handles_every_server_message_and_only_those(
    schema: dict[str, Any], served: TestClient
) -> None:
    js = code_of(fetch(served, "/hubbub.js", "text/javascript"))
    handled = set(CASE.findall(js))
    assert handled == set(tags(schema, "server")), "cases in hubbub.js vs server messages"


def test_the_client_sends_every_command_and_only_those(
    schema: dict[str, Any], served: TestClient
) -> None:
    js = code_of(fetch(served, "/hubbub.js", "text/javascript"))
    sent = set(SENT.findall(js))
    assert sent == set(tags(schema, "client")), "type tags hubbub.js sends vs client commands"


@pytest.mark.parametrize("side", ["client", "server"])
def test_the_declarations_match_the_schema_field_by_field(
    schema: dict[str, Any], served: TestClient, side: str
) -> None:
    dts = fetch(served, "/hubbub.d.ts", "application/typescript")
    # "history" is a command and a reply (HistoryCommand, History): each side is read
    # through its own union type.
    union = "Command" if side == "client" else "ServerMessage"
    members = re.search(rf"export type {union} =(.*?);", dts, re.DOTALL)
    assert members is not None
    names = set(re.findall(r"\|\s*(\w+)", members.group(1)))
    by_name = {name: fields for name, fields in _interfaces(dts).items() if name in names}
    assert len(by_name) == len(names), f"{union} names an interface that is not declared"
    expected = tags(schema, side)
    seen: set[str] = set()
    for name, fields in by_name.items():
        tag = TAG.match(fields["type"][1])
        assert tag is not None, f"{name} has no type tag"
        definition = expected.get(tag.group(1))
        assert definition is not None, f"{name} declares {tag.group(1)!r}, unknown to the schema"
        seen.add(tag.group(1))
        properties = set(definition["properties"])
        assert set(fields) == properties, f"{name}: fields differ from the schema"
        required = set(definition.get("required", ()))
        optional = {field for field, (opt, _) in fields.items() if opt}
        assert optional == properties - required, f"{name}: optional fields differ"
    assert seen == set(expected)


def _interfaces(dts: str) -> dict[str, dict[str, tuple[bool, str]]]:
    return {
        name: {field: (bool(opt), kind) for field, opt, kind in FIELD.findall(body)}
        for name, body in INTERFACE.findall(dts)
    }


def test_the_client_files_are_revalidated_with_an_etag(served: TestClient) -> None:
    for path in ("/hubbub.js", "/hubbub.d.ts"):
        first = served.get(path)
        assert first.headers["cache-control"] == "no-cache"
        assert first.headers["access-control-allow-origin"] == "*"
        etag = first.headers["etag"]
        again = served.get(path, headers={"if-none-match": etag})
        assert again.status_code == 304
        assert again.content == b""
        other = served.get(path, headers={"if-none-match": '"something-else"'})
        assert other.status_code == 200
        assert other.content == first.content
    assert served.post("/hubbub.js").status_code == 404
