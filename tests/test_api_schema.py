"""The HTTP API's OpenAPI document, and schemathesis driving every endpoint through uvicorn.

The document is generated from the API's own msgspec types; schemathesis reads
it from the running server and sends generated requests (valid and invalid)
with a valid key, checking every answer against the document: no 5xx, only
documented statuses, bodies matching their schemas.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import BaseSchema, GenerationMode

from hubbub import api
from hubbub._openapi import _as_served

from .servers import Server, run_server

KEY = "k-schema-0123456789"
MAX_EXAMPLES = 25
AUTH = {"Authorization": f"apikey {KEY}"}
ENDPOINTS = {
    "publish": "post",
    "broadcast": "post",
    "notify": "post",
    "disconnect": "post",
    "subscribe": "post",
    "unsubscribe": "post",
    "channels": "get",
    "presence": "get",
    "history": "get",
    "stats": "get",
}


@pytest.fixture(scope="module")
def api_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``hubbub serve api_app:app --api-key KEY`` in a real uvicorn process."""
    argv = ["-m", "hubbub", "serve", "api_app:app", "--port", "{port}", "--api-key", KEY]
    with run_server(argv, tmp_path_factory.mktemp("schema")) as server:
        yield server


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.fixture(scope="module")
def document(api_server: Server) -> dict[str, Any]:
    """The served document, read without any key."""
    status, body = _get(api_server.url + "/api/openapi.json")
    assert status == 200
    return dict(body)


def test_document_lists_every_endpoint_with_its_method(document: dict[str, Any]) -> None:
    """Every endpoint is in the document under its method, plus the document itself."""
    assert document["openapi"] == "3.1.0"
    assert document["servers"] == [{"url": "/api"}]
    paths = {path: next(iter(item)) for path, item in document["paths"].items()}
    assert paths == {**{f"/{n}": m for n, m in ENDPOINTS.items()}, "/openapi.json": "get"}


def test_document_describes_the_apikey_scheme(document: dict[str, Any]) -> None:
    """The ``apikey`` scheme is the Authorization header; only the document is open."""
    scheme = document["components"]["securitySchemes"]["apikey"]
    assert scheme["type"] == "apiKey" and scheme["in"] == "header"
    assert scheme["name"] == "Authorization"
    assert document["security"] == [{"apikey": []}]
    assert document["paths"]["/openapi.json"]["get"]["security"] == []


def test_document_lists_the_statuses(document: dict[str, Any]) -> None:
    """Every endpoint answers 200 and 401 with ``{code, reason}``; bodies add 400/413/503."""
    error = {"$ref": "#/components/schemas/ErrorBody"}
    for name, method in ENDPOINTS.items():
        responses = document["paths"][f"/{name}"][method]["responses"]
        assert {"200", "401", "503"} <= responses.keys(), name
        for status, response in responses.items():
            if status != "200":
                assert response["content"]["application/json"]["schema"] == error
        if method == "post":
            assert {"400", "413"} <= responses.keys(), name
    statuses = {
        name: set(document["paths"][f"/{name}"][method]["responses"])
        for name, method in ENDPOINTS.items()
    }
    assert {"404", "422"} <= statuses["publish"]
    assert {"403", "404", "429"} <= statuses["subscribe"]
    assert {"400", "404", "410"} <= statuses["history"]
    assert {"403", "404"} <= statuses["presence"]
    assert document["components"]["schemas"]["ErrorBody"]["required"] == ["code", "reason"]


def test_document_schemas_are_the_msgspec_types(document: dict[str, Any]) -> None:
    """The schemas are msgspec's own for the types the API decodes and encodes, with the
    two rules the hub adds: integers are 64-bit, free-form ``data`` is a ``JSONValue``."""
    types = [api.PublishRequest, api.UserChannel, api.HistoryPageResult, api.StatsResult]
    _, expected = msgspec.json.schema_components(types, ref_template="#/components/schemas/{name}")
    schemas = document["components"]["schemas"]
    for name, schema in expected.items():
        assert schemas[name] == _as_served(schema)
    assert schemas["PublishRequest"]["properties"]["data"] == {
        "$ref": "#/components/schemas/JSONValue"
    }
    assert schemas["StatsResult"]["properties"]["deliveries"]["maximum"] == 2**63 - 1
    integer = next(s for s in schemas["JSONValue"]["anyOf"] if s["type"] == "integer")
    assert (integer["minimum"], integer["maximum"]) == (-(2**63), 2**64 - 1)
    parameters = document["paths"]["/history"]["get"]["parameters"]
    assert [(p["name"], p["required"]) for p in parameters] == [
        ("channel", True),
        ("limit", False),
        ("since", False),
        ("reverse", False),
    ]


def test_document_needs_the_api_on(tmp_path: Path) -> None:
    """Without any key the document is 404 too: the API is off, not open."""
    with run_server(["-m", "hubbub", "serve", "--port", "{port}"], tmp_path) as plain:
        assert _get(plain.url + "/api/openapi.json")[0] == 404


@pytest.fixture(scope="module")
def api_schema(api_server: Server) -> BaseSchema:
    """The served document, loaded by schemathesis.

    A request refused 413 (a generated body over the server's limit) counts as
    refused, like 400.
    """
    loaded = schemathesis.openapi.from_url(api_server.url + "/api/openapi.json")
    rejection = loaded.config.checks.negative_data_rejection
    rejection.expected_statuses = [*rejection.expected_statuses, "413"]
    return loaded


@pytest.mark.parametrize(
    ("endpoint", "mode"),
    [
        *((name, mode) for name in ENDPOINTS for mode in GenerationMode),
        # The document takes no input at all: nothing to make invalid.
        ("openapi.json", GenerationMode.POSITIVE),
    ],
)
def test_every_endpoint_conforms(
    api_schema: BaseSchema, endpoint: str, mode: GenerationMode
) -> None:
    """Generated requests with a valid key: no 5xx, documented statuses, conforming bodies.

    Positive cases fit the document, negative ones do not (and must be refused 4xx).
    """
    operation = api_schema[f"/{endpoint}"][ENDPOINTS.get(endpoint, "get").upper()]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    def check(case: Any) -> None:
        # The valid key replaces the generated one; a negative case that dropped the
        # header on purpose goes without it (and must get 401).
        headers = dict(case.headers or {})
        if "Authorization" in headers or mode is GenerationMode.POSITIVE:
            headers.update(AUTH)
        case.headers = headers
        case.call_and_validate(timeout=10)

    check()
