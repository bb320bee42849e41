"""The Django example (examples/django_chat) under a real uvicorn, driven by headless Chromium.

A copy of the project gets its own SQLite database, migrated and given users
through ``manage.py``; the test logs in through Django's login page, chats in
a room from two browser contexts (two users), sends a notification from a
plain Django view and sees it arrive, and checks that the session cookie
does not open a WebSocket from another origin.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect

from .servers import ROOT, Server, run_server
from .test_demo_browser import chromium, open_page

pytest.importorskip("django")

EXAMPLE = ROOT / "examples" / "django_chat"
USERS = {"alice": "alice-password-1", "bob": "bob-password-1"}
API_KEY = "test-example-api-key"

expect.set_options(timeout=15_000)


def manage(project: Path, env: dict[str, str], *args: str) -> str:
    """Run ``manage.py`` of the copied project; its output, or the test fails with it."""
    result = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def project_env(db: Path) -> dict[str, str]:
    src = str(ROOT / "src")
    return {
        **os.environ,
        "DJANGO_CHAT_DB": str(db),
        "HUBBUB_API_KEY": API_KEY,
        "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]),
    }


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, str]]]:
    """A copy of the example with its own database: migrated, with two users."""
    base = tmp_path_factory.mktemp("django_chat")
    copy = base / "django_chat"
    shutil.copytree(EXAMPLE, copy, ignore=shutil.ignore_patterns("db.sqlite3", "__pycache__"))
    env = project_env(base / "db.sqlite3")
    manage(copy, env, "migrate", "-v0")
    creating = "; ".join(
        f"User.objects.create_user({name!r}, password={password!r})"
        for name, password in USERS.items()
    )
    manage(copy, env, "shell", "-c", f"from django.contrib.auth.models import User; {creating}")
    yield copy, env


@pytest.fixture(scope="module")
def server(
    project: tuple[Path, dict[str, str]], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """The example under ``python -m uvicorn`` (lifespan "auto") on a free port."""
    copy, env = project
    argv = [
        "-m",
        "uvicorn",
        "chat_project.asgi:application",
        "--app-dir",
        str(copy),
        "--port",
        "{port}",
    ]
    extra = {k: env[k] for k in ("DJANGO_CHAT_DB", "HUBBUB_API_KEY")}
    extra["PYTHONPATH"] = env["PYTHONPATH"]
    with run_server(
        argv, tmp_path_factory.mktemp("uvicorn"), ready_path="/hubbub/ready", env=extra
    ) as running:
        yield running


def log_in(browser: Browser, server: Server, name: str, problems: list[str]) -> Page:
    """A new browser context (another person) logged in through Django's login page."""
    page = open_page(browser, problems)
    page.goto(server.url + "/chat/")
    expect(page).to_have_title("Log in")  # login_required sent us here
    page.get_by_label("Username").fill(name)
    page.get_by_label("Password").fill(USERS[name])
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_title("Chat Rooms")
    expect(page.locator("#me")).to_have_text(name)
    return page


def enter_room(page: Page, room: str) -> None:
    """Enter a room through the index page's form, as in the Channels tutorial."""
    page.get_by_label("What chat room would you like to enter?").fill(room)
    page.keyboard.press("Enter")
    expect(page).to_have_title("Chat Room")
    expect(page.locator("#status")).to_have_attribute("data-state", "connected")
    expect(page.locator("#status")).to_have_attribute("data-room", "joined")


def say(page: Page, text: str) -> None:
    page.get_by_label("Message", exact=True).fill(text)
    page.get_by_role("button", name="Send").click()


