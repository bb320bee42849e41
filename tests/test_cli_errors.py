"""``hubbub serve`` refuses what it cannot serve: one line on stderr, a non-zero exit, no traceback.

Every case runs the real command in a subprocess (``python -m hubbub serve``),
so what is checked is what an operator sees: the exit status (2, argparse's,
for a bad flag or variable; 1 for a target that cannot be loaded or served)
and a single stderr line that names the culprit. A case that used to start a
server anyway would hit the timeout instead.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .servers import ROOT, free_port

TIMEOUT = 60


def serve(
    *argv: str, tmp_path: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m hubbub serve ARGV`` from ``tmp_path`` on a free port; wait for its exit."""
    full_env = {name: value for name, value in os.environ.items() if not name.startswith("HUBBUB_")}
    full_env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), full_env.get("PYTHONPATH", "")])
    full_env.update(env or {})
    given = "--port" in argv or "HUBBUB_PORT" in full_env
    port = [] if given else ["--port", str(free_port())]
    return subprocess.run(
        [sys.executable, "-m", "hubbub", "serve", *argv, *port],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=tmp_path,
        env=full_env,
    )


def refused(result: subprocess.CompletedProcess[str], status: int, *needles: str) -> str:
    """Assert the command exited ``status`` with one stderr line containing every needle."""
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert result.returncode == status, (result.returncode, result.stderr)
    return lines[0]


def test_a_missing_module_is_named_without_a_traceback(tmp_path: Path) -> None:
    """``hubbub serve nosuchmodule:hub`` says the module was not found, exit 1."""
    line = refused(serve("nosuchmodule:hub", tmp_path=tmp_path), 1, "'nosuchmodule'")
    assert "no module named" in line.lower()


def test_a_missing_submodule_is_named_too(tmp_path: Path) -> None:
    """``pkg.nothere:hub`` names the dotted module that is missing."""
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    line = refused(serve("pkg.nothere:hub", tmp_path=tmp_path), 1, "'pkg.nothere'")
    assert "no module named" in line.lower()


def test_a_module_that_raises_shows_the_exception_in_one_line(tmp_path: Path) -> None:
    """A module that raises while importing: its exception's summary, distinct from not found."""
    (tmp_path / "broken.py").write_text('raise RuntimeError("DATABASE_URL is not set")\n')
    line = refused(
        serve("broken:hub", tmp_path=tmp_path),
        1,
        "'broken'",
        "RuntimeError: DATABASE_URL is not set",
    )
    assert "no module named" not in line.lower()


def test_a_module_importing_something_missing_is_not_reported_missing(tmp_path: Path) -> None:
    """The module exists but imports a missing one: that import is the reported cause."""
    (tmp_path / "needs.py").write_text("import no_such_dependency\n")
    refused(
        serve("needs:hub", tmp_path=tmp_path),
        1,
        "importing 'needs' raised",
        "ModuleNotFoundError: No module named 'no_such_dependency'",
    )


def test_a_syntax_error_in_the_module_is_one_line(tmp_path: Path) -> None:
    """A module with a syntax error: the error and its line, no traceback."""
    (tmp_path / "typo.py").write_text("hub = (\n")
    refused(serve("typo:hub", tmp_path=tmp_path), 1, "importing 'typo' raised", "SyntaxError")


def test_a_missing_attribute_names_module_and_attribute(tmp_path: Path) -> None:
    """``mod:nothere`` names both the module and the missing attribute."""
    (tmp_path / "mod.py").write_text("hub = None\n")
    refused(serve("mod:nothere", tmp_path=tmp_path), 1, "'mod'", "no attribute 'nothere'")


@pytest.mark.parametrize(
    ("source", "kind"),
    [
        ("x = 42\n", "int"),
        ("class x:\n    pass\n", "class"),
        ("def x():\n    pass\n", "function"),
    ],
    ids=["int", "class", "factory"],
)
def test_a_target_that_is_not_a_hub_or_an_asgi_app_is_refused(
    tmp_path: Path, source: str, kind: str
) -> None:
    """``mod:x`` naming neither a Hub, a HubApp nor an ASGI app exits 1 instead of serving 500s."""
    (tmp_path / "mod.py").write_text(source)
    refused(serve("mod:x", tmp_path=tmp_path), 1, "'mod:x'", kind, "not a Hub, a HubApp or")


