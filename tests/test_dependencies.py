"""Supply chain: every declared dependency is used, and the package imports only what it declares.

A dependency nobody imports is attack surface with no benefit (0.1 shipped
``httpx2`` in its ``test`` extra when nothing imported it); an import of something
undeclared works only by accident of another package's requirements.
"""

from __future__ import annotations

import ast
import importlib.metadata
import itertools
import re
import subprocess
import sys
import textwrap
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SCANNED = ("src", "tests", "examples", "benchmarks")

# Distributions that are commands or pytest plugins rather than imports, and the
# text in the project that shows they are used.
TOOLS: dict[str, tuple[str, str]] = {
    "mypy": ("scripts/test", ".venv/bin/mypy"),
    "ruff": ("scripts/test", ".venv/bin/ruff check"),
    "import-linter": ("scripts/test", ".venv/bin/lint-imports"),
    "pytest-cov": ("scripts/test", "--cov"),
    "pytest-timeout": ("pyproject.toml", "\ntimeout = "),
    # anyio runs every async test on trio too, by backend name.
    "trio": ("tests/conftest.py", '"trio"'),
    # starlette >= 1.10's TestClient imports httpx2 (its documented requirement) and
    # warns, an error here, when it has to fall back to httpx.
    # The documentation site: built by `mkdocs build --strict`, themed and referenced
    # from mkdocs.yml.
    "mkdocs": ("scripts/test", "mkdocs build --strict --site-dir"),
    "mkdocs-material": ("mkdocs.yml", "name: material"),
    "mkdocstrings": ("mkdocs.yml", "- mkdocstrings"),
    "httpx2": ("tests/test_api.py", "from starlette.testclient import TestClient"),
}

# Import names of distributions that may not be installed in the test
# environment (the ``bench`` extra), where their metadata cannot tell.
KNOWN_MODULES: dict[str, set[str]] = {
    "python-socketio": {"socketio"},
    "broadcaster": {"broadcaster"},
    "matplotlib": {"matplotlib"},
    "uvloop": {"uvloop"},
}


def _name(requirement: str) -> str:
    """The normalised distribution name of a PEP 508 requirement."""
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement)
    assert match, requirement
    return re.sub(r"[-_.]+", "-", match.group()).lower()


def _extras(requirement: str) -> list[str]:
    """The distributions a requirement's extras bring (``pyjwt[crypto]``: cryptography)."""
    match = re.match(r"[^\[;]+\[([^\]]+)\]", requirement)
    if not match:
        return []
    try:
        requires = importlib.metadata.requires(_name(requirement)) or []
    except importlib.metadata.PackageNotFoundError:
        return []
    wanted = {extra.strip() for extra in match.group(1).split(",")}
    return [
        _name(r)
        for r in requires
        if any(re.search(rf"extra\s*==\s*[\"']{re.escape(e)}[\"']", r) for e in wanted)
    ]


def declared(*, with_extras: bool = False) -> dict[str, str]:
    """Every declared distribution, mapped to where it is declared.

    ``with_extras`` adds what requested extras bring: those may be imported,
    but nothing requires them to be.
    """
    project = PYPROJECT["project"]
    groups = {"dependencies": project["dependencies"]}
    groups |= {f"optional-dependencies.{k}": v for k, v in project["optional-dependencies"].items()}
    found: dict[str, str] = {}
    for where, requirements in groups.items():
        for requirement in requirements:
            found.setdefault(_name(requirement), where)
            if with_extras:
                for dist in _extras(requirement):
                    found.setdefault(dist, f"{where} (extra of {_name(requirement)})")
    return found