@pytest.mark.browser
def test_log_in_chat_and_get_a_notification(server: Server) -> None:
    """Two users log in through Django, chat in a room with server-stamped names, get a poke."""
    with chromium() as browser:
        problems: list[str] = []
        alice = log_in(browser, server, "alice", problems)
        bob = log_in(browser, server, "bob", problems)
        enter_room(alice, "lobby")
        enter_room(bob, "lobby")

        say(alice, "hello from alice")
        expect(bob.locator("#chat-log")).to_have_value("alice: hello from alice\n")
        expect(alice.locator("#chat-log")).to_have_value("alice: hello from alice\n")
        say(bob, "hi alice")
        expect(alice.locator("#chat-log")).to_have_value("alice: hello from alice\nbob: hi alice\n")

        # Another room does not hear the lobby; entering the lobby again replays its history.
        other = alice.context.new_page()
        other.goto(server.url + "/chat/")
        enter_room(other, "garden")
        say(bob, "lobby only")
        expect(alice.locator("#chat-log")).to_have_value(re.compile("bob: lobby only"))
        expect(other.locator("#chat-log")).to_have_value("")
        other.goto(server.url + "/chat/lobby/")
        expect(other.locator("#chat-log")).to_have_value(re.compile("^alice: hello from alice\n"))

        # A plain synchronous Django view notifies bob; his room page shows it.
        poke = alice.context.new_page()
        poke.goto(server.url + "/chat/notify/")
        poke.get_by_label("User").select_option(label="bob")
        poke.get_by_label("Message").fill("look at the garden")
        poke.get_by_role("button", name="Notify").click()
        expect(poke.locator("#sent")).to_have_text("Sent to bob.")
        expect(bob.get_by_role("list", name="Notifications")).to_have_text(
            "alice says: look at the garden"
        )
        expect(alice.get_by_role("list", name="Notifications").locator("li")).to_have_count(0)
        assert problems == []


def session_cookie(server: Server, name: str) -> str:
    """Log in through the login form without a browser; the ``sessionid`` it sets."""
    with chromium() as browser:
        page = log_in(browser, server, name, [])
        cookies = {c["name"]: c["value"] for c in page.context.cookies()}
    return cookies["sessionid"]


@pytest.mark.browser
def test_the_session_cookie_opens_no_websocket_from_another_origin(server: Server) -> None:
    """The session cookie with a foreign Origin is refused 403; from the site itself it works."""
    cookie = session_cookie(server, "alice")
    url = server.ws_url + "/hubbub/ws"
    headers = {"Cookie": f"sessionid={cookie}"}
    with pytest.raises(InvalidStatus) as caught:
        with ws_connect(
            url,
            additional_headers={**headers, "Origin": "http://evil.example"},
            open_timeout=10,
            proxy=None,
        ):
            pass
    assert caught.value.response.status_code == 403
    with ws_connect(
        url,
        additional_headers={**headers, "Origin": server.url},
        subprotocols=["hubbub.v1.json"],  # type: ignore[list-item]
        open_timeout=10,
        proxy=None,
    ) as ws:
        welcome = json.loads(ws.recv(10))
    assert welcome["type"] == "welcome"
    assert welcome["user"] == "1"  # alice, the first user: her primary key
    # No cookie at all: the example admits no anonymous clients.
    with pytest.raises(InvalidStatus) as caught:
        with ws_connect(url, additional_headers={"Origin": server.url}, proxy=None):
            pass
    assert caught.value.response.status_code == 401


def test_publish_from_another_process_reaches_the_room(
    server: Server, project: tuple[Path, dict[str, str]]
) -> None:
    """A management-command-like process publishes through HUBBUB's API_URL with one call."""
    copy, env = project
    env = {**env, "HUBBUB_API_URL": server.url + "/hubbub"}
    code = (
        "import django; django.setup()\n"
        "from hubbub.contrib.django import publish, notify\n"
        "print(publish('chat:lobby', {'text': 'from cron'}).offset)\n"
        "print(notify(1, {'title': 'cron', 'message': 'done'}).offset)\n"
    )
    out = manage(copy, env, "shell", "-c", code)
    assert [int(line) >= 1 for line in out.split()[-2:]] == [True, True]
    cookie = session_cookie(server, "bob")
    with ws_connect(
        server.ws_url + "/hubbub/ws",
        additional_headers={"Cookie": f"sessionid={cookie}", "Origin": server.url},
        open_timeout=10,
        proxy=None,
    ) as ws:
        json.loads(ws.recv(10))  # welcome
        ws.send(json.dumps({"type": "subscribe", "channel": "chat:lobby", "history": 5, "id": 1}))
        subscribed = json.loads(ws.recv(10))
    texts = [p["data"]["text"] for p in subscribed["publications"]]
    assert "from cron" in texts