def test_a_target_without_a_colon_is_a_bad_argument(tmp_path: Path) -> None:
    """``hubbub serve nocolon`` is a usage error: exit 2."""
    refused(serve("nocolon", tmp_path=tmp_path), 2, "module:attribute", "'nocolon'")


FLAG_CASES = [
    (["--port", "99999"], ["--port", "99999", "1-65535"]),
    (["--port", "-1"], ["--port", "1-65535"]),
    (["--port", "http"], ["--port", "'http'"]),
    (["--host", "999.1.1.1"], ["--host", "'999.1.1.1'"]),
    (["--host", "192.0.2.1"], ["--host", "'192.0.2.1'"]),
    (["--ping", "0"], ["--ping", "positive"]),
    (["--ping", "-3"], ["--ping", "positive"]),
    (["--ping", "nan"], ["--ping", "positive"]),
    (["--pong-timeout", "0"], ["--pong-timeout", "positive"]),
    (["--shutdown-timeout", "-1"], ["--shutdown-timeout"]),
    (["--max-message-size", "0"], ["--max-message-size", "positive"]),
    (["--max-message-size", "1.5"], ["--max-message-size"]),
    (["--log-level", "nonsense"], ["--log-level", "'nonsense'", "debug"]),
    (["--ws", "nosuch"], ["--ws", "'nosuch'", "websockets-sansio"]),
    (["--ws-compression", "gzip"], ["--ws-compression", "'gzip'", "per-connection"]),
]


@pytest.mark.parametrize(
    ("argv", "needles"), [pytest.param(*case, id=" ".join(case[0])) for case in FLAG_CASES]
)
def test_a_bad_flag_value_is_refused_with_exit_2(
    tmp_path: Path, argv: list[str], needles: list[str]
) -> None:
    """Out-of-range or malformed flag values: argparse's exit 2 and one line naming the flag."""
    refused(serve(*argv, tmp_path=tmp_path), 2, "hubbub serve: error:", *needles)


VARIABLE_CASES = [
    ("PORT", "abc", ["HUBBUB_PORT", "'abc'"]),
    ("PORT", "70000", ["HUBBUB_PORT", "1-65535"]),
    ("PING", "0", ["HUBBUB_PING", "positive"]),
    ("MAX_MESSAGE_SIZE", "big", ["HUBBUB_MAX_MESSAGE_SIZE"]),
    ("LOG_LEVEL", "loud", ["HUBBUB_LOG_LEVEL", "'loud'"]),
    ("HOST", "999.1.1.1", ["HUBBUB_HOST", "'999.1.1.1'"]),
    ("ANONYMOUS", "ture", ["HUBBUB_ANONYMOUS", "'ture'"]),
    ("WS_COMPRESSION", "deflate", ["HUBBUB_WS_COMPRESSION", "'deflate'", "per-connection"]),
]


@pytest.mark.parametrize(
    ("variable", "value", "needles"),
    [pytest.param(*case, id=f"HUBBUB_{case[0]}={case[1]}") for case in VARIABLE_CASES],
)
def test_a_bad_environment_variable_is_refused_with_exit_2(
    tmp_path: Path, variable: str, value: str, needles: list[str]
) -> None:
    """A ``HUBBUB_*`` variable the flag would refuse: exit 2, naming the variable."""
    result = serve(tmp_path=tmp_path, env={f"HUBBUB_{variable}": value})
    refused(result, 2, "hubbub serve: error:", *needles)


def test_a_flag_overrides_a_bad_environment_variable(tmp_path: Path) -> None:
    """The flag wins over the variable: a bad ``HUBBUB_PORT`` is moot when ``--port`` is given."""
    result = serve("--port", "99999", tmp_path=tmp_path, env={"HUBBUB_PORT": "abc"})
    refused(result, 2, "argument --port", "99999")


