"""Server-Sent Events through a real uvicorn process, read by real HTTP clients.

httpx streams the responses over TCP; ``curl -N`` and headless Chromium's
``EventSource`` show that ordinary SSE clients work unchanged, the browser
resuming with its own ``Last-Event-ID``. The hub is ``tests/apps/sse_app.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from .servers import Server, run_server

TIMEOUT = httpx.Timeout(5.0)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One ``hubbub serve sse_app:app`` for the module (tests use their own channels)."""
    directory = tmp_path_factory.mktemp("sse")
    with run_server(["-m", "hubbub", "serve", "sse_app:app", "--port", "{port}"], directory) as s:
        yield s


class Events:
    """Reads SSE events from a streaming httpx response."""

    def __init__(self, response: httpx.Response) -> None:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
        self.lines = response.iter_lines()

    def next(self) -> dict[str, str]:
        """The next event or comment: its fields, ``data`` lines joined."""
        fields: dict[str, str] = {}
        for line in self.lines:
            if not line:
                if fields:
                    return fields
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "data" and "data" in fields:
                fields["data"] += "\n" + value
            else:
                fields[name or "comment"] = value
        raise AssertionError(f"the stream ended; last fields {fields}")

    def take(self, kind: str, count: int) -> list[dict[str, Any]]:
        """The next ``count`` events of ``kind`` (pings and other events skipped)."""
        found: list[dict[str, Any]] = []
        for _ in range(10_000):
            if len(found) == count:
                return found
            fields = self.next()
            if fields.get("event") == kind:
                found.append({**json.loads(fields["data"]), "_id": fields.get("id")})
        raise AssertionError("too many events without the expected ones")


def publish(server: Server, channel: str, count: int = 1, data: Any = None) -> list[int | None]:
    """Publish ``count`` publications ``{"n": i, "data": data}`` into ``channel``."""
    response = httpx.post(
        server.url + "/test/publish",
        json={"channel": channel, "data": data, "count": count},
        timeout=30,
    )
    response.raise_for_status()
    offsets: list[int | None] = response.json()["offsets"]
    return offsets


def state(server: Server) -> dict[str, int]:
    """The hub's open connections, SSE streams and slow-consumer closes."""
    response = httpx.get(server.url + "/test/state", timeout=5)
    result: dict[str, int] = response.json()
    return result


def wait_for(server: Server, check: Any, deadline: float = 10.0) -> dict[str, int]:
    """Poll the hub's state until ``check(state)`` holds (bounded in time)."""
    end = time.monotonic() + deadline
    while True:
        current = state(server)
        if check(current):
            return current
        assert time.monotonic() < end, f"state never matched: {current}"
        time.sleep(0.05)


def test_live_drop_and_resume_with_last_event_id(server: Server) -> None:
    """Over TCP: live events, a dropped stream, then exactly the missed ones after reconnect."""
    url = server.url + "/sse?channel=feed:e2e-a&channel=feed:e2e-b&channel=e2e-plain"
    with httpx.Client(timeout=TIMEOUT) as client:
        with client.stream("GET", url) as response:
            events = Events(response)
            assert len(events.take("subscribed", 3)) == 3
            publish(server, "feed:e2e-a", 2)
            publish(server, "e2e-plain", 1)
            publish(server, "feed:e2e-b", 1)
            seen = events.take("message", 4)
            assert [(m["channel"], m["data"]["n"]) for m in seen] == [
                ("feed:e2e-a", 0),
                ("feed:e2e-a", 1),
                ("e2e-plain", 0),
                ("feed:e2e-b", 0),
            ]
            last = seen[-1]["_id"]
        wait_for(server, lambda s: s["sse"] == 0)
        publish(server, "feed:e2e-a", 3)
        publish(server, "feed:e2e-b", 2)
        with client.stream("GET", url, headers={"Last-Event-ID": last}) as response:
            events = Events(response)
            replies: list[dict[str, Any]] = []
            missed: list[dict[str, Any]] = []
            for _ in range(100):
                fields = events.next()
                if fields.get("event") == "subscribed":
                    replies.append(json.loads(fields["data"]))
                elif fields.get("event") == "message":
                    missed.append(json.loads(fields["data"]))
                if len(replies) == 3 and len(missed) == 5:
                    break
            assert [r.get("recovered") for r in replies] == [True, True, False]
            assert [(m["channel"], m["offset"]) for m in missed] == [
                ("feed:e2e-a", 3),
                ("feed:e2e-a", 4),
                ("feed:e2e-a", 5),
                ("feed:e2e-b", 2),
                ("feed:e2e-b", 3),
            ]
            publish(server, "feed:e2e-a", 1)
            assert events.take("message", 1)[0]["offset"] == 6
    wait_for(server, lambda s: s["sse"] == 0)


def test_trimmed_history_is_signalled(server: Server) -> None:
    """More missed than the history keeps: ``subscribed`` says ``recovered: false``."""
    url = server.url + "/sse?channel=hist:e2e"
    with httpx.Client(timeout=TIMEOUT) as client:
        with client.stream("GET", url) as response:
            first = Events(response).take("subscribed", 1)[0]["_id"]
        publish(server, "hist:e2e", 8)
        with client.stream("GET", url + "&last_event_id=" + first) as response:
            reply = Events(response).take("subscribed", 1)[0]
            assert reply["recovered"] is False and reply["offset"] == 8
    wait_for(server, lambda s: s["sse"] == 0)


