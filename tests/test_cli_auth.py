"""``hubbub serve``'s authentication flags, without starting a server."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from hubbub import AuthMiddleware, Hub, HubApp, JWTAuthenticator
from hubbub.cli import _build_app, _parser

from .apps.auth_app import ORIGIN, SECRET


def _app(monkeypatch: pytest.MonkeyPatch, *argv: str, **env: str) -> object:
    for name in ("JWT_SECRET", "JWT_PUBLIC_KEY", "JWT_AUDIENCE", "JWT_ISSUER", "ALLOWED_ORIGINS"):
        monkeypatch.delenv(f"HUBBUB_{name}", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(f"HUBBUB_{name}", value)
    return _build_app(_parser().parse_args(["serve", *argv]))


def test_no_auth_flags_leave_the_app_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without JWT or Origin flags the demo is served as before, unwrapped."""
    assert isinstance(_app(monkeypatch), HubApp)


def test_jwt_secret_wraps_the_demo_and_turns_anonymous_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``--jwt-secret`` puts AuthMiddleware in front; anonymous WebSockets are off."""
    app = _app(monkeypatch, "--jwt-secret", SECRET, "--allowed-origin", ORIGIN)
    assert isinstance(app, AuthMiddleware)
    assert app.anonymous is False
    assert isinstance(app.authenticator, JWTAuthenticator)
    assert app.allowed_origins == frozenset({"https://app.example.com:443"})
    hub = app.app.hub
    assert hub.authenticator is app.authenticator and hub.anonymous is False


def test_env_vars_configure_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every flag also comes from HUBBUB_* (origins comma-separated); --anonymous reopens."""
    app = _app(
        monkeypatch,
        "--anonymous",
        JWT_SECRET=SECRET,
        JWT_AUDIENCE="aud",
        JWT_ISSUER="https://iss",
        ALLOWED_ORIGINS=f"{ORIGIN},http://localhost:3000",
    )
    assert isinstance(app, AuthMiddleware) and app.anonymous is True
    assert isinstance(app.authenticator, JWTAuthenticator)
    assert app.authenticator.audience == ["aud"]
    assert app.authenticator.issuer == "https://iss"
    assert app.allowed_origins is not None and len(app.allowed_origins) == 2


def test_a_served_hub_gets_the_authenticator(monkeypatch: pytest.MonkeyPatch) -> None:
    """A served Hub without an authenticator gets the flags' one (for refresh)."""
    module = types.ModuleType("served_target")
    module.hub = Hub()  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "served_target", module)
    app = _app(monkeypatch, "served_target:hub", "--jwt-secret", SECRET)
    assert isinstance(app, AuthMiddleware) and isinstance(app.app, HubApp)
    assert module.hub.authenticator is app.authenticator  # type: ignore[attr-defined]
    only_origin = _app(monkeypatch, "served_target:hub", "--allowed-origin", ORIGIN)
    assert isinstance(only_origin, AuthMiddleware) and only_origin.authenticator is None
    assert only_origin.anonymous is True


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--jwt-secret", "short"], "32"),
        (["--jwt-audience", "a"], "need"),
        (["--jwt-secret", SECRET, "--jwt-public-key", "x.pem"], "not both"),
        (["--jwt-public-key", "/nonexistent.pem"], "--jwt-public-key .*No such file"),
        (["--allowed-origin", "example.com"], "allowed-origin"),
    ],
)
def test_bad_flags_exit_with_a_message(
    monkeypatch: pytest.MonkeyPatch, argv: list[str], message: str
) -> None:
    """Unusable JWT or Origin flags stop ``hubbub serve`` with a clear message."""
    with pytest.raises(SystemExit, match=message):
        _app(monkeypatch, *argv)


def test_public_key_file_is_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``--jwt-public-key FILE`` builds a public-key authenticator from the PEM file."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    pem = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    (tmp_path / "k.pem").write_bytes(pem)
    app = _app(monkeypatch, "--jwt-public-key", str(tmp_path / "k.pem"))
    assert isinstance(app, AuthMiddleware)
    assert isinstance(app.authenticator, JWTAuthenticator)
    assert app.authenticator.algorithms == ["ES256"]
