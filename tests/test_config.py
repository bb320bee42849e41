"""The configuration file: decoding, errors with file:line and key, precedence, commands, reload.

Errors are checked as an operator sees them: ``python -m hubbub config check`` or
``hubbub serve --config`` in a subprocess, one stderr line, exit status 2, no
traceback. Served behaviour (JWT, namespaces with claim-based access, SIGHUP)
runs against a real ``hubbub serve --config`` process.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tomllib
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import msgspec
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus
from websockets.typing import Subprotocol

from hubbub import ChannelClaim, Identity, Namespace
from hubbub.cli import _parser, _served
from hubbub.config import (
    OPTIONS,
    Config,
    ConfigError,
    example,
    find_line,
    load,
    loads,
    schema,
)

from .apps.auth_app import SECRET, mint
from .apps.wsclient import Client
from .servers import ROOT, Server, run_server

TIMEOUT = 60
KEY_1 = "first-api-key-0123456789"
KEY_2 = "second-api-key-0123456789"


def hubbub(
    *argv: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m hubbub ARGV`` without any HUBBUB_* variable of the caller."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("HUBBUB_")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "hubbub", *argv],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=cwd,
        env=full_env,
    )


def refused(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Exit 2 with exactly one stderr line holding every needle, and no traceback."""
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert result.returncode == 2, (result.returncode, result.stderr)
    return lines[0]


