"""hubbub in a Django project: one ASGI app, Django's logins and permissions, one-call publishing.

Install with ``pip install 'hubbub[django]'`` and serve the project with an
ASGI server (uvicorn)::

    # asgi.py
    import os
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")

    from hubbub import Hub, Namespace
    from hubbub.contrib.django import get_asgi_application

    hub = Hub(namespaces=[Namespace(name="chat", history_size=100)])
    application = get_asgi_application(hub)

What it gives (``docs/django.md`` is the guide):

- :func:`get_asgi_application`: Django's own ASGI app with the hub under a
  prefix (``/hubbub/ws``, ``/hubbub/sse``, ``/hubbub/hubbub.js``,
  ``/hubbub/api/…``), everything else to Django, the hub started and stopped by
  the server's ASGI lifespan (which Django's handler does not speak);
- :class:`SessionAuthenticator`: the logged-in Django user of the session
  cookie becomes the hub user (``user`` = primary key, ``name`` = username),
  loaded through Django's own session and auth APIs in Django's sync thread,
  and only from pages hubbub trusts (the cookie's ``Origin`` check);
- :func:`has_perm`: namespace hooks (``can_subscribe``/``can_publish``) from the
  user's Django permissions, read once at connect time so that no database
  query runs on the event loop;
- :func:`publish` and :func:`notify` (and ``apublish``/``anotify``): one call
  from any Django code; through the hub of this process when it runs here
  (``hub.sync``), else through the hub's HTTP API named in ``settings.HUBBUB``
  (a Celery worker, a management command, a WSGI process).

Settings (all optional), ``HUBBUB = {...}`` in Django's settings:

- ``"PREFIX"``: where the hub is served, ``"/hubbub"`` by default;
- ``"API_KEY"``: a key the hub's HTTP API accepts, and that :func:`publish`
  uses from other processes;
- ``"API_URL"``: the hub's address for other processes, prefix included
  (``"http://127.0.0.1:8000/hubbub"``);
- ``"ALLOWED_ORIGINS"``: other origins whose pages may use the session cookie;
  by default Django's ``CSRF_TRUSTED_ORIGINS`` (those without a wildcard);
- ``"TIMEOUT"``: seconds for an HTTP API call from another process (10).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib import import_module
from typing import TYPE_CHECKING, Any, Final

import anyio
from asgiref.sync import sync_to_async

from .._errors import NotFound, PermissionDenied
from .._http import Receive, Scope, SendCallable, cookie, deny, route_path
from ..app import HubApp
from ..auth import Identity, cookie_allowed, normalise_origin
from ..chat import Notification
from ..hub import Hub
from ..messages import Position

if TYPE_CHECKING:
    from ..client.api import HubbubAPI

__all__ = [
    "DEFAULT_PREFIX",
    "DjangoHubApp",
    "DjangoIdentity",
    "SessionAuthenticator",
    "anotify",
    "apublish",
    "disconnect",
    "get_asgi_application",
    "has_perm",
    "notify",
    "publish",
]

logger = logging.getLogger("hubbub")

DEFAULT_PREFIX: Final = "/hubbub"


def _settings() -> Mapping[str, Any]:
    from django.conf import settings

    value = getattr(settings, "HUBBUB", None) or {}
    if not isinstance(value, Mapping):
        raise TypeError("settings.HUBBUB must be a dict")
    return value


# -- who: the Django user behind the session cookie ---------------------------------------------


@dataclass(frozen=True, slots=True)
class DjangoIdentity(Identity):
    """An :class:`~hubbub.Identity` that also carries what Django said about the user at connect.

    Attributes:
        permissions: ``user.get_all_permissions()`` (``"app_label.codename"``),
            group permissions included; never sent to anyone.
        is_staff: Django's ``is_staff``.
        is_superuser: Django's ``is_superuser`` (has every permission, as in Django).
    """

    permissions: frozenset[str] = field(default=frozenset(), compare=False, repr=False)
    is_staff: bool = False
    is_superuser: bool = False

    def has_perm(self, perm: str) -> bool:
        """Whether the user had ``perm`` when connecting (``User.has_perm`` for an active user)."""
        return self.is_superuser or perm in self.permissions


def _load_identity(session_key: str) -> DjangoIdentity | None:
    """The active user of a session, through Django's own APIs (runs in Django's sync thread)."""
    from django.conf import settings
    from django.contrib.auth import get_user
    from django.db import close_old_connections
    from django.http import HttpRequest

    close_old_connections()
    try:
        request = HttpRequest()
        request.session = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
        # get_user checks the session's auth hash (a changed password logs the session out)
        # and the backend's rules (ModelBackend refuses inactive users).
        user = get_user(request)
        if not user.is_authenticated or not user.is_active:
            return None
        return DjangoIdentity(
            user=str(user.pk),
            name=str(user.get_username()),
            permissions=frozenset(user.get_all_permissions()),
            is_staff=bool(user.is_staff),
            is_superuser=bool(user.is_superuser),
        )
    finally:
        close_old_connections()


class SessionAuthenticator:
    """The hub's :class:`~hubbub.Authenticator` from Django's session cookie.

    A request without the cookie, or whose session holds no active user,
    carries no credentials (``None``): the hub then admits it as anonymous only
    where ``Hub(anonymous=True)``. The cookie counts only when the request comes
    from a page hubbub trusts (:func:`hubbub.auth.cookie_allowed`): this server's
    own origin, one of ``allowed_origins``, or ``Sec-Fetch-Site: same-origin``;
    otherwise the handshake is refused 403, so another site cannot open a
    WebSocket with the visitor's session (cross-site WebSocket hijacking).

    Args:
        allowed_origins: other origins (``scheme://host[:port]``) whose pages may
            use the cookie; by default ``HUBBUB["ALLOWED_ORIGINS"]``, else Django's
            ``CSRF_TRUSTED_ORIGINS`` without the wildcard entries, read when the
            authenticator is built.
        cookie: the session cookie's name; Django's ``SESSION_COOKIE_NAME`` by default.
    """

    def __init__(
        self, *, allowed_origins: Iterable[str] | None = None, cookie: str | None = None
    ) -> None:
        from django.conf import settings

        if isinstance(allowed_origins, str):
            raise TypeError("allowed_origins must be a list of origins, not a str")
        if allowed_origins is None:
            configured = _settings().get("ALLOWED_ORIGINS")
            if configured is None:
                configured = [
                    origin
                    for origin in getattr(settings, "CSRF_TRUSTED_ORIGINS", ())
                    if "*" not in origin
                ]
            allowed_origins = configured
        self.allowed_origins = frozenset(normalise_origin(o) for o in allowed_origins)
        self.cookie: str = cookie or settings.SESSION_COOKIE_NAME
        self._load = sync_to_async(_load_identity, thread_sensitive=True)

    def __repr__(self) -> str:
        return f"<SessionAuthenticator cookie={self.cookie!r}>"

    async def __call__(self, scope: Mapping[str, Any]) -> Identity | None:
        """The Django user of the request's session; ``None`` without one.

        Raises:
            PermissionDenied: the session cookie came with a request from a page
                that may not use it (403).
        """
        session_key = cookie(scope, self.cookie)
        if session_key is None:
            return None
        if not cookie_allowed(scope, self.allowed_origins):
            raise PermissionDenied(
                "the session cookie is accepted only from this site's own pages "
                "(Origin not allowed)"
            )
        identity: DjangoIdentity | None = await self._load(session_key)
        return identity


# -- what: permission hooks from Django permissions ----------------------------------------------


class _PermissionCheck:
    """A namespace hook (``can_subscribe`` and ``can_publish`` alike) from Django permissions.

    It reads only what :class:`DjangoIdentity` carries: hooks run on the event
    loop, where a database query would stall every connection.
    """

    __slots__ = ("perms", "staff")

    def __init__(self, perms: tuple[str, ...], staff: bool) -> None:
        self.perms = perms
        self.staff = staff

    def __repr__(self) -> str:
        return f"has_perm({', '.join(map(repr, self.perms))}, staff={self.staff})"

    def __call__(self, identity: Identity, channel: str, data: bytes | None = None) -> bool:
        if not isinstance(identity, DjangoIdentity):
            return False
        if self.staff and not identity.is_staff:
            return False
        return all(identity.has_perm(perm) for perm in self.perms)


def has_perm(*perms: str, staff: bool = False) -> Callable[..., bool]:
    """A ``can_subscribe``/``can_publish`` hook: the user holds every one of ``perms``.

    ``Namespace(name="staff", can_subscribe=has_perm(staff=True))``,
    ``Namespace(name="news", can_publish=has_perm("news.add_post"))``. Permissions
    are Django's (``"app_label.codename"``, group permissions included, a
    superuser has all), as they were when the user connected: a permission
    taken away applies from the next connection (``hub.sync.disconnect(user)``
    makes it now). Anonymous users and identities from other authenticators
    are refused.

    Raises:
        ValueError: neither a permission nor ``staff`` was asked for.
    """
    if not perms and not staff:
        raise ValueError("has_perm needs at least one permission, or staff=True")
    for perm in perms:
        if not isinstance(perm, str) or "." not in perm:
            raise ValueError(f"a Django permission is 'app_label.codename', not {perm!r}")
    return _PermissionCheck(tuple(perms), staff)


# -- where: one ASGI application for Django and the hub ------------------------------------------


class DjangoHubApp:
    """Routes the hub's prefix to the hub, other HTTP to Django, the lifespan to the hub.

    Django's ASGI handler serves HTTP only: a WebSocket outside the prefix is
    refused 404 here, and the ``lifespan`` scope (which Django's handler would
    reject) starts and stops the hub (:class:`~hubbub.HubApp` does it).
    """

    def __init__(self, django_app: Any, hub_app: HubApp, prefix: str = DEFAULT_PREFIX) -> None:
        if not isinstance(prefix, str) or not prefix.startswith("/") or prefix.endswith("/"):
            raise ValueError("prefix must start with '/' and not end with one, e.g. '/hubbub'")
        self.django_app = django_app
        self.hub_app = hub_app
        self.hub = hub_app.hub
        self.prefix = prefix
        self._lifespan_seen = False
        self._warned = False

    async def __call__(self, scope: Scope, receive: Receive, send: SendCallable) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            self._lifespan_seen = True
            await self.hub_app(scope, receive, send)
            return
        path = route_path(scope)
        prefix = self.prefix
        if path == prefix or path.startswith(prefix + "/"):
            if not self.hub.running and not self._lifespan_seen and not self._warned:
                self._warned = True
                logger.warning(
                    "the hub is not running: this server sent no ASGI lifespan events "
                    "(run uvicorn with --lifespan on, or see docs/django.md for daphne)"
                )
            scope = dict(scope)
            scope["root_path"] = scope.get("root_path", "") + prefix
            await self.hub_app(scope, receive, send)
        elif kind == "http":
            await self.django_app(scope, receive, send)
        elif kind == "websocket":
            await receive()
            await deny(scope, send, NotFound(f"no WebSocket endpoint here; use {prefix}/ws"))


_RUNNING: dict[str, Hub] = {}
"""The hub served by :func:`get_asgi_application` in this process (``publish`` uses it)."""


def get_asgi_application(
    hub: Hub,
    *,
    prefix: str | None = None,
    django_app: Any = None,
    **options: Any,
) -> DjangoHubApp:
    """Django's ASGI application with ``hub`` served under ``prefix``: use it as ``application``.

    Args:
        hub: the hub to serve. Without an authenticator of its own it gets a
            :class:`SessionAuthenticator` (Django's logins).
        prefix: where the hub's paths live (``<prefix>/ws``, ``/sse``,
            ``/hubbub.js``, ``/api/…``, ``/health``); ``HUBBUB["PREFIX"]`` or
            ``"/hubbub"`` by default, clear of Django's ``/admin/`` and a REST ``/api/``.
        django_app: the Django ASGI app; ``django.core.asgi.get_asgi_application()``
            by default (which also runs ``django.setup()``).
        options: passed to :class:`~hubbub.HubApp` (``api_keys``, ``metrics_key``,
            ``admin_key``…); ``api_keys`` defaults to ``[HUBBUB["API_KEY"]]`` when set.
    """
    if not isinstance(hub, Hub):
        raise TypeError("get_asgi_application needs a hubbub.Hub")
    if django_app is None:
        from django.core.asgi import get_asgi_application as django_asgi

        django_app = django_asgi()
    configured = _settings()
    if "api_keys" not in options and configured.get("API_KEY"):
        options["api_keys"] = [configured["API_KEY"]]
    if hub.authenticator is None:
        hub.authenticator = SessionAuthenticator()
    app = DjangoHubApp(
        django_app, HubApp(hub, **options), prefix or configured.get("PREFIX") or DEFAULT_PREFIX
    )
    _RUNNING["hub"] = hub
    return app


# -- telling someone: one call from any Django code ----------------------------------------------

_api_lock = threading.Lock()
_api: dict[str, HubbubAPI] = {}


def _local_hub() -> Hub | None:
    hub = _RUNNING.get("hub")
    return hub if hub is not None and hub.running else None


def _remote() -> HubbubAPI:
    """The HTTP API client of ``settings.HUBBUB`` (one per process, its connections reused)."""
    configured = _settings()
    url, key = configured.get("API_URL"), configured.get("API_KEY")
    if not url or not key:
        raise RuntimeError(
            "hubbub is not running in this process and settings.HUBBUB has no API_URL and "
            "API_KEY to reach it: set both (see docs/django.md), or publish from the server"
        )
    with _api_lock:
        client = _api.get("client")
        if client is None:
            from ..client.api import HubbubAPI

            client = HubbubAPI(url, key, timeout=float(configured.get("TIMEOUT", 10.0)))
            _api["client"] = client
        return client


def _notification(notification: Notification | Mapping[str, Any]) -> Notification:
    if isinstance(notification, Notification):
        return notification
    if not isinstance(notification, Mapping):
        raise TypeError("notification must be a hubbub.Notification or a dict of its fields")
    return Notification(**notification)


def publish(
    channel: str, data: Any = None, *, idempotency_key: str | None = None
) -> Position | None:
    """Publish ``data`` into ``channel`` from synchronous Django code (a view, a signal, a task).

    Inside the server process the hub answers directly (``hub.sync.publish``);
    anywhere else the call goes to the hub's HTTP API (``HUBBUB["API_URL"]`` and
    ``["API_KEY"]``). Returns the publication's position (``None`` without history).

    Raises:
        hubbub.HubbubError: the in-process hub refused it or is unavailable.
        hubbub.client.HubbubAPIError: the HTTP API refused it or did not answer.
        RuntimeError: no hub in this process and no API configured, or called
            from an ``async def`` view (use :func:`apublish` there).
    """
    hub = _local_hub()
    if hub is not None:
        return hub.sync.publish(channel, data, idempotency_key=idempotency_key)
    return _remote().publish(channel, data, idempotency_key=idempotency_key)


def notify(user: str | int, notification: Notification | Mapping[str, Any]) -> Position | None:
    """Push a notification to every connection of ``user`` (a Django pk); see :func:`publish`.

    ``notification`` is a :class:`~hubbub.Notification` or a dict of its fields
    (``type``, ``title``, ``message``, ``data``). A user who is offline gets it
    when they reconnect (the personal channel keeps history).
    """
    note = _notification(notification)
    hub = _local_hub()
    if hub is not None:
        return hub.sync.notify(str(user), note)
    return _remote().notify(str(user), note)


def disconnect(user: str | int, reason: str = "disconnected by the server") -> int:
    """Close every connection of ``user`` on every node (when they log out); see :func:`publish`.

    Returns how many connections were closed on the answering node.
    """
    hub = _local_hub()
    if hub is not None:
        return hub.sync.disconnect(str(user), reason)
    return _remote().disconnect(str(user), reason=reason)


async def apublish(
    channel: str, data: Any = None, *, idempotency_key: str | None = None
) -> Position | None:
    """:func:`publish` for ``async def`` views: awaits the hub, or the HTTP API in a thread."""
    hub = _local_hub()
    if hub is not None:
        if hub.sync.on_hub_thread():
            return await hub.publish(channel, data, idempotency_key=idempotency_key)
        # Another event loop (``async_to_sync`` in a thread): reach the hub's own.
        sync = hub.sync
        return await anyio.to_thread.run_sync(
            lambda: sync.publish(channel, data, idempotency_key=idempotency_key)
        )
    remote = _remote()
    return await anyio.to_thread.run_sync(
        lambda: remote.publish(channel, data, idempotency_key=idempotency_key)
    )


async def anotify(
    user: str | int, notification: Notification | Mapping[str, Any]
) -> Position | None:
    """:func:`notify` for ``async def`` views."""
    note = _notification(notification)
    hub = _local_hub()
    if hub is not None:
        if hub.sync.on_hub_thread():
            return await hub.notify(str(user), note)
        sync = hub.sync
        return await anyio.to_thread.run_sync(lambda: sync.notify(str(user), note))
    remote = _remote()
    return await anyio.to_thread.run_sync(lambda: remote.notify(str(user), note))
