"""The five-minute tutorial (``docs/tutorial.md``), executed step by step as a reader would.

The steps are the fenced blocks that follow a ``<!-- tutorial: NAME -->`` line,
read from the page itself, so the page cannot drift from what works. They run
in a fresh virtual environment in a temporary directory, as written, with two
changes a reader would not make: hubbub is installed from this checkout rather
than from PyPI (which has the last release, not the code under test), and the
servers listen on a free port instead of 8000. The page part runs in Debian's
headless Chromium.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import expect

from .servers import ROOT, Server, free_port, wait_ready
from .test_demo_browser import chromium, open_page

pytestmark = pytest.mark.browser

TUTORIAL = ROOT / "docs" / "tutorial.md"
STEP = re.compile(
    r"^<!-- tutorial: ([a-z-]+) -->\n```(\w+)(?: title=\"([^\"]+)\")?\n(.*?)^```$",
    re.MULTILINE | re.DOTALL,
)
STEPS = ["install", "demo", "app", "run", "publish", "page", "publish-again"]
PORT_IN_DOCS = "127.0.0.1:8000"


def steps() -> dict[str, tuple[str, str | None, str]]:
    """The tutorial's marked blocks by step name: (language, title, text)."""
    found = STEP.findall(TUTORIAL.read_text(encoding="utf-8"))
    return {name: (language, title or None, text) for name, language, title, text in found}


def test_the_tutorial_marks_exactly_the_steps_this_test_runs() -> None:
    """Every marked block is run below, in the tutorial's order; none is left out."""
    text = TUTORIAL.read_text(encoding="utf-8")
    marked = re.findall(r"^<!-- tutorial: ([a-z-]+) -->$", text, re.MULTILINE)
    assert marked == STEPS
    assert list(steps()) == STEPS, "a marker must be followed directly by its code block"


def shell(command: str, cwd: Path, *, timeout: float) -> str:
    """Run a tutorial command with bash in the tutorial's directory, with the venv active."""
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", command],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=environment(cwd),
    )
    assert result.returncode == 0, (
        f"{command}\nexit {result.returncode}\n{result.stdout}\n{result.stderr}"
    )
    return result.stdout


def environment(cwd: Path) -> dict[str, str]:
    """The environment of a reader's shell: none of the test run's own Python settings."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "COV_", "VIRTUAL_ENV"))
    }
    # `python3` is the interpreter running the tests, as a reader's would be theirs.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONUNBUFFERED"] = "1"
    return env


def server(command: str, cwd: Path, port: int, tmp_path: Path) -> Server:
    """Start a long-running tutorial command (the venv active) on ``port``."""
    log_path = tmp_path / f"server-{port}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            ["bash", "-c", f". .venv/bin/activate && exec {command} --port {port}"],
            cwd=cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=environment(cwd),
        )
    return Server(process, port, log_path)


def stop(server: Server) -> None:
    """Ctrl+C, as the tutorial says; the server must end cleanly, without a traceback."""
    if server.process.poll() is None:
        os.kill(server.pid, signal.SIGINT)
        try:
            server.process.wait(20)
        except subprocess.TimeoutExpired:
            server.terminate()
    assert server.process.returncode in (0, -signal.SIGINT), server.log()
    assert "Traceback" not in server.log(), server.log()


@pytest.fixture
def reader(tmp_path: Path) -> Iterator[Path]:
    """A fresh directory where the reader works, with the tutorial's install done in it."""
    language, _, install = steps()["install"]
    assert language == "sh"
    assert "pip install 'hubbub[standard]'" in install
    # PyPI has the last release, not this checkout: install the checkout, same extra.
    local = install.replace("'hubbub[standard]'", shlex.quote(f"{ROOT}[standard]"))
    local = local.replace("pip install", "pip install -q --disable-pip-version-check")
    work = tmp_path / "reader"
    work.mkdir()
    shell(local, work, timeout=300)
    assert (work / ".venv" / "bin" / "hubbub").exists()
    yield work


def test_the_tutorial_runs_as_written(reader: Path, tmp_path: Path) -> None:
    """Install, demo, app, publish from server code, page in Chromium: each does what it says."""
    blocks = steps()
    problems: list[str] = []

    # 2. The demo: `hubbub serve` answers with the demo chat page.
    language, _, demo = blocks["demo"]
    assert (language, demo.strip()) == ("sh", "hubbub serve")
    with chromium() as browser:
        demo_server = server(demo.strip(), reader, free_port(), tmp_path)
        try:
            wait_ready(demo_server)
            page = open_page(browser, problems)
            page.goto(demo_server.url + "/")
            expect(page).to_have_title("hubbub demo chat")
            expect(page.locator("#join-form")).to_be_visible()
            page.context.close()
        finally:
            stop(demo_server)

        # 3. The app, saved under the name the tutorial gives, run as it says.
        language, title, app = blocks["app"]
        assert (language, title) == ("python", "app.py")
        (reader / "app.py").write_text(app, encoding="utf-8")
        language, _, run = blocks["run"]
        assert (language, run.strip()) == ("sh", "uvicorn app:app")
        port = free_port()
        app_server = server(run.strip(), reader, port, tmp_path)
        try:
            wait_ready(app_server, "/hub/health")

            # 4. Publishing from server code: the answer shown is the answer given.
            language, _, publish = blocks["publish"]
            assert language == "sh" and PORT_IN_DOCS in publish
            answer = shell(publish.replace(PORT_IN_DOCS, f"127.0.0.1:{port}"), reader, timeout=30)
            assert json.loads(answer) == {"offset": 1}

            # 5. The page: history first, then a live publication, in real Chromium.
            language, title, html = blocks["page"]
            assert (language, title) == ("html", "index.html")
            (reader / "index.html").write_text(html, encoding="utf-8")
            page = open_page(browser, problems)
            page.goto(app_server.url + "/")
            headlines = page.locator("#news li")
            expect(headlines).to_have_text(["hubbub is running"])
            language, _, again = blocks["publish-again"]
            assert language == "sh" and PORT_IN_DOCS in again
            answer = shell(again.replace(PORT_IN_DOCS, f"127.0.0.1:{port}"), reader, timeout=30)
            assert json.loads(answer) == {"offset": 2}
            expect(headlines).to_have_text(["hubbub is running", "and it is live"])
            page.context.close()
        finally:
            stop(app_server)
    # The browser asks for /favicon.ico, which the tutorial's app does not have: that
    # one refused request (the access log says which) and its console line are allowed.
    refused = re.findall(r'"(\w+ \S+) HTTP/[\d.]+" ([45]\d\d)', app_server.log())
    assert {request for request, _ in refused} <= {"GET /favicon.ico"}, app_server.log()
    not_found = "Failed to load resource: the server responded with a status of 404"
    assert [p for p in problems if not_found not in p] == []
    assert len(problems) <= len(refused)