@pytest.mark.parametrize(
    ("query", "status"),
    [
        ("", 400),
        ("?channel=feed:x&last_event_id=forged", 400),
        ("?channel=nowhere:x", 404),
        ("?channel=%23alice&user=bob", 403),
    ],
)
def test_refusals_are_json_before_the_stream(server: Server, query: str, status: int) -> None:
    """Refusals come back as JSON ``{code, reason}`` with their status, over a real server."""
    response = httpx.get(server.url + "/sse" + query, timeout=5)
    assert response.status_code == status
    assert response.json()["code"] == status and response.json()["reason"]


def test_pings_flow_while_idle(server: Server) -> None:
    """``: ping`` comments arrive while nothing is published."""
    with httpx.Client(timeout=TIMEOUT) as client:
        with client.stream("GET", server.url + "/sse?channel=e2e-idle") as response:
            events = Events(response)
            events.take("subscribed", 1)
            assert [events.next() for _ in range(3)] == [{"comment": "ping"}] * 3
    wait_for(server, lambda s: s["sse"] == 0)


def test_disconnect_ends_the_stream(server: Server) -> None:
    """``Hub.disconnect(user)`` ends the user's stream with ``event: disconnect``."""
    with httpx.Client(timeout=TIMEOUT) as client:
        with client.stream("GET", server.url + "/sse?channel=e2e-kick&user=kicked") as response:
            events = Events(response)
            events.take("subscribed", 1)
            closed = httpx.post(server.url + "/test/disconnect", json={"user": "kicked"})
            assert closed.json() == {"closed": 1}
            goodbye = events.take("disconnect", 1)[0]
            assert goodbye["code"] == 4403 and goodbye["reconnect"] is False
            assert list(events.lines) == []  # the response ends
    wait_for(server, lambda s: s["sse"] == 0)


def test_a_reader_that_stops_is_dropped(server: Server) -> None:
    """A client that stops reading is closed as a slow consumer; the hub forgets it."""
    before = state(server)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(b"GET /sse?channel=e2e-slow HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        wait_for(server, lambda s: s["sse"] == before["sse"] + 1)
        for _ in range(400):  # at most ~64 MB, far beyond any socket buffer
            publish(server, "e2e-slow", 20, "x" * 8000)
            if state(server)["slow_consumer_closes"] > before["slow_consumer_closes"]:
                break
        after = wait_for(server, lambda s: s["sse"] == before["sse"])
        assert after["slow_consumer_closes"] == before["slow_consumer_closes"] + 1


def test_curl_streams_events(server: Server, tmp_path: Path) -> None:
    """``curl -N`` shows the stream as it comes."""
    curl = shutil.which("curl")
    if curl is None:
        if os.environ.get("CI") == "true":
            pytest.fail("curl is not installed (CI=true)")
        pytest.skip("curl is not installed")
    process = subprocess.Popen(
        [curl, "-N", "-s", "--max-time", "20", server.url + "/sse?channel=e2e-curl"],
        stdout=subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        lines = []
        for _ in range(100):
            lines.append(process.stdout.readline().decode())
            if lines[-1] == "event: subscribed\n":
                break
        publish(server, "e2e-curl", 1, "hello")
        for _ in range(100):
            line = process.stdout.readline().decode()
            if line.startswith("data: ") and '"type":"message"' in line:
                assert json.loads(line[6:])["data"] == {"n": 0, "data": "hello"}
                break
        else:
            raise AssertionError("no message event from curl")
    finally:
        process.terminate()
        process.wait(10)
        if process.stdout is not None:
            process.stdout.close()
    wait_for(server, lambda s: s["sse"] == 0)


_EVENT_SOURCE = """
(url) => {
  window.got = [];
  window.replies = [];
  window.opens = 0;
  const source = new EventSource(url);
  window.source = source;
  source.onopen = () => { window.opens += 1; };
  source.onmessage = (event) => {
    window.got.push({...JSON.parse(event.data), id: event.lastEventId});
  };
  source.addEventListener("subscribed", (event) => {
    window.replies.push(JSON.parse(event.data));
  });
}
"""


@pytest.mark.browser
def test_browser_event_source_resumes_on_its_own(server: Server) -> None:
    """Chromium's ``EventSource`` gets the events, reconnects by itself when the response
    ends, and its automatic ``Last-Event-ID`` recovers what was published meanwhile."""
    from .test_demo_browser import chromium

    with chromium() as browser:
        page = browser.new_page()
        page.goto(server.url + "/health")  # same origin as the stream
        page.evaluate(_EVENT_SOURCE, "/sse?channel=feed:browser&user=reader")
        page.wait_for_function("window.replies.length === 1")
        publish(server, "feed:browser", 2)
        page.wait_for_function("window.got.length === 2")
        # End the response from the server; the page ignores the advice not to reconnect.
        httpx.post(server.url + "/test/disconnect", json={"user": "reader"}, timeout=5)
        wait_for(server, lambda s: s["sse"] == 0)
        publish(server, "feed:browser", 3)  # missed: the browser waits `retry` ms (1-5 s)
        page.wait_for_function("window.replies.length === 2", timeout=15_000)
        page.wait_for_function("window.got.length === 5")
        got = page.evaluate("window.got")
        replies = page.evaluate("window.replies")
        assert [m["offset"] for m in got] == [1, 2, 3, 4, 5]
        assert [m["data"]["n"] for m in got] == [0, 1, 0, 1, 2]
        assert replies[1]["recovered"] is True
        assert page.evaluate("window.opens") == 2
        page.evaluate("window.source.close()")
    wait_for(server, lambda s: s["sse"] == 0)
