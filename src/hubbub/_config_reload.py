"""What a reload may change while the server runs: ``hubbub serve``'s SIGHUP.

Rotating a key or tightening a limit should not cost every client its
connection. The :class:`Reloader` compares a new configuration with the running
one (key files by their contents, so a file rewritten in place counts), builds
and checks everything first, then applies what the running objects can take
(keys, limits, allowed origins, JWT verification) and names every other change
as needing a restart, keeping its running value, so the next reload compares
against what actually runs.
"""

from __future__ import annotations

import json
from typing import Any, Final

import msgspec

from ._config_build import Served, api_keys_of, authenticator_of, configure_metrics, key_of
from ._config_check import check
from ._config_hub import limits_of
from ._config_model import PATH_KEYS, SECRET_KEYS, Config
from .auth import normalise_origin

__all__ = ["RELOADABLE", "Reloader"]

RELOADABLE: Final = (
    "api.keys",
    "api.keys_file",
    "admin.key",
    "admin.key_file",
    "metrics.key",
    "metrics.key_file",
    "metrics.public",
    "metrics.enabled",
    "limits.",
    "auth.allowed_origins",
    "auth.require_origin",
    "auth.secret",
    "auth.secret_file",
    "auth.public_key_file",
    "auth.jwks_file",
    "auth.jwks_url",
    "auth.jwks_cache",
    "auth.algorithms",
    "auth.audience",
    "auth.issuer",
    "auth.leeway",
    "auth.require_exp",
    "auth.typ",
    "auth.query",
    "auth.cookie",
)
"""Keys a reload applies to the running server (prefixes end with a dot)."""


def _flatten(config: Config) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for table, section in msgspec.to_builtins(config).items():
        if isinstance(section, dict):
            for name, value in section.items():
                flat[f"{table}.{name}"] = value
        else:
            flat[table] = section
    return flat


def _reloadable(key: str) -> bool:
    return any(key == r or (r.endswith(".") and key.startswith(r)) for r in RELOADABLE)


class Reloader:
    """Applies a new configuration to a running server: ``hubbub serve``'s SIGHUP.

    What can change safely is applied to the running objects (keys, limits,
    allowed origins, JWT verification); every other change is reported as
    needing a restart and left as it is. A configuration that cannot be built
    changes nothing.

    Args:
        served: what :func:`build_app` built.
        config: the configuration it was built from.
    """

    def __init__(self, served: Served, config: Config) -> None:
        self.served = served
        self.config = config
        self._files = _file_contents(config)

    def apply(self, new: Config) -> tuple[list[str], list[str]]:
        """Apply ``new``; returns (one line per applied change, keys that need a restart).

        Raises:
            ConfigError: ``new`` cannot be built; nothing was changed.
        """
        old_flat, new_flat = _flatten(self.config), _flatten(new)
        changed = [k for k in new_flat if old_flat.get(k) != new_flat.get(k)]
        # A key file rewritten in place (rotation) is a change even under the same name.
        files = _file_contents(new)
        changed += [k for k, v in files.items() if k not in changed and self._files.get(k) != v]
        restart = [k for k in changed if not _reloadable(k)]
        live = [k for k in changed if _reloadable(k)]
        served = self.served
        app = served.hub_app
        # Build and check everything first: nothing is applied unless all of it can be.
        check(new)
        limits = limits_of(new) if any(k.startswith("limits.") for k in live) else None
        auth_changed = any(k.startswith("auth.") and "origin" not in k for k in live)
        authenticator = authenticator_of(new) if auth_changed else None
        api_keys = api_keys_of(new) if any(k.startswith("api.") for k in live) else None
        admin_key = key_of(new, "admin") if any(k.startswith("admin.") for k in live) else None
        metrics_key = key_of(new, "metrics")
        for key in list(live):
            needs = None
            if key.startswith(("api.", "admin.", "metrics.", "limits.")) and app is None:
                needs = key
            elif key.startswith("admin.") and (
                app is None or app.admin is None or admin_key is None
            ):
                needs = key  # turning the admin page on or off starts or stops its sampler
            elif key.startswith("auth.") and "origin" not in key:
                if served.authenticator is None or authenticator is None:
                    needs = key  # JWT on or off changes who is admitted: a restart
            elif "origin" in key and served.middleware is None:
                needs = key
            if needs is not None:
                live.remove(key)
                restart.append(key)
        applied: list[str] = []
        if app is not None and any(k.startswith("api.") for k in live):
            assert api_keys is not None
            app.api.set_keys(api_keys)
            applied.append(f"api keys replaced ({len(api_keys)} key(s))")
        if app is not None and app.admin is not None and any(k.startswith("admin.") for k in live):
            assert admin_key is not None
            app.admin.set_key(admin_key)
            applied.append("admin key replaced")
        if app is not None and any(k.startswith("metrics.") for k in live):
            configure_metrics(app, new, metrics_key)
            if metrics_key is None:
                app.set_metrics_key(None)
            applied.append(
                "metrics "
                + ("off" if not app.metrics else "key replaced" if app.metrics_key else "open")
            )
        if limits is not None and app is not None:
            app.set_limits(limits)
            applied.extend(
                f"{key}: {_brief(old_flat.get(key))} -> {_brief(new_flat.get(key))}"
                for key in live
                if key.startswith("limits.")
            )
        if authenticator is not None and served.authenticator is not None:
            served.authenticator.reconfigure(authenticator)
            for key in live:
                if key.startswith("auth.") and "origin" not in key:
                    shown = (
                        "(secret)"
                        if key in SECRET_KEYS or key.endswith("_file")
                        else (f"{_brief(old_flat.get(key))} -> {_brief(new_flat.get(key))}")
                    )
                    applied.append(f"{key} applied {shown}")
        if served.middleware is not None and any("origin" in k for k in live):
            served.middleware.set_allowed_origins(
                new.auth.allowed_origins or None, require_origin=new.auth.require_origin
            )
            if served.authenticator is not None:
                served.authenticator.allowed_origins = frozenset(
                    normalise_origin(o) for o in new.auth.allowed_origins
                )
            applied.append(f"auth.allowed_origins: {', '.join(new.auth.allowed_origins) or 'none'}")
        # What needs a restart stays as it runs: remember the running values for it.
        kept = msgspec.to_builtins(new)
        running = msgspec.to_builtins(self.config)
        for key in restart:
            table, _, name = key.partition(".")
            if name:
                kept[table][name] = running[table][name]
            else:
                kept[table] = running[table]
        self.config = msgspec.convert(kept, Config)
        self._files = files
        return applied, sorted(restart)


def _file_contents(config: Config) -> dict[str, bytes | None]:
    """The contents of the key files ``config`` names (``None``: unreadable), by key."""
    contents: dict[str, bytes | None] = {}
    for key in PATH_KEYS:
        table, name = key.split(".")
        value = getattr(getattr(config, table), name)
        if not value or table == "server":
            continue
        paths = [value] if isinstance(value, str) else value
        data = b""
        for path in paths:
            try:
                with open(path, "rb") as file:
                    data += file.read() + b"\0"
            except OSError:
                contents[key] = None
                break
        else:
            contents[key] = data
    return contents


def _brief(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."
