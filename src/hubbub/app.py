"""``HubApp``: the mountable ASGI application around a :class:`~hubbub.Hub`.

Routes are matched on the app's own path (``path`` minus ``root_path``), so the
same app works top-level, under Starlette's ``Mount``/``WebSocketRoute``,
FastAPI, Litestar or a proxy's prefix. Scope types it does not own pass to a
404. When it is the top-level app it starts and stops the hub from the ASGI
lifespan itself.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from functools import cache
from importlib import resources

from ._admin import AdminPage
from ._demo import handle_notify
from ._errors import AuthenticationFailed, NotFound, RateLimited
from ._http import JSON_TYPE, Receive, Scope, SendCallable, deny, respond, send_error, send_refusal
from ._http import route_path as route_path
from ._keys import KeyGuard, check_key, validate_key
from ._sse import serve_sse
from ._websocket import serve_websocket
from .api import DEFAULT_MAX_BODY, HubAPI
from .hub import Hub
from .limits import Limits
from .metrics import render

__all__ = ["HubApp", "route_path"]


@cache
def _static(name: str) -> bytes:
    return (resources.files("hubbub") / "static" / name).read_bytes()


# The browser client and its TypeScript declarations, served beside /ws.
_CLIENT_FILES = {
    "/hubbub.js": b"text/javascript; charset=utf-8",
    "/hubbub.d.ts": b"application/typescript; charset=utf-8",
}


@cache
def _etag(name: str) -> bytes:
    return b'"' + hashlib.sha256(_static(name)).hexdigest()[:32].encode() + b'"'


async def _client_file(scope: Scope, send: SendCallable, path: str) -> None:
    """The client module, revalidated on every use (``no-cache`` + ETag) so upgrades show.

    Any origin may import it (a module script is fetched with CORS): it holds no secret.
    """
    name = path[1:]
    etag = _etag(name)
    headers = [
        (b"etag", etag),
        (b"cache-control", b"no-cache"),
        (b"access-control-allow-origin", b"*"),
        (b"x-content-type-options", b"nosniff"),
    ]
    for key, value in scope.get("headers") or ():
        if key.lower() == b"if-none-match" and etag in {v.strip() for v in value.split(b",")}:
            await send({"type": "http.response.start", "status": 304, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return
    await respond(send, 200, _static(name), _CLIENT_FILES[path], headers)


class HubApp:
    """Serves a hub over ASGI: WebSocket ``/ws``, SSE ``/sse``, ``/health``, ``/ready``, ``/api/``.

    Args:
        hub: the hub to serve.
        demo: also serve the demo chat page at ``/`` and its ``POST /demo/notify``
            (anyone may notify anyone: for the demo only).
        api_keys: keys accepted by the server HTTP API under ``/api/`` (see
            :class:`hubbub.HubAPI`); without any, the API answers 404.
        api_max_body: the largest API request body in bytes.
        metrics_key: makes ``/metrics`` ask for ``Authorization: apikey
            <metrics_key>`` (at least 16 characters; 10 wrong keys within a
            minute from one address get 429 until that minute ends).
        metrics: serve ``/metrics`` at all (``False``: 404).
        admin_key: turns on the live admin page at ``/admin`` (its figures need
            ``Authorization: apikey <admin_key>``); without it ``/admin`` is 404.
    """

    def __init__(
        self,
        hub: Hub,
        *,
        demo: bool = False,
        api_keys: Iterable[str] | None = None,
        api_max_body: int = DEFAULT_MAX_BODY,
        metrics_key: str | None = None,
        admin_key: str | None = None,
        metrics: bool = True,
    ) -> None:
        if not isinstance(hub, Hub):
            raise TypeError("HubApp needs a hubbub.Hub")
        if metrics_key is not None:
            validate_key(metrics_key, "metrics_key")
        self.hub = hub
        self.demo = demo
        self.metrics_key = metrics_key
        self.metrics = bool(metrics)
        self.metrics_guard = KeyGuard("metrics", trusted_proxies=hub.limits.trusted_proxies)
        self.api = HubAPI(hub, keys=api_keys if api_keys is not None else (), max_body=api_max_body)
        self.admin: AdminPage | None = (
            AdminPage(hub, key=admin_key) if admin_key is not None else None
        )

    def set_metrics_key(self, key: str | None) -> None:
        """Replace the key ``/metrics`` asks for (``None``: open); checked first."""
        if key is not None:
            validate_key(key, "metrics_key")
        self.metrics_key = key

    def set_limits(self, limits: Limits) -> None:
        """Apply new limits: the hub's (:meth:`Hub.set_limits`) and the key guards' proxies.

        The guards of the API, the admin page and ``/metrics`` read the client's
        address through ``limits.trusted_proxies`` as the hub does.
        """
        self.hub.set_limits(limits)
        guards = [self.metrics_guard, self.api.guard]
        if self.admin is not None:
            guards.append(self.admin.guard)
        for guard in guards:
            guard.trusted_proxies = tuple(limits.trusted_proxies)

    async def __call__(self, scope: Scope, receive: Receive, send: SendCallable) -> None:
        kind = scope["type"]
        if kind == "websocket":
            if route_path(scope) == "/ws":
                await serve_websocket(self.hub.session_host, scope, receive, send)
            else:
                await receive()
                await deny(scope, send, NotFound("no WebSocket endpoint here; use <prefix>/ws"))
        elif kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            if self.admin is None:
                await self._lifespan(receive, send)
            else:
                # The admin page's rate samples are taken while the app runs.
                async with self.admin.sampler.running():
                    await self._lifespan(receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: SendCallable) -> None:
        path = route_path(scope)
        method = scope.get("method", "GET")
        if path == "/health" and method in ("GET", "HEAD"):
            await respond(send, 200, b'{"status":"ok"}', JSON_TYPE)
        elif path == "/ready" and method in ("GET", "HEAD"):
            # Ready: the hub runs and its broker answers (Redis reachable).
            ready = self.hub.running and await self.hub.broker_ready()
            status, body = (
                (200, b'{"status":"ready"}') if ready else (503, b'{"status":"unavailable"}')
            )
            await respond(send, status, body, JSON_TYPE)
        elif path == "/metrics" and method in ("GET", "HEAD") and self.metrics:
            await self._metrics(scope, send)
        elif path == "/" and self.demo and method in ("GET", "HEAD"):
            await respond(send, 200, _static("demo.html"), b"text/html; charset=utf-8")
        elif path in _CLIENT_FILES and method in ("GET", "HEAD"):
            await _client_file(scope, send, path)
        elif path == "/demo/notify" and self.demo and method == "POST":
            await handle_notify(self.hub, receive, send)
        elif self.admin is not None and (path == "/admin" or path.startswith("/admin/")):
            await self.admin.handle(path[len("/admin") :], scope, receive, send)
        elif path.startswith("/api/"):
            await self.api.handle(path[len("/api/") :], scope, receive, send)
        elif path == "/sse":
            await serve_sse(self.hub.session_host, scope, receive, send)
        elif path == "/ws":
            await send_refusal(
                send, 426, "use a WebSocket to connect here", headers=[(b"upgrade", b"websocket")]
            )
        else:
            await send_error(send, NotFound("not found"))

    async def _metrics(self, scope: Scope, send: SendCallable) -> None:
        """Prometheus text; open unless ``metrics_key`` asks for ``Authorization: apikey``."""
        if self.metrics_key is not None:
            check = check_key(scope, (self.metrics_key.encode(),), self.metrics_guard)
            if check.outcome == "locked":
                reason = "too many wrong metrics keys from this address; retry later"
                await send_error(send, RateLimited(reason), retry_after=check.retry_after)
                return
            if not check.ok:
                await send_error(send, AuthenticationFailed("metrics need an API key"))
                return
        await respond(send, 200, render(self.hub), b"text/plain; version=0.0.4; charset=utf-8")

    async def _lifespan(self, receive: Receive, send: SendCallable) -> None:
        message = await receive()
        if message["type"] != "lifespan.startup":
            return
        if self.hub.state != "stopped":
            # Someone else runs the hub (``async with hub`` around the server): leave it be.
            await send({"type": "lifespan.startup.complete"})
            await receive()
            await send({"type": "lifespan.shutdown.complete"})
            return
        started = False
        try:
            async with self.hub:
                started = True
                await send({"type": "lifespan.startup.complete"})
                await receive()
        except Exception as exc:
            phase = "shutdown" if started else "startup"
            await send(
                {"type": f"lifespan.{phase}.failed", "message": f"hub {phase} failed: {exc}"}
            )
            return
        await send({"type": "lifespan.shutdown.complete"})