SERVERS = {
    "hypercorn": ["-m", "hypercorn", "chat_project.asgi:application", "--bind", "127.0.0.1:{port}"],
    "granian": [
        "-m",
        "granian",
        "--interface",
        "asgi",
        "chat_project.asgi:application",
        "--host",
        "127.0.0.1",
        "--port",
        "{port}",
    ],
}


def login_session(project: tuple[Path, dict[str, str]], name: str) -> str:
    """A session key written by Django's own login (its test client), for non-browser tests."""
    copy, env = project
    code = (
        "from django.test import Client\n"
        "c = Client()\n"
        f"assert c.login(username={name!r}, password={USERS[name]!r})\n"
        "print(c.cookies['sessionid'].value)\n"
    )
    return manage(copy, env, "shell", "-c", code).split()[-1]


def served_env(project: tuple[Path, dict[str, str]]) -> dict[str, str]:
    copy, env = project
    extra = {k: env[k] for k in ("DJANGO_CHAT_DB", "HUBBUB_API_KEY")}
    extra["PYTHONPATH"] = os.pathsep.join([str(copy), env["PYTHONPATH"]])
    return extra


@pytest.mark.parametrize("name", sorted(SERVERS))
def test_other_asgi_servers_run_the_hub_with_django_logins(
    name: str, project: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    """Under hypercorn and granian too: the lifespan starts the hub, the session opens a socket."""
    pytest.importorskip(name)
    session = login_session(project, "bob")
    with run_server(
        SERVERS[name], tmp_path, ready_path="/hubbub/ready", env=served_env(project)
    ) as running:
        with ws_connect(
            running.ws_url + "/hubbub/ws",
            additional_headers={"Cookie": f"sessionid={session}", "Origin": running.url},
            open_timeout=10,
            proxy=None,
        ) as ws:
            welcome = json.loads(ws.recv(10))
            assert welcome["type"] == "welcome" and welcome["user"] == "2"  # bob
            ws.send(json.dumps({"type": "subscribe", "channel": "chat:porch", "id": 1}))
            assert json.loads(ws.recv(10))["type"] == "subscribed"
            ws.send(
                json.dumps({"type": "publish", "channel": "chat:porch", "data": {"text": "hi"}})
            )
            got = [json.loads(ws.recv(10)) for _ in range(1)]
        assert got[0]["data"] == {"text": "hi"} and got[0]["sender"]["name"] == "bob"


def test_daphne_sends_no_lifespan_so_the_hub_says_it_is_not_running(
    project: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    """Daphne has no ASGI lifespan: Django pages work, the hub answers 503 and logs why, once."""
    pytest.importorskip("daphne")
    argv = ["-m", "daphne", "-b", "127.0.0.1", "-p", "{port}", "chat_project.asgi:application"]
    with run_server(
        argv, tmp_path, ready_path="/accounts/login/", env=served_env(project)
    ) as running:
        import urllib.error
        import urllib.request

        for _ in range(2):
            with pytest.raises(urllib.error.HTTPError) as caught:
                urllib.request.urlopen(running.url + "/hubbub/ready", timeout=10)
            assert caught.value.code == 503
            caught.value.close()
        log = running.log()
    assert log.count("this server sent no ASGI lifespan events") == 1
