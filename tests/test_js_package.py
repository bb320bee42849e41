"""The npm package of the browser client (``clients/js``), checked with the real tools.

``tsc --strict`` (TypeScript pinned in ``clients/js/package-lock.json``, installed
by ``scripts/test`` with ``npm ci``) compiles ``hubbub.d.ts`` with a typed usage
file and holds the declarations to what ``hubbub.js`` exports; ``npm pack
--dry-run`` lists what would be published. Each test works on a copy of the
package laid out as in the repository (``clients/js`` beside ``src/hubbub``), so
nothing is written into the working tree and a broken variant can be tried.
Without node, npm or the installed TypeScript the tests are skipped, except
when ``CI=true``: then that is a failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

import hubbub

from .servers import ROOT

PACKAGE = ROOT / "clients" / "js"
TSC = PACKAGE / "node_modules" / ".bin" / "tsc"
STATIC = ROOT / "src" / "hubbub" / "static"
# Build products and installs inside clients/js that are not the package's sources.
NOT_SOURCES = {"node_modules", ".inferred", "hubbub.js", "hubbub.d.ts", "LICENSE"}
PACKED = {"LICENSE", "README.md", "hubbub.d.ts", "hubbub.js", "package.json"}


def missing(what: str) -> None:
    """Skip for a missing tool; fail instead when ``CI=true``."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} (CI=true, so the npm package checks must not be skipped)")
    pytest.skip(what)


def tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        missing(f"{name} is not installed (apt-get install npm)")
    assert found is not None
    return found


def tsc() -> str:
    tool("node")
    if not TSC.exists():
        missing(f"{TSC} is missing: run `npm ci` in clients/js (scripts/test does)")
    return str(TSC)


def run(args: list[str], cwd: Path, *, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def output(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"


@pytest.fixture
def package(tmp_path: Path) -> Path:
    """``clients/js`` copied into a tree shaped like the repository's."""
    copy = tmp_path / "clients" / "js"
    shutil.copytree(
        PACKAGE,
        copy,
        ignore=lambda directory, names: [
            name
            for name in names
            if Path(directory) == PACKAGE and (name in NOT_SOURCES or name.endswith(".tgz"))
        ],
    )
    (tmp_path / "src" / "hubbub" / "static").mkdir(parents=True)
    shutil.copy(ROOT / "src" / "hubbub" / "_version.py", tmp_path / "src" / "hubbub")
    for name in ("hubbub.js", "hubbub.d.ts"):
        shutil.copy(STATIC / name, tmp_path / "src" / "hubbub" / "static" / name)
    shutil.copy(ROOT / "LICENSE", tmp_path / "LICENSE")
    return copy


def sync(package: Path) -> None:
    result = run([tool("node"), "sync.mjs"], package)
    assert result.returncode == 0, output(result)


def test_the_npm_version_is_hubbubs_version() -> None:
    """``package.json`` and its lock carry ``hubbub.__version__``: they are released together."""
    manifest = json.loads((PACKAGE / "package.json").read_text())
    lock = json.loads((PACKAGE / "package-lock.json").read_text())
    assert manifest["version"] == hubbub.__version__
    assert lock["version"] == hubbub.__version__
    assert lock["packages"][""]["version"] == hubbub.__version__
    assert lock["name"] == manifest["name"]


def test_typescript_is_pinned() -> None:
    """The TypeScript that checks the declarations is one exact version, locked."""
    manifest = json.loads((PACKAGE / "package.json").read_text())
    pinned = manifest["devDependencies"]["typescript"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", pinned), pinned
    lock = json.loads((PACKAGE / "package-lock.json").read_text())
    assert lock["packages"]["node_modules/typescript"]["version"] == pinned
    assert not manifest.get("dependencies"), "the client has no runtime dependency"


def test_sync_refuses_a_version_that_is_not_hubbubs(package: Path) -> None:
    """A package.json whose version differs from ``_version.py`` cannot be packed."""
    manifest = json.loads((package / "package.json").read_text())
    manifest["version"] = "9.9.9"
    (package / "package.json").write_text(json.dumps(manifest))
    result = run([tool("node"), "sync.mjs"], package)
    assert result.returncode == 1
    assert "package.json says 9.9.9" in result.stderr
    assert not (package / "hubbub.js").exists()
    packed = run([tool("npm"), "pack", "--dry-run"], package)
    assert packed.returncode != 0, output(packed)


def test_the_declarations_compile_strictly_with_a_typed_application(package: Path) -> None:
    """``tsc --strict`` accepts hubbub.d.ts and test/usage.ts, imported by the package name.

    usage.ts exercises the documented API and marks misuses with ``@ts-expect-error``,
    so declarations that are too loose fail as surely as ones that are wrong.
    """
    compiler = tsc()
    sync(package)
    result = run([compiler, "-p", "tsconfig.json", "--strict", "--noEmit"], package)
    assert result.returncode == 0, output(result)


def test_the_declarations_name_what_hubbub_js_exports(package: Path) -> None:
    """hubbub.d.ts has the exports and public members tsc infers from hubbub.js, no more."""
    compiler = tsc()
    sync(package)
    inferred = run([compiler, "-p", "tsconfig.infer.json"], package)
    assert inferred.returncode == 0, output(inferred)
    result = run([compiler, "-p", "tsconfig.surface.json"], package)
    assert result.returncode == 0, output(result)


def test_a_method_missing_from_the_declarations_is_caught(package: Path) -> None:
    """Drop ``presence`` and ``connect`` from the declarations: the surface check names both."""
    compiler = tsc()
    declarations = package.parent.parent / "src" / "hubbub" / "static" / "hubbub.d.ts"
    text = declarations.read_text()
    cut = re.sub(r"(?m)^  presence\(.*\n|^export declare function connect\(.*\n", "", text)
    assert cut != text
    declarations.write_text(cut)
    sync(package)
    assert run([compiler, "-p", "tsconfig.infer.json"], package).returncode == 0
    result = run([compiler, "-p", "tsconfig.surface.json"], package)
    assert result.returncode != 0
    assert '"presence"' in result.stdout
    assert '"connect"' in result.stdout


def test_npm_pack_ships_exactly_the_client(package: Path) -> None:
    """``npm pack --dry-run`` lists the served client, its types, README, LICENSE, package.json."""
    npm = tool("npm")
    result = run([npm, "pack", "--dry-run", "--json"], package)
    assert result.returncode == 0, output(result)
    report = json.loads(result.stdout[result.stdout.index("[") :])
    files = {entry["path"]: entry["size"] for entry in report[0]["files"]}
    assert set(files) == PACKED
    for name in ("hubbub.js", "hubbub.d.ts"):
        assert files[name] == (STATIC / name).stat().st_size, name
        assert (package / name).read_bytes() == (STATIC / name).read_bytes(), name
    assert report[0]["version"] == hubbub.__version__


def test_the_manifest_points_at_packed_files() -> None:
    """``exports``, ``types`` and ``main`` name files that are packed; the module is ESM."""
    manifest = json.loads((PACKAGE / "package.json").read_text())
    assert manifest["type"] == "module"
    entry = manifest["exports"]["."]
    assert list(entry) == ["types", "default"], "types must come first to be found"
    targets = {entry["types"], entry["default"], manifest["types"], manifest["main"]}
    assert {target.removeprefix("./") for target in targets} <= PACKED
    assert set(manifest["files"]) == {"hubbub.js", "hubbub.d.ts"}
