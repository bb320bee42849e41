"""``hubbub.contrib.django`` against a real Django: sessions in a SQLite test database.

Django is configured once for this module (settings.configure), its tables
migrated into a temporary SQLite file; sessions are made by Django's own
test ``Client.login``, so the authenticator reads exactly what a login writes.
The ASGI app is driven through Starlette's TestClient, whose portal thread
runs the hub's event loop (so this test's thread is "other code" for ``hub.sync``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("django")

from django.http import HttpRequest, HttpResponse
from django.urls import path
from starlette.testclient import TestClient, WebSocketDenialResponse

from hubbub import Hub, Identity, Namespace, PermissionDenied

pytestmark = pytest.mark.anyio

HOST = "testserver"
SITE = f"http://{HOST}"


def hello(request: HttpRequest) -> HttpResponse:
    return HttpResponse(f"hello {request.user.get_username() or 'anonymous'}")


urlpatterns = [path("hello/", hello)]


@pytest.fixture
def anyio_backend() -> str:
    """Django's async support (asgiref) is asyncio-only."""
    return "asyncio"


@pytest.fixture(scope="module")
def django_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Django configured for this module, its tables migrated into a fresh SQLite file."""
    import django
    from django.conf import settings
    from django.core.management import call_command

    db = tmp_path_factory.mktemp("django") / "db.sqlite3"
    if not settings.configured:
        settings.configure(
            SECRET_KEY="test-secret-key-for-hubbub-contrib-django",
            ALLOWED_HOSTS=[HOST, "127.0.0.1"],
            INSTALLED_APPS=[
                "django.contrib.auth",
                "django.contrib.contenttypes",
                "django.contrib.sessions",
            ],
            MIDDLEWARE=[
                "django.contrib.sessions.middleware.SessionMiddleware",
                "django.contrib.auth.middleware.AuthenticationMiddleware",
            ],
            ROOT_URLCONF=__name__,
            DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": str(db)}},
            PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"],
            CSRF_TRUSTED_ORIGINS=["https://app.example", "https://*.wild.example"],
            USE_TZ=True,
            DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
            HUBBUB={},
        )
        django.setup()
    settings.DATABASES["default"]["NAME"] = str(db)
    call_command("migrate", verbosity=0)
    yield db


@pytest.fixture(scope="module")
def users(django_db: Path) -> dict[str, Any]:
    """alice (a plain user in the 'editors' group), staffer (staff), root (superuser), gone."""
    from django.contrib.auth.models import Group, Permission, User

    editors = Group.objects.create(name="editors")
    editors.permissions.add(Permission.objects.get(codename="change_user"))
    alice = User.objects.create_user("alice", password="pw-alice")
    alice.groups.add(editors)
    return {
        "alice": alice,
        "staffer": User.objects.create_user("staffer", password="pw-staffer", is_staff=True),
        "root": User.objects.create_superuser("root", password="pw-root"),
        "gone": User.objects.create_user("gone", password="pw-gone"),
    }


def session_of(name: str) -> str:
    """A real session key: Django's test client logs ``name`` in."""
    from django.conf import settings
    from django.test import Client

    client = Client()
    assert client.login(username=name, password=f"pw-{name}")
    return str(client.cookies[settings.SESSION_COOKIE_NAME].value)


async def asession(name: str) -> str:
    """:func:`session_of` from async code (the test client is synchronous Django)."""
    from asgiref.sync import sync_to_async

    return await sync_to_async(session_of)(name)


def scope(session: str | None, origin: str | None = SITE, **headers: str) -> dict[str, Any]:
    raw = [(b"host", HOST.encode())]
    if session is not None:
        raw.append((b"cookie", f"other=1; sessionid={session}".encode()))
    if origin is not None:
        raw.append((b"origin", origin.encode()))
    raw += [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()]
    return {"type": "websocket", "path": "/hubbub/ws", "headers": raw}


# -- the authenticator -----------------------------------------------------------------------


async def test_the_logged_in_user_becomes_the_hub_user(users: dict[str, Any]) -> None:
    """A session of alice, from the site's own page: user = pk, name = username, permissions."""
    from hubbub.contrib.django import DjangoIdentity, SessionAuthenticator

    identity = await SessionAuthenticator()(scope(await asession("alice")))
    assert isinstance(identity, DjangoIdentity)
    assert identity.user == str(users["alice"].pk) and identity.name == "alice"
    assert identity.has_perm("auth.change_user")  # through the group
    assert not identity.has_perm("auth.delete_user")
    assert not identity.is_staff and not identity.is_superuser
    assert "permissions" not in repr(identity)


