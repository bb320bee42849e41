"""docs/django.md followed literally: a new Django project, the page's code blocks, a chat.

``django-admin startproject`` and ``startapp`` make the project as a new user
would; every code block of the page that names a file (``# mysite/asgi.py``,
``<!-- chat/templates/... -->``, ``# append to mysite/settings.py``) is written
there; then the project is migrated, served by uvicorn, and two users log in
through Django's login page in Chromium and chat.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from .servers import ROOT, Server, run_server
from .test_demo_browser import chromium, open_page

pytest.importorskip("django")

DOC = ROOT / "docs" / "django.md"
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)
TARGET = re.compile(r"^(?:# |<!-- )(append to )?([\w/.]+)(?: -->)?$")
USERS = {"ada": "ada-password-1", "bo": "bo-password-1"}


def doc_files() -> list[tuple[str, str, bool]]:
    """(path, content, append) for every code block of the page that names its file."""
    found = []
    for _, body in FENCE.findall(DOC.read_text()):
        first, _, rest = body.partition("\n")
        match = TARGET.match(first.strip())
        if match:
            found.append((match.group(2), rest, bool(match.group(1))))
    return found


def run(cwd: Path, env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_the_page_names_the_files_a_new_project_needs() -> None:
    """The page's blocks cover asgi.py, the view, the URLs, both templates and the settings."""
    paths = {path for path, _, _ in doc_files()}
    assert paths == {
        "mysite/asgi.py",
        "chat/views.py",
        "mysite/urls.py",
        "chat/templates/registration/login.html",
        "chat/templates/chat/room.html",
        "mysite/settings.py",
    }


def log_in(browser: Browser, server: Server, name: str, problems: list[str]) -> Page:
    page = open_page(browser, problems)
    page.goto(server.url + "/chat/lobby/")
    page.get_by_label("Username").fill(name)
    page.get_by_label("Password").fill(USERS[name])
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("#log")).to_be_visible()
    return page


@pytest.mark.browser
def test_following_the_django_page_gives_a_working_chat(tmp_path: Path) -> None:
    """startproject + the page's blocks + migrate + uvicorn: two users log in, chat, and one
    notifies the other from a Django view (live, and from history after a reload)."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
    }
    run(tmp_path, env, "-m", "django", "startproject", "mysite")
    project = tmp_path / "mysite"
    run(project, env, "manage.py", "startapp", "chat")
    for path, content, append in doc_files():
        target = project / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if append:
            with target.open("a") as file:
                file.write("\n" + content)
        else:
            target.write_text(content)
    run(project, env, "manage.py", "migrate", "-v0")
    creating = "; ".join(
        f"User.objects.create_user({n!r}, password={p!r})" for n, p in USERS.items()
    )
    run(
        project,
        env,
        "manage.py",
        "shell",
        "-c",
        f"from django.contrib.auth.models import User; {creating}",
    )
    argv = [
        "-m",
        "uvicorn",
        "mysite.asgi:application",
        "--app-dir",
        str(project),
        "--port",
        "{port}",
    ]
    with run_server(
        argv, tmp_path, ready_path="/hubbub/ready", env={"PYTHONPATH": env["PYTHONPATH"]}
    ) as server:
        with chromium() as browser:
            problems: list[str] = []
            ada = log_in(browser, server, "ada", problems)
            bo = log_in(browser, server, "bo", problems)
            # Both subscribed: publish until the other side has it (the first may race bo's join).
            ada.locator("#text").fill("hello bo")
            ada.get_by_role("button", name="Send").click()
            expect(ada.locator("#log")).to_have_value(re.compile("ada: hello bo"))
            bo.locator("#text").fill("hi ada")
            bo.get_by_role("button", name="Send").click()
            expect(ada.locator("#log")).to_have_value(re.compile("bo: hi ada"))
            expect(bo.locator("#log")).to_have_value(re.compile("ada: hello bo\nbo: hi ada"))
            # The poke view notifies bo from synchronous Django code: live on bo's page...
            ada.get_by_placeholder("a user to notify").fill("bo")
            ada.get_by_role("button", name="Poke").click()
            expect(bo.locator("#notes li")).to_have_text(["ada poked you"])
            # ...and, for a page opened later, once, from the personal channel's history.
            bo.reload()
            expect(bo.locator("#notes li")).to_have_text(["ada poked you"])
            favicon = [p for p in problems if "404" in p]
            assert [p for p in problems if p not in favicon] == []