def test_a_bad_variable_does_not_break_other_commands() -> None:
    """``hubbub schema`` ignores ``serve``'s variables."""
    env = {**os.environ, "HUBBUB_PORT": "abc"}
    result = subprocess.run(
        [sys.executable, "-m", "hubbub", "schema"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=env,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr


BROKER_CASES = [
    (["--broker", "bogus://x"], ["--broker", "unknown broker URL"]),
    (["--broker", "redis://h:notaport/0"], ["--broker", "'redis://h:notaport/0'", "port"]),
    (["--broker", "redis://h:99999/0"], ["--broker", "port"]),
    (["--broker", "redis://"], ["--broker", "'redis://'", "host"]),
    (["--broker", "postgresql://u@h:abc/db"], ["--broker", "port"]),
    (["--broker", "redis://[bad"], ["--broker"]),
    (["--broker", "redis+cluster://h:7000,h:99999"], ["--broker", "port"]),
    (["--broker", "redis+cluster://h:7000,h:x"], ["--broker", "port"]),
]


@pytest.mark.parametrize(
    ("argv", "needles"), [pytest.param(*case, id=case[0][1]) for case in BROKER_CASES]
)
def test_a_bad_broker_url_is_refused(tmp_path: Path, argv: list[str], needles: list[str]) -> None:
    """Unknown schemes and malformed URLs (port, host) are refused before serving: exit 2."""
    refused(serve(*argv, tmp_path=tmp_path), 2, "hubbub serve: error:", *needles)


def test_a_broker_url_password_is_not_echoed(tmp_path: Path) -> None:
    """A refused broker URL is named without its password."""
    line = refused(serve("--broker", "redis://u:s3cret@h:bad/0", tmp_path=tmp_path), 2, "--broker")
    assert "s3cret" not in line


def test_a_missing_certificate_file_is_named(tmp_path: Path) -> None:
    """``--ssl-certfile`` naming no file: the flag and the path, exit 2."""
    missing = str(tmp_path / "nope.pem")
    refused(serve("--ssl-certfile", missing, tmp_path=tmp_path), 2, "--ssl-certfile", missing)


def test_a_missing_key_file_is_named(tmp_path: Path) -> None:
    """``--ssl-keyfile`` naming no file: the flag and the path, exit 2."""
    cert = tmp_path / "cert.pem"
    cert.write_text("not a certificate\n")
    missing = str(tmp_path / "nope.key")
    result = serve("--ssl-certfile", str(cert), "--ssl-keyfile", missing, tmp_path=tmp_path)
    refused(result, 2, "--ssl-keyfile", missing)


def test_a_certificate_that_is_not_pem_is_refused(tmp_path: Path) -> None:
    """A certificate file OpenSSL cannot load is refused at start, not at the first handshake."""
    cert = tmp_path / "cert.pem"
    cert.write_text("not a certificate\n")
    refused(serve("--ssl-certfile", str(cert), tmp_path=tmp_path), 2, "--ssl-certfile")


def test_a_key_file_without_a_certificate_is_refused(tmp_path: Path) -> None:
    """``--ssl-keyfile`` alone is a usage error (uvicorn would assert)."""
    key = tmp_path / "key.pem"
    key.write_text("x\n")
    refused(
        serve("--ssl-keyfile", str(key), tmp_path=tmp_path), 2, "--ssl-keyfile", "--ssl-certfile"
    )


def test_a_jwt_public_key_that_is_not_pem_is_refused(tmp_path: Path) -> None:
    """``--jwt-public-key FILE`` that holds no PEM key names the flag and the file, exit 2."""
    key = tmp_path / "key.pem"
    key.write_text("not a key\n")
    refused(
        serve("--jwt-public-key", str(key), tmp_path=tmp_path),
        2,
        "--jwt-public-key",
        str(key),
        "not a PEM public key",
    )


def test_a_missing_jwt_public_key_file_is_refused(tmp_path: Path) -> None:
    """``--jwt-public-key`` naming no file: the flag and the path, exit 2."""
    missing = str(tmp_path / "nope.pem")
    refused(serve("--jwt-public-key", missing, tmp_path=tmp_path), 2, "--jwt-public-key", missing)