async def test_no_cookie_or_a_dead_session_is_no_credentials(users: dict[str, Any]) -> None:
    """Without the cookie, with a made-up key, or after logout: None (anonymous per the hub)."""
    from asgiref.sync import sync_to_async
    from django.contrib.sessions.backends.db import SessionStore

    from hubbub.contrib.django import SessionAuthenticator

    auth = SessionAuthenticator()
    assert await auth(scope(None)) is None
    assert await auth(scope("x" * 32)) is None
    assert await auth(scope("not a valid key; \x00")) is None
    key = await asession("gone")
    await sync_to_async(SessionStore(key).delete)()
    assert await auth(scope(key)) is None


async def test_an_inactive_user_or_a_changed_password_ends_the_session(
    users: dict[str, Any],
) -> None:
    """Django's own rules hold: an inactive user and a session of an old password are refused."""
    from asgiref.sync import sync_to_async

    from hubbub.contrib.django import SessionAuthenticator

    auth = SessionAuthenticator()
    key = await asession("staffer")
    assert await auth(scope(key)) is not None
    staffer = users["staffer"]

    def change_password() -> None:
        staffer.set_password("pw-staffer-2")
        staffer.save()

    await sync_to_async(change_password)()
    try:
        assert await auth(scope(key)) is None
    finally:
        staffer.set_password("pw-staffer")
        await sync_to_async(staffer.save)()
    key = await asession("staffer")
    staffer.is_active = False
    await sync_to_async(staffer.save)()
    try:
        assert await auth(scope(key)) is None
    finally:
        staffer.is_active = True
        await sync_to_async(staffer.save)()


async def test_the_cookie_from_another_origin_is_refused(users: dict[str, Any]) -> None:
    """A foreign Origin with the session cookie: 403; trusted origins and same-origin pass."""
    from hubbub.contrib.django import SessionAuthenticator

    auth = SessionAuthenticator()
    key = await asession("alice")
    with pytest.raises(PermissionDenied, match="Origin"):
        await auth(scope(key, origin="http://evil.example"))
    with pytest.raises(PermissionDenied):
        await auth(scope(key, origin=None))  # no Origin, no Sec-Fetch-Site: not a page we know
    with pytest.raises(PermissionDenied):
        await auth(scope(key, origin="https://x.wild.example"))  # wildcards are not honoured
    assert await auth(scope(key, origin="https://app.example")) is not None  # CSRF_TRUSTED
    assert await auth(scope(key, origin=None, sec_fetch_site="same-origin")) is not None
    own = SessionAuthenticator(allowed_origins=["http://other.example:8080"])
    assert await own(scope(key, origin="http://other.example:8080")) is not None
    with pytest.raises(PermissionDenied):
        await own(scope(key, origin="https://app.example"))
    with pytest.raises(TypeError):
        SessionAuthenticator(allowed_origins="http://a.example")


# -- permissions -----------------------------------------------------------------------------


async def test_has_perm_reads_the_permissions_taken_at_connect(users: dict[str, Any]) -> None:
    """has_perm: group permissions count, superusers have all, staff=True needs is_staff."""
    from hubbub.contrib.django import SessionAuthenticator, has_perm

    auth = SessionAuthenticator()
    alice = await auth(scope(await asession("alice")))
    staffer = await auth(scope(await asession("staffer")))
    root = await auth(scope(await asession("root")))
    assert alice is not None and staffer is not None and root is not None
    change = has_perm("auth.change_user")
    staff = has_perm(staff=True)
    assert change(alice, "ns:x") and not change(staffer, "ns:x") and change(root, "ns:x")
    assert change(alice, "ns:x", b"{}")  # the can_publish signature too
    assert not staff(alice, "ns:x") and staff(staffer, "ns:x") and staff(root, "ns:x")
    assert not change(Identity(user=alice.user), "ns:x")  # not a Django identity
    assert not change(Identity(), "ns:x")
    with pytest.raises(ValueError, match="at least one"):
        has_perm()
    with pytest.raises(ValueError, match="app_label"):
        has_perm("change_user")


# -- the ASGI application ----------------------------------------------------------------------


def make_app(**options: Any) -> tuple[Hub, Any]:
    from hubbub.contrib.django import get_asgi_application, has_perm

    hub = Hub(
        namespaces=[
            Namespace(name="chat", subscribe="authenticated", history_size=10),
            Namespace(name="staff", can_subscribe=has_perm(staff=True)),
        ]
    )
    return hub, get_asgi_application(hub, **options)


def ws_headers(session: str, origin: str = SITE) -> dict[str, str]:
    return {"cookie": f"sessionid={session}", "origin": origin}