def check(tmp_path: Path, text: str, **env: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "hubbub.toml"
    path.write_text(text)
    return hubbub("config", "check", "hubbub.toml", cwd=tmp_path, env=env)


# -- one test per error class ------------------------------------------------------------


def test_an_unknown_key_is_named_with_its_line_and_a_suggestion(tmp_path: Path) -> None:
    """A misspelt key: the file, its line, the dotted path, and the key it was meant to be."""
    text = (
        '[server]\nport = 8001\n\n[[namespaces]]\nname = "a"\n\n[[namespaces]]\nname = "b"\n'
        "histroy_size = 5\n"
    )
    refused(
        check(tmp_path, text),
        "hubbub.toml:9:",
        "namespaces[1].histroy_size",
        "unknown key",
        "history_size",
    )


def test_a_wrong_type_is_named(tmp_path: Path) -> None:
    """A string where a number belongs: the key, what was expected and what was found."""
    refused(
        check(tmp_path, '[limits]\n\nmax_channels = "many"\n'),
        "hubbub.toml:3:",
        "limits.max_channels",
        "expected an integer",
        '"many"',
    )


def test_an_out_of_range_value_is_named(tmp_path: Path) -> None:
    """A port above 65535 (uvicorn would take it modulo 65536) is refused with its line."""
    refused(check(tmp_path, "[server]\nport = 99999\n"), "hubbub.toml:2:", "server.port", "65535")


def test_a_negative_history_in_the_second_namespace(tmp_path: Path) -> None:
    """msgspec's ``$.namespaces[1].history_size`` becomes the key and its line."""
    text = '[[namespaces]]\nname = "a"\n[[namespaces]]\nname = "b"\nhistory_size = -1\n'
    refused(check(tmp_path, text), "hubbub.toml:5:", "namespaces[1].history_size", ">= 0")


COMBINATIONS = [
    pytest.param(
        '[[namespaces]]\nname = "feed"\nhistory_size = 10\nslow_consumer = "drop_oldest"\n',
        ["hubbub.toml:4:", "namespaces[0].slow_consumer", "history"],
        id="drop_oldest with history",
    ),
    pytest.param(
        '[[namespaces]]\nname = "room"\njoin_leave = true\n',
        ["hubbub.toml:3:", "namespaces[0].join_leave", "presence"],
        id="join_leave without presence",
    ),
    pytest.param(
        '[auth]\nsecret_file = "s"\ncookie = "sid"\n',
        ["hubbub.toml:3:", "auth.cookie", "allowed_origins"],
        id="cookie without allowed_origins",
    ),
    pytest.param(
        f'[auth]\nsecret = "{SECRET}"\njwks_url = "https://auth.example.com/jwks"\n',
        ["hubbub.toml:3:", "auth.jwks_url", "one JWT key source"],
        id="two JWT key sources",
    ),
    pytest.param(
        '[api]\nkeys = ["short"]\n',
        ["hubbub.toml:2:", "api.keys[0]", "16 characters"],
        id="API key too short",
    ),
    pytest.param(
        '[server]\nssl_keyfile = "key.pem"\n',
        ["hubbub.toml:2:", "server.ssl_keyfile", "certificate"],
        id="TLS key without certificate",
    ),
    pytest.param(
        '[[namespaces]]\nname = "rooms"\nsubscribe = { claim = "rooms" }\n',
        ["hubbub.toml:3:", "namespaces[0].subscribe", "JWT"],
        id="claim access without a JWT key",
    ),
    pytest.param(
        '[[namespaces]]\nname = "a"\n\n[[namespaces]]\nname = "a"\n',
        ["hubbub.toml:5:", "namespaces[1].name", "twice"],
        id="a namespace twice",
    ),
]


@pytest.mark.parametrize(("text", "needles"), COMBINATIONS)
def test_an_impossible_combination_is_refused(
    tmp_path: Path, text: str, needles: list[str]
) -> None:
    """Each impossible combination: one line with the file, the line, the key and why."""
    refused(check(tmp_path, text), *needles)


def test_a_toml_syntax_error_has_its_line_and_no_traceback(tmp_path: Path) -> None:
    """tomllib's error becomes one line with the file and the line."""
    refused(check(tmp_path, "[server]\nport = 80\nhost = \n"), "hubbub.toml:3:", "not valid TOML")


def test_a_missing_file_is_one_line(tmp_path: Path) -> None:
    """``check`` of a file that is not there, and ``serve --config`` of one: one line, exit 2."""
    refused(hubbub("config", "check", "nope.toml", cwd=tmp_path), "nope.toml", "cannot read")
    refused(hubbub("serve", "--config", "nope.toml", cwd=tmp_path), "nope.toml", "cannot read")


def test_serve_refuses_a_bad_file_before_starting(tmp_path: Path) -> None:
    """``hubbub serve --config`` reports the same line as ``check`` and does not start."""
    (tmp_path / "hubbub.toml").write_text("[limits]\nping_interval = 0\n")
    result = hubbub("serve", "--config", "hubbub.toml", cwd=tmp_path)
    refused(result, "hubbub serve: error:", "hubbub.toml:2:", "limits.ping_interval")


def test_a_target_refuses_hub_sections(tmp_path: Path) -> None:
    """With a TARGET, [namespaces] cannot apply (the target builds its own hub): refused."""
    (tmp_path / "hubbub.toml").write_text('[[namespaces]]\nname = "x"\n')
    result = hubbub("serve", "tests.apps.hyper_app:app", "--config", "hubbub.toml", cwd=ROOT)
    (ROOT / "hubbub.toml").unlink(missing_ok=True)
    result = hubbub(
        "serve", "tests.apps.hyper_app:app", "--config", str(tmp_path / "hubbub.toml"), cwd=ROOT
    )
    refused(result, "namespaces", "builds its own hub")


# -- the locator ---------------------------------------------------------------------------


def test_find_line_knows_tables_arrays_dotted_and_inline_keys() -> None:
    """Table headers, array-of-tables elements, dotted keys and inline tables are found."""
    text = (
        "# comment\n"
        "[server]\n"
        "port = 1\n"
        "limits.max_channels = 3\n"
        "[[namespaces]]\n"
        'name = "a"\n'
        "[[namespaces]]\n"
        'name = "b"\n'
        'publish = { claim = "rooms" }\n'
        'text = """\n'
        "port = 9\n"
        '"""\n'
        "[limits.command_limits]\n"
        "publish = { rate = 1.0, burst = 2 }\n"
    )
    assert find_line(text, "server.port") == 3
    assert find_line(text, "server.limits.max_channels") == 4
    assert find_line(text, "namespaces[1]") == 7
    assert find_line(text, "namespaces[1].name") == 8
    assert find_line(text, "namespaces[1].publish.claim") == 9
    assert find_line(text, "namespaces[1].history_size") == 7  # the element's line
    assert find_line(text, "limits.command_limits.publish.burst") == 14
    assert find_line(text, "hub.node") is None


# -- precedence ------------------------------------------------------------------------------


def test_flag_beats_variable_beats_file_beats_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--ping over HUBBUB_PING over limits.ping_interval over the default, on the built hub."""
    path = tmp_path / "hubbub.toml"
    path.write_text("[limits]\nping_interval = 20\npong_timeout = 7\n")
    for option in OPTIONS:
        monkeypatch.delenv(option.env, raising=False)

    def limits(*argv: str) -> tuple[float, float, int]:
        served = _served(_parser().parse_args(["serve", *argv]))[0]
        assert served.hub is not None
        found = served.hub.limits
        return found.ping_interval, found.pong_timeout, found.max_channels

    assert limits() == (25.0, 10.0, 128)  # defaults
    assert limits("--config", str(path)) == (20.0, 7.0, 128)  # the file
    monkeypatch.setenv("HUBBUB_PING", "15")
    assert limits("--config", str(path)) == (15.0, 7.0, 128)  # the variable
    assert limits("--config", str(path), "--ping", "10") == (10.0, 7.0, 128)  # the flag


def test_check_prints_the_effective_configuration_with_variables(tmp_path: Path) -> None:
    """``check --format json`` applies HUBBUB_* over the file and masks every secret."""
    text = f'[server]\nport = 8001\n[api]\nkeys = ["{KEY_1}"]\n[auth]\nsecret = "{SECRET}"\n'
    (tmp_path / "hubbub.toml").write_text(text)
    result = hubbub(
        "config",
        "check",
        "hubbub.toml",
        "--format",
        "json",
        cwd=tmp_path,
        env={"HUBBUB_PORT": "8002", "HUBBUB_METRICS_KEY": "metrics-key-0123456789"},
    )
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["server"]["port"] == 8002
    assert shown["api"]["keys"] == ["***"]
    assert shown["auth"]["secret"] == "***"
    assert shown["metrics"]["key"] == "***"
    assert SECRET not in result.stdout and KEY_1 not in result.stdout


def test_a_bad_variable_under_check_names_the_variable(tmp_path: Path) -> None:
    """``HUBBUB_PORT=70000`` over a good file: refused, naming the variable."""
    (tmp_path / "hubbub.toml").write_text("[server]\nport = 8001\n")
    result = hubbub("config", "check", "hubbub.toml", cwd=tmp_path, env={"HUBBUB_PORT": "70000"})
    refused(result, "HUBBUB_PORT", "server.port")


# -- example and schema ----------------------------------------------------------------------


def test_the_example_round_trips_through_check(tmp_path: Path) -> None:
    """``config example`` → ``config check`` accepts it; its TOML output is accepted again."""
    produced = hubbub("config", "example", cwd=tmp_path)
    assert produced.returncode == 0, produced.stderr
    (tmp_path / "example.toml").write_text(produced.stdout)
    first = hubbub("config", "check", "example.toml", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    (tmp_path / "effective.toml").write_text(first.stdout)
    second = hubbub("config", "check", "effective.toml", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert tomllib.loads(second.stdout) == tomllib.loads(first.stdout)


def test_every_key_appears_in_the_example() -> None:
    """Every field of every table is in the example (set, or as a commented ``# key =`` line)."""
    text = example()
    for table in Config.__struct_fields__:
        assert re.search(rf"^\[\[?{table}\]\]?", text, re.M), table
        kind = Config.__annotations__[table]
        section = {
            "list[NamespaceConfig]": "NamespaceConfig",
        }.get(kind, kind)
        import hubbub.config as module

        for name in getattr(module, section).__struct_fields__:
            pattern = rf"^((# )?{name} = |\[{table}\.{name}\])"
            assert re.search(pattern, text, re.M), f"{table}.{name}"


def test_limits_mirror_hubbub_limits() -> None:
    """[limits] has every field of hubbub.Limits, with the same defaults."""
    import dataclasses

    from hubbub import Limits
    from hubbub.config import LimitsConfig

    fields = {f.name: f for f in dataclasses.fields(Limits)}
    assert set(LimitsConfig.__struct_fields__) == set(fields)
    section = LimitsConfig()
    for name in ("ping_interval", "max_channels", "queue_bytes", "handshake_burst"):
        assert getattr(section, name) == getattr(Limits(), name)


def test_the_schema_is_json_schema_and_describes_the_example() -> None:
    """``config schema`` is a JSON Schema whose top-level tables are the file's."""
    result = hubbub("config", "schema", cwd=ROOT)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["$schema"].startswith("https://json-schema.org/")
    assert document == json.loads(json.dumps(schema(), sort_keys=True))
    root = document["$defs"]["Config"]
    assert set(root["properties"]) == set(Config.__struct_fields__)
    assert root.get("additionalProperties") is False
    # The example's every table is allowed by the schema, and each key of each table.
    example_doc = tomllib.loads(example())
    for table, value in example_doc.items():
        assert table in root["properties"]
        ref = root["properties"][table]
        name = (ref.get("$ref") or ref.get("items", {}).get("$ref", "")).rsplit("/", 1)[-1]
        allowed = set(document["$defs"][name]["properties"])
        for item in value if isinstance(value, list) else [value]:
            assert set(item) <= allowed, (table, set(item) - allowed)


# -- claim-based access ----------------------------------------------------------------------


def test_a_channel_claim_names_channels_or_a_whole_namespace() -> None:
    """The claim must list the channel or ``ns:*``; anonymous and non-list claims are refused."""
    rule = ChannelClaim("rooms")
    alice = Identity(user="alice", claims={"rooms": ["chat:a", "news:*"]})
    assert rule.allows(alice, "chat:a")
    assert not rule.allows(alice, "chat:b")
    assert rule.allows(alice, "news:anything")
    assert not rule.allows(Identity(claims={"rooms": ["chat:a"]}), "chat:a")
    assert not rule.allows(Identity(user="x", claims={"rooms": "chat:a"}), "chat:a")
    assert not rule.allows(Identity(user="x"), "chat:a")
    namespace = Namespace(name="chat", subscribe=rule, history_access="nobody")
    assert namespace.may_subscribe(alice, "chat:a")
    assert not namespace.may_read(alice, "chat:a", "history")
    assert namespace.may_read(alice, "chat:a", "presence")  # falls back to subscribe


def test_loads_builds_the_claim_rule() -> None:
    """``{ claim = "rooms" }`` in the file is a claim rule; a bad rule names the choices."""
    config = loads(
        f'[auth]\nsecret = "{SECRET}"\n[[namespaces]]\nname = "c"\n'
        'subscribe = { claim = "rooms" }\n'
    )
    assert config.namespaces[0].subscribe == msgspec.convert(
        {"claim": "rooms"}, type(config.namespaces[0].subscribe)
    )
    with pytest.raises(ConfigError, match=r"namespaces\[0\]\.subscribe") as caught:
        loads('[[namespaces]]\nname = "c"\nsubscribe = "everyone"\n', name="f.toml")
    assert caught.value.where == "f.toml:3"


# -- a served configuration ------------------------------------------------------------------

SERVED = """
[server]
port = {port}

[auth]
secret_file = "jwt-secret"

[api]
keys_file = "api-keys"

[limits]
max_channels = 16

[[namespaces]]
name = "news"
subscribe = "authenticated"
publish = "nobody"
history_size = 10
history_access = "nobody"

[[namespaces]]
name = "rooms"
subscribe = {{ claim = "rooms" }}
publish = {{ claim = "rooms" }}
"""


@asynccontextmanager
async def _client(server: Server, token: str | None) -> AsyncIterator[Client]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with connect(
        server.ws_url + "/ws",
        additional_headers=headers,
        subprotocols=[Subprotocol("hubbub.v1.json")],
        ping_interval=None,
        proxy=None,
        open_timeout=10,
        close_timeout=2,
    ) as ws:
        client = Client(ws, answer_pings=True)
        welcome = await client.recv(10.0)
        assert welcome["type"] == "welcome", welcome
        yield client


def _serve_config(tmp_path: Path, text: str) -> list[str]:
    (tmp_path / "jwt-secret").write_text(SECRET + "\n")
    (tmp_path / "api-keys").write_text(KEY_1 + "\n")
    (tmp_path / "hubbub.toml").write_text(text)
    return ["-m", "hubbub", "serve", "--config", str(tmp_path / "hubbub.toml"), "--port", "{port}"]


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_jwt_and_two_namespaces_over_a_real_websocket(tmp_path: Path) -> None:
    """JWT required; ``news`` for any user (never published by clients); ``rooms`` by claim."""
    with run_server(_serve_config(tmp_path, SERVED.format(port=8000)), tmp_path) as server:
        with pytest.raises(InvalidStatus) as caught:
            async with _client(server, None):
                pass
        assert caught.value.response.status_code == 401
        async with _client(server, mint("alice", rooms=["rooms:a"])) as alice:
            ok = await alice.request({"type": "subscribe", "channel": "news:today"})
            assert ok["type"] == "subscribed", ok
            no = await alice.request({"type": "publish", "channel": "news:today", "data": 1})
            assert no["type"] == "error" and no["code"] == 403, no
            history = await alice.request({"type": "history", "channel": "news:other"})
            assert history["type"] == "error" and history["code"] == 403, history
            mine = await alice.request({"type": "subscribe", "channel": "rooms:a"})
            assert mine["type"] == "subscribed", mine
            other = await alice.request({"type": "subscribe", "channel": "rooms:b"})
            assert other["type"] == "error" and other["code"] == 403, other
            sent = await alice.request({"type": "publish", "channel": "rooms:a", "data": "hi"})
            assert sent["type"] == "ack", sent
        async with _client(server, mint("bob", rooms=["rooms:*"])) as bob:
            any_room = await bob.request({"type": "subscribe", "channel": "rooms:zzz"})
            assert any_room["type"] == "subscribed", any_room


# -- SIGHUP ------------------------------------------------------------------------------


def _api_status(server: Server, key: str) -> int:
    request = urllib.request.Request(
        server.url + "/api/channels", headers={"Authorization": f"apikey {key}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_sighup_applies_a_good_file_and_keeps_the_config_on_a_bad_one(tmp_path: Path) -> None:
    """New API key works and the old one is refused; a broken file changes nothing, said once."""
    argv = _serve_config(tmp_path, SERVED.format(port=8000))
    with run_server(argv, tmp_path) as server:
        assert _api_status(server, KEY_1) == 200
        (tmp_path / "api-keys").write_text(KEY_2 + "\n")
        changed = SERVED.format(port=8000).replace("max_channels = 16", "max_channels = 8")
        # A namespace's history needs a restart: reported, not applied.
        changed = changed.replace("history_size = 10", "history_size = 20")
        (tmp_path / "hubbub.toml").write_text(changed)
        os.kill(server.pid, signal.SIGHUP)
        log = server.wait_log("needs a restart")
        assert "api keys replaced" in log
        assert "limits.max_channels: 16 -> 8" in log
        assert re.search(r"needs a restart: namespaces$", log, re.M), log
        assert _api_status(server, KEY_2) == 200
        assert _api_status(server, KEY_1) == 401
        (tmp_path / "hubbub.toml").write_text("[limits]\nmax_channels = 0\n")
        os.kill(server.pid, signal.SIGHUP)
        log = server.wait_log("config reload failed")
        line = next(x for x in log.splitlines() if "config reload failed" in x)
        assert "limits.max_channels" in line and "hubbub.toml:2" in line
        assert "Traceback" not in log
        assert _api_status(server, KEY_2) == 200
        assert server.process.poll() is None


def test_a_variable_replaces_the_files_key_source_not_joins_it(tmp_path: Path) -> None:
    """``HUBBUB_API_KEY`` over ``api.keys_file`` and ``HUBBUB_JWT_SECRET`` over
    ``auth.secret_file`` win (flag > variable > file), instead of "two sources";
    two sources in one layer are still refused."""
    (tmp_path / "keys").write_text("a-file-api-key-0123456789\n")
    (tmp_path / "secret").write_text(SECRET + "\n")
    path = tmp_path / "hubbub.toml"
    path.write_text('[api]\nkeys_file = "keys"\n[auth]\nsecret_file = "secret"\n')
    other = "another-secret-of-32-bytes-or-more-0123"
    config = load(path, environ={"HUBBUB_API_KEY": "a-variable-key-0123456789"})
    assert config.api.keys == ["a-variable-key-0123456789"] and config.api.keys_file is None
    assert config.auth.secret_file is not None
    config = load(path, environ={"HUBBUB_JWT_SECRET": other})
    assert (config.auth.secret, config.auth.secret_file) == (other, None)
    with pytest.raises(ConfigError, match=r"public_key_file|secret"):
        load(path, environ={"HUBBUB_JWT_SECRET": other, "HUBBUB_JWT_PUBLIC_KEY": "pub.pem"})


@pytest.mark.parametrize(
    "url",
    [
        "redis+sentinel://127.0.0.1:26379,127.0.0.1:26380/mymaster",
        "redis+shards://127.0.0.1:6379,127.0.0.1:6380/0",
        "redis+cluster://127.0.0.1:7000,127.0.0.1:7001",
    ],
)
def test_every_multi_host_broker_url_is_accepted(url: str) -> None:
    """Sentinel, shard and cluster URLs list several hosts: each port is checked, none refused."""
    config = loads(f'[broker]\nurl = "{url}"\n')
    assert config.broker.url == url
    with pytest.raises(ConfigError, match="port"):
        loads(
            f'[broker]\nurl = "{url.replace(":26380", ":x").replace(":6380", ":x")}"\n'.replace(
                ":7001", ":x"
            )
        )
