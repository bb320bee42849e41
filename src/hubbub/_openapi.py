"""The OpenAPI 3.1 document of the server HTTP API, built from the API's own msgspec types.

Every request body, query and result schema comes from
``msgspec.json.schema_components`` over the very Structs ``HubAPI`` decodes and
encodes, so the document cannot drift from the code: change a field and the
document changes with it. Only the prose (summaries, what each status means)
is written by hand.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

import msgspec
from msgspec import Struct

__all__ = ["ERROR_MEANINGS", "Endpoint", "build_document"]

_REF: Final = "#/components/schemas/{name}"
_INT64: Final = (-(2**63), 2**63 - 1)
_ANNOTATIONS: Final = frozenset({"title", "description", "default", "examples"})
_JSON_VALUE: Final = "JSONValue"
_JSON_VALUE_SCHEMA: Final = {
    "description": "Any JSON value both codecs can carry: integers within 64 bits "
    "(unsigned up to 2^64-1), nested at most 64 levels.",
    "anyOf": [
        {"type": ["string", "boolean", "null"]},
        {"type": "number", "not": {"type": "integer"}},
        {"type": "integer", "minimum": -(2**63), "maximum": 2**64 - 1},
        {"type": "array", "items": {"$ref": _REF.format(name=_JSON_VALUE)}},
        {"type": "object", "additionalProperties": {"$ref": _REF.format(name=_JSON_VALUE)}},
    ],
}

ERROR_MEANINGS: Final[Mapping[int, str]] = {
    400: "Invalid JSON, a missing or mistyped field, a bad channel name or parameter.",
    401: "A missing or wrong API key (with `WWW-Authenticate: apikey`).",
    403: "Not allowed: presence not enabled, or the namespace refuses this user.",
    404: "An unknown namespace (or the API is off: no key configured).",
    408: "The request body did not arrive in full within the body timeout (10 s by default).",
    410: "`since` names an epoch that is not the stream's any more.",
    413: "The request body is over the limit (64 KiB by default).",
    422: "`data` fails the namespace's schema.",
    429: "Too many wrong API keys from this address (10 a minute): retry after `Retry-After` "
    "seconds. `subscribe` also answers 429 when a connection of the user on this node "
    "already holds the most channels allowed.",
    503: "The broker cannot be reached or the hub is not running: nothing was done.",
}
"""What each error status means, shown in the document for every endpoint answering it."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One API endpoint as the document describes it.

    ``body`` (POST) or ``query`` (GET) is the Struct the request decodes into;
    ``result`` the Struct a 200 answer encodes; ``errors`` every other status the
    endpoint can answer besides 401 and 429 (which every keyed endpoint can: a
    wrong key, too many wrong keys).
    """

    method: Literal["GET", "POST"]
    summary: str
    result: type[Struct]
    body: type[Struct] | None = None
    query: type[Struct] | None = None
    errors: tuple[int, ...] = ()
    description: str = ""


def build_document(
    endpoints: Mapping[str, Endpoint],
    *,
    error: type[Struct],
    base: str,
    version: str,
) -> dict[str, Any]:
    """The whole document, with ``base`` (where the API is mounted) as its server URL."""
    types: list[type[Struct]] = [error]
    for endpoint in endpoints.values():
        types.append(endpoint.result)
        if endpoint.body is not None:
            types.append(endpoint.body)
    _, components = msgspec.json.schema_components(types, ref_template=_REF)
    components = {name: _as_served(schema) for name, schema in components.items()}
    components[_JSON_VALUE] = _JSON_VALUE_SCHEMA
    paths: dict[str, Any] = {}
    for name, endpoint in endpoints.items():
        operation: dict[str, Any] = {
            "operationId": name.replace(".", "_"),
            "summary": endpoint.summary,
            "responses": _responses(endpoint, error.__name__),
        }
        if endpoint.description:
            operation["description"] = endpoint.description
        if endpoint.body is not None:
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": _ref(endpoint.body)}}},
            }
        if endpoint.query is not None:
            operation["parameters"] = _parameters(endpoint.query)
        paths[f"/{name}"] = {endpoint.method.lower(): operation}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "hubbub server HTTP API",
            "version": version,
            "description": (
                "Publish, notify, disconnect and subscribe users, and read channels, presence, "
                "history and stats of a hubbub hub. Every error is `{code, reason}` with the "
                "same HTTP status."
            ),
        },
        "servers": [{"url": base or "/"}],
        "security": [{"apikey": []}],
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "apikey": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "Authorization",
                    "description": "`Authorization: apikey <key>`",
                }
            },
        },
    }


def _as_served(schema: Any) -> Any:
    """What the hub really accepts, where msgspec's schema is wider.

    Every integer field is 64-bit (both codecs must carry it), and free-form
    JSON (``data``: msgspec's empty schema) is a :data:`_JSON_VALUE`, whose
    integers are 64-bit too: the hub refuses anything else with 400.
    """
    if isinstance(schema, list):
        return [_as_served(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    if schema.keys() <= _ANNOTATIONS:
        return {**schema, "$ref": _REF.format(name=_JSON_VALUE)}
    served = {key: _as_served(value) for key, value in schema.items()}
    if served.get("type") == "integer":
        served.setdefault("minimum", _INT64[0])
        served.setdefault("maximum", _INT64[1])
    return served


def _ref(struct: type[Struct]) -> str:
    return _REF.format(name=struct.__name__)


def _responses(endpoint: Endpoint, error_name: str) -> dict[str, Any]:
    error_body = {"application/json": {"schema": {"$ref": _REF.format(name=error_name)}}}
    responses: dict[str, Any] = {
        "200": {
            "description": "Done.",
            "content": {"application/json": {"schema": {"$ref": _ref(endpoint.result)}}},
        },
        "401": {
            "description": ERROR_MEANINGS[401],
            "headers": {"WWW-Authenticate": {"schema": {"type": "string", "const": "apikey"}}},
            "content": error_body,
        },
        "429": {
            "description": ERROR_MEANINGS[429],
            "headers": {"Retry-After": {"schema": {"type": "integer", "minimum": 1}}},
            "content": error_body,
        },
    }
    for status in sorted(endpoint.errors):
        responses.setdefault(
            str(status), {"description": ERROR_MEANINGS[status], "content": error_body}
        )
    return responses


def _parameters(query: type[Struct]) -> list[dict[str, Any]]:
    """One ``in: query`` parameter per field of ``query``, with that field's schema."""
    (schema,), components = msgspec.json.schema_components([query], ref_template=_REF)
    definition = components[schema["$ref"].rsplit("/", 1)[-1]]
    required = set(definition.get("required", ()))
    return [
        {
            "name": name,
            "in": "query",
            "required": name in required,
            "schema": _as_served(field_schema),
        }
        for name, field_schema in definition["properties"].items()
    ]