def test_routing_lifespan_and_django(users: dict[str, Any]) -> None:
    """The prefix goes to the hub (started by the lifespan), the rest to Django with its session."""
    hub, app = make_app()
    with TestClient(app, base_url=SITE) as client:
        assert hub.running
        assert client.get("/hubbub/health").json() == {"status": "ok"}
        assert client.get("/hubbub/hubbub.js").headers["content-type"].startswith("text/javascript")
        assert client.get("/hello/").text == "hello anonymous"
        client.cookies.set("sessionid", session_of("alice"))
        assert client.get("/hello/").text == "hello alice"
        assert client.get("/hubbubx/").status_code == 404  # Django's 404, not the hub's
        assert client.get("/hubbub/api/channels").status_code == 404  # no API key configured
        with pytest.raises(WebSocketDenialResponse) as refused:
            with client.websocket_connect("/elsewhere"):
                pass
        assert refused.value.status_code == 404
    assert hub.state == "stopped"


def test_a_websocket_with_the_session_and_permissions(users: dict[str, Any]) -> None:
    """The session cookie logs the socket in; a non-staff user is refused 403 in staff:."""
    _, app = make_app()
    with TestClient(app, base_url=SITE) as client:
        alice = session_of("alice")
        with client.websocket_connect(
            "/hubbub/ws", headers=ws_headers(alice), subprotocols=["hubbub.v1.json"]
        ) as ws:
            welcome = ws.receive_json()
            assert welcome["type"] == "welcome" and welcome["user"] == str(users["alice"].pk)
            ws.send_json({"type": "subscribe", "channel": "staff:room", "id": 1})
            refused = ws.receive_json()
            assert refused["type"] == "error" and refused["code"] == 403
            ws.send_json({"type": "subscribe", "channel": "chat:room", "id": 2})
            assert ws.receive_json()["type"] == "subscribed"
        with client.websocket_connect(
            "/hubbub/ws", headers=ws_headers(session_of("staffer")), subprotocols=["hubbub.v1.json"]
        ) as ws:
            ws.receive_json()
            ws.send_json({"type": "subscribe", "channel": "staff:room", "id": 1})
            assert ws.receive_json()["type"] == "subscribed"
        # The same cookie from another site's page: refused before the upgrade.
        with pytest.raises(WebSocketDenialResponse) as caught:
            with client.websocket_connect(
                "/hubbub/ws", headers=ws_headers(alice, "http://evil.example")
            ):
                pass
        assert caught.value.status_code == 403
        # No cookie: the hub admits no anonymous clients.
        with pytest.raises(WebSocketDenialResponse) as caught:
            with client.websocket_connect("/hubbub/ws", headers={"origin": SITE}):
                pass
        assert caught.value.status_code == 401


def test_publish_and_notify_from_sync_code_use_the_running_hub(users: dict[str, Any]) -> None:
    """publish()/notify() from this (non-loop) thread go through hub.sync into the live socket."""
    from hubbub.contrib.django import disconnect, notify, publish

    _, app = make_app()
    with TestClient(app, base_url=SITE) as client:
        with client.websocket_connect(
            "/hubbub/ws", headers=ws_headers(session_of("alice")), subprotocols=["hubbub.v1.json"]
        ) as ws:
            assert ws.receive_json()["type"] == "welcome"
            ws.send_json({"type": "subscribe", "channel": "chat:room", "id": 1})
            assert ws.receive_json()["type"] == "subscribed"
            position = publish("chat:room", {"text": "from a view"})
            assert position is not None and position.offset == 1
            message = ws.receive_json()
            assert message["channel"] == "chat:room" and message["data"] == {"text": "from a view"}
            notify(users["alice"].pk, {"type": "poke", "title": "hi"})
            note = ws.receive_json()
            assert note["channel"] == f"#{users['alice'].pk}" and note["data"]["title"] == "hi"
            with pytest.raises(TypeError):
                notify(users["alice"].pk, "not a notification")  # type: ignore[arg-type]
            assert disconnect(users["alice"].pk, "logged out") == 1
            goodbye = ws.receive_json()
            assert goodbye["type"] == "disconnect" and goodbye["reason"] == "logged out"


def test_publish_without_a_hub_or_an_api_says_what_to_configure(django_db: Path) -> None:
    """No hub running in the process and no HUBBUB API settings: a RuntimeError naming them."""
    from hubbub.contrib import django as contrib

    hub = contrib._RUNNING.pop("hub", None)
    try:
        with pytest.raises(RuntimeError, match="API_URL"):
            contrib.publish("chat:room", 1)
    finally:
        if hub is not None:
            contrib._RUNNING["hub"] = hub


def test_bad_configuration_is_refused() -> None:
    """A prefix without its slash, or something that is not a Hub, raises at construction."""
    from hubbub.contrib.django import DjangoHubApp, get_asgi_application

    with pytest.raises(TypeError):
        get_asgi_application(object())  # type: ignore[arg-type]
    from hubbub import HubApp

    for prefix in ("hubbub", "/hubbub/", ""):
        with pytest.raises(ValueError, match="prefix"):
            DjangoHubApp(None, HubApp(Hub()), prefix)