def provided_modules(dist: str) -> set[str]:
    """The dotted module names a distribution installs (its packages and modules)."""
    try:
        files = importlib.metadata.files(dist) or []
    except importlib.metadata.PackageNotFoundError:
        return set(KNOWN_MODULES.get(dist, {dist.replace("-", "_")}))
    modules: set[str] = set()
    for file in files:
        parts = file.parts
        if not parts or parts[-1].endswith((".dist-info", ".pth")) or ".." in parts:
            continue
        if parts[-1].endswith((".py", ".so", ".pyd")) and not any(
            p.endswith((".dist-info", ".data")) or p == "__pycache__" for p in parts
        ):
            stem = parts[-1].split(".")[0]
            dotted = [*parts[:-1]] if stem == "__init__" else [*parts[:-1], stem]
            if dotted and all(p.isidentifier() for p in dotted):
                modules.add(".".join(dotted))
    return modules


def python_files() -> Iterator[Path]:
    """Every Python file of the project's own code, tests, examples and benchmarks."""
    for folder in SCANNED:
        yield from (ROOT / folder).rglob("*.py")


def used_modules(files: Iterator[Path]) -> set[str]:
    """Dotted names imported by ``files``, plus modules they run with ``python -m NAME``."""
    used: set[str] = set()
    for path in files:
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                used.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                used.add(node.module)
                used.update(f"{node.module}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.List | ast.Tuple):
                items = [e.value if isinstance(e, ast.Constant) else None for e in node.elts]
                for flag, module in itertools.pairwise(items):
                    if flag == "-m" and isinstance(module, str):
                        used.add(module)
    return used


def _prefixes(dotted: str) -> Iterator[str]:
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        yield ".".join(parts[:end])


def test_every_declared_dependency_is_used() -> None:
    """Each distribution in pyproject.toml is imported, run with -m, or a configured tool."""
    used = used_modules(python_files())
    unused = []
    for dist, where in sorted(declared().items()):
        if dist in TOOLS:
            file, evidence = TOOLS[dist]
            if evidence in (ROOT / file).read_text():
                continue
        provided = provided_modules(dist)
        if not any(prefix in provided for name in used for prefix in _prefixes(name)):
            unused.append(f"{dist} ({where})")
    assert not unused, f"declared but never imported or run: {unused}"


def test_the_package_imports_only_declared_distributions() -> None:
    """Every third-party import in src/hubbub comes from a declared distribution."""
    used = used_modules((ROOT / "src").rglob("*.py"))
    providers: set[str] = set()
    for dist in declared(with_extras=True):
        providers |= provided_modules(dist)
    # Namespace packages (``opentelemetry``) have no module of their own.
    providers |= {prefix for module in providers for prefix in _prefixes(module)}
    undeclared = sorted(
        name
        for name in used
        if name.split(".")[0] not in sys.stdlib_module_names
        and name.split(".")[0] != "hubbub"
        and not any(prefix in providers for prefix in _prefixes(name))
    )
    # A `from pkg import name` also records `pkg.name`; report packages only.
    tops = sorted({name.split(".")[0] for name in undeclared})
    assert not tops, f"imported by src/hubbub but not declared in pyproject.toml: {tops}"


def test_the_license_pyproject_declares_is_shipped() -> None:
    """pyproject.toml's licence is in a LICENSE file at the top of the repository."""
    license_text = (ROOT / "LICENSE").read_text()
    assert PYPROJECT["project"]["license"] == "MIT"
    assert license_text.startswith("MIT License")


# What `uvicorn[standard]` brings: `hubbub serve` needs them, a mounted hub does not.
SERVER_STACK = ("uvicorn", "uvloop", "httptools", "watchfiles", "websockets")


def _without(blocked: tuple[str, ...], code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter where importing any of ``blocked`` fails."""
    prelude = f"import sys\nsys.modules.update(dict.fromkeys({blocked!r}))\n"
    return subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def test_the_library_installs_no_server() -> None:
    """``pip install hubbub`` pulls no server; ``hubbub[standard]`` adds uvicorn[standard]."""
    project = PYPROJECT["project"]
    base = {_name(requirement) for requirement in project["dependencies"]}
    assert base.isdisjoint(SERVER_STACK), base & set(SERVER_STACK)
    extras = project["optional-dependencies"]
    assert [r.replace(" ", "") for r in extras["standard"]] == ["uvicorn[standard]>=0.52.1"]
    # The tests and benchmarks run uvicorn themselves; the demo runs `hubbub serve`.
    for extra in ("test", "bench"):
        assert any(r.startswith("uvicorn[standard]") for r in extras[extra]), extra
    assert "-e '.[standard]'" in (ROOT / "scripts" / "demo").read_text()
    assert "-e '.[test,docs]'" in (ROOT / "scripts" / "test").read_text()


def test_mounting_hubbub_imports_no_server() -> None:
    """``import hubbub`` and a HubApp under Starlette work with uvicorn & co. unimportable."""
    result = _without(
        SERVER_STACK,
        """
        from starlette.applications import Starlette
        from starlette.routing import Mount, WebSocketRoute
        from starlette.testclient import TestClient

        import hubbub
        import hubbub.cli  # the command's module too: uvicorn only when `serve` runs

        hub = hubbub.Hub(anonymous=True)
        app = Starlette(
            lifespan=hub.lifespan,
            routes=[WebSocketRoute("/ws", hubbub.HubApp(hub)), Mount("/rt", hubbub.HubApp(hub))],
        )
        with TestClient(app) as client:
            assert client.get("/rt/health").status_code == 200
            with client.websocket_connect("/ws") as ws:
                assert ws.receive_json()["type"] == "welcome"
        loaded = [m for m in sys.modules if sys.modules[m] is not None]
        print(sorted(m for m in loaded if m.split(".")[0] in {blocked}))
        """.replace("{blocked}", repr(set(SERVER_STACK))),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_serve_without_uvicorn_says_what_to_install() -> None:
    """``hubbub serve`` without uvicorn: one line naming ``hubbub[standard]``, exit 1."""
    result = _without(("uvicorn",), "from hubbub.cli import main\nmain(['serve'])\n")
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "uvicorn" in lines[0] and "pip install 'hubbub[standard]'" in lines[0]


def test_schema_works_without_uvicorn() -> None:
    """``hubbub schema`` needs no server."""
    result = _without(SERVER_STACK, "from hubbub.cli import main\nmain(['schema'])\n")
    assert result.returncode == 0, result.stderr
    assert "hubbub wire protocol" in result.stdout


@pytest.mark.parametrize(
    ("ws", "blocked", "needle"),
    [
        ("auto", ("websockets", "wsproto"), "pip install 'hubbub[standard]'"),
        ("websockets-sansio", ("websockets",), "pip install 'hubbub[standard]'"),
        ("wsproto", ("wsproto",), "pip install wsproto"),
    ],
)
def test_serve_without_a_websocket_library_says_what_to_install(
    ws: str, blocked: tuple[str, ...], needle: str
) -> None:
    """uvicorn without the ``--ws`` implementation's library: one line, exit 1, not a 404 server."""
    result = _without(blocked, f"from hubbub.cli import main\nmain(['serve', '--ws', {ws!r}])\n")
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"--ws {ws}" in lines[0] and needle in lines[0]


@pytest.mark.parametrize(
    ("url", "broker"),
    [
        ("redis://127.0.0.1:6379/0", "the Redis broker"),
        ("redis+sentinel://127.0.0.1:26379/svc", "the Redis broker"),
        ("redis+cluster://127.0.0.1:7000", "the Redis Cluster broker"),
        ("redis+shards://127.0.0.1:6379,127.0.0.1:6380", "the sharded Redis broker"),
    ],
)
def test_a_redis_url_without_redis_says_what_to_install(url: str, broker: str) -> None:
    """Without the redis package, every Redis broker URL is a ValueError naming the broker
    and ``pip install 'hubbub[redis]'``, not an ImportError from inside hubbub."""
    result = _without(
        ("redis",),
        f"from hubbub.brokers import broker_from_url\n"
        f"try:\n    broker_from_url({url!r})\n"
        f"except ValueError as exc:\n    print(exc)\n",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(
        f"{broker} needs the redis package: pip install 'hubbub[redis]' ("
    ), result.stdout
