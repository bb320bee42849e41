"""Debian's nginx and Caddy in front of ``hubbub serve``, configured from the shipped recipes.

The configurations are rendered from ``examples/deploy/nginx.conf`` and
``examples/deploy/Caddyfile``: only what a test must change (listen address
and port, certificate paths, the upstream's port, log paths) is replaced, and
each replacement fails loudly when the recipe no longer contains what it
replaces, so the tests keep testing the recipe, not a copy of it. The hubbub
command line comes the same way from ``examples/deploy/hubbub.service``, and the
hub it serves from ``examples/deploy/hubbub.toml`` (its port, and what a test
names, replaced).

Each proxy runs as this test's own process (its own configuration, pid file and
logs in the test's directory, never the package's system service) on free
loopback ports, and is stopped by its PID. Without the binary the tests are
skipped, except when ``CI=true``: then a missing binary is a failure.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import shlex
import shutil
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from .servers import ROOT, free_port

IN_CI = os.environ.get("CI") == "true"
DEPLOY = ROOT / "examples" / "deploy"
SERVER_NAME = "hub.example.com"
RECIPE_UPSTREAM = "127.0.0.1:8000"


def binary(name: str, package: str) -> str:
    """The path of ``name``; skips the test (fails it in CI) when it is not installed."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if found is None:
        message = f"{name} is not installed (apt-get install {package})"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return found


def replace_once(text: str, old: str, new: str, recipe: str) -> str:
    """``text`` with ``old`` replaced; the recipe changed under the test when it is missing."""
    if old not in text:
        raise AssertionError(f"{recipe} no longer contains {old!r}: update the test's rendering")
    return text.replace(old, new, 1)


# -- TLS -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Certificates:
    """A throwaway CA and a server certificate it signed (for hub.example.com and 127.0.0.1)."""

    ca: Path
    cert: Path
    key: Path

    def client_context(self) -> ssl.SSLContext:
        """A client TLS context that trusts only this CA."""
        return ssl.create_default_context(cafile=str(self.ca))


def make_certificates(directory: Path) -> Certificates:
    """Generate the CA and the server certificate into ``directory``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hubbub test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, SERVER_NAME)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName(SERVER_NAME),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = Certificates(directory / "ca.pem", directory / "cert.pem", directory / "key.pem")
    paths.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


# -- the proxies -----------------------------------------------------------------------------


@dataclass
class Proxy:
    """A running proxy process: HTTPS on ``port``, plain HTTP on ``http_port`` (nginx only)."""

    name: str
    process: subprocess.Popen[bytes]
    port: int
    http_port: int | None
    log_path: Path
    directory: Path

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"wss://127.0.0.1:{self.port}"

    def log(self) -> str:
        logs = [self.log_path, *sorted(self.directory.glob("*.log"))]
        return "\n".join(
            f"== {p.name}\n{p.read_text(errors='replace')}" for p in dict.fromkeys(logs)
        )

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the proxy by its PID (nginx: fast shutdown), SIGKILL if it overstays."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(5)


def render_nginx(upstream_port: int, port: int, http_port: int, certs: Certificates) -> str:
    """``examples/deploy/nginx.conf`` with the test's ports, certificate and log paths."""
    recipe = "examples/deploy/nginx.conf"
    text = (DEPLOY / "nginx.conf").read_text()
    text = replace_once(text, RECIPE_UPSTREAM, f"127.0.0.1:{upstream_port}", recipe)
    text = replace_once(text, "\n    listen 443 ", f"\n    listen 127.0.0.1:{port} ", recipe)
    text = replace_once(text, "\n    listen 80;", f"\n    listen 127.0.0.1:{http_port};", recipe)
    # IPv6 may be off in a container: keep the IPv4 listeners only.
    lines = [line for line in text.splitlines() if not line.strip().startswith("listen [::]")]
    text = "\n".join(lines) + "\n"
    text = replace_once(
        text, f"/etc/letsencrypt/live/{SERVER_NAME}/fullchain.pem", str(certs.cert), recipe
    )
    text = replace_once(
        text, f"/etc/letsencrypt/live/{SERVER_NAME}/privkey.pem", str(certs.key), recipe
    )
    return replace_once(text, "/var/log/nginx/", str(certs.cert.parent) + "/", recipe)


def nginx_main_config(directory: Path, server_conf: Path) -> str:
    """The top of an nginx configuration (what Debian's /etc/nginx/nginx.conf provides)."""
    temp = "\n".join(
        f"    {kind}_temp_path {directory / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    # As root, nginx's workers would switch to `nobody`, who cannot read the test's files.
    user = "user root;\n" if os.geteuid() == 0 else ""
    return (
        f"{user}worker_processes 1;\n"
        "daemon off;\n"
        f"pid {directory / 'nginx.pid'};\n"
        f"error_log {directory / 'error.log'} info;\n"
        "events { worker_connections 512; }\n"
        "http {\n"
        f"    access_log {directory / 'access.log'};\n"
        f"{temp}\n"
        f"    include {server_conf};\n"
        "}\n"
    )


@contextlib.contextmanager
def run_nginx(upstream_port: int, directory: Path, certs: Certificates) -> Iterator[Proxy]:
    """Debian's nginx with the recipe, in front of hubbub on ``upstream_port``."""
    nginx = binary("nginx", "nginx")
    directory.mkdir(parents=True, exist_ok=True)
    port, http_port = free_port(), free_port()
    server_conf = directory / "hubbub.conf"
    server_conf.write_text(render_nginx(upstream_port, port, http_port, certs))
    main = directory / "nginx.conf"
    main.write_text(nginx_main_config(directory, server_conf))
    argv = [nginx, "-c", str(main), "-p", str(directory), "-e", str(directory / "error.log")]
    checked = subprocess.run(
        [*argv, "-t"], capture_output=True, timeout=30, check=False, cwd=directory
    )
    assert checked.returncode == 0, checked.stderr.decode(errors="replace")
    yield from _run_proxy("nginx", argv, port, http_port, directory, certs, env=None)


def render_caddyfile(upstream_port: int, port: int, certs: Certificates, storage: Path) -> str:
    """``examples/deploy/Caddyfile`` with the test's port, certificate and storage.

    The recipe's automatic HTTPS (ACME) is replaced by the test's certificate,
    Caddy's admin endpoint and its port-80 redirects are turned off.
    """
    recipe = "examples/deploy/Caddyfile"
    text = (DEPLOY / "Caddyfile").read_text()
    text = replace_once(
        text, "reverse_proxy 127.0.0.1:8000", f"reverse_proxy 127.0.0.1:{upstream_port}", recipe
    )
    text = replace_once(
        text,
        "\n{\n",
        "\n{\n\tadmin off\n\tauto_https disable_redirects\n"
        f"\tstorage file_system {storage}\n\tgrace_period 2s\n"
        "\tservers {\n\t\tprotocols h1 h2\n\t}\n",
        recipe,
    )
    return replace_once(
        text,
        f"\n{SERVER_NAME} {{\n",
        f"\nhttps://127.0.0.1:{port} {{\n\tbind 127.0.0.1\n\ttls {certs.cert} {certs.key}\n",
        recipe,
    )


@contextlib.contextmanager
def run_caddy(upstream_port: int, directory: Path, certs: Certificates) -> Iterator[Proxy]:
    """Debian's Caddy with the recipe, in front of hubbub on ``upstream_port``."""
    caddy = binary("caddy", "caddy")
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = directory / "Caddyfile"
    config.write_text(render_caddyfile(upstream_port, port, certs, directory / "storage"))
    env = {
        **os.environ,
        "HOME": str(directory),
        "XDG_DATA_HOME": str(directory / "data"),
        "XDG_CONFIG_HOME": str(directory / "config"),
    }
    argv = [caddy, "run", "--adapter", "caddyfile", "--config", str(config)]
    yield from _run_proxy("caddy", argv, port, None, directory, certs, env=env)


def _run_proxy(
    name: str,
    argv: list[str],
    port: int,
    http_port: int | None,
    directory: Path,
    certs: Certificates,
    *,
    env: dict[str, str] | None,
) -> Iterator[Proxy]:
    log_path = directory / f"{name}-output.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, cwd=directory, env=env
        )
    proxy = Proxy(name, process, port, http_port, log_path, directory)
    try:
        _wait_proxy(proxy, certs.client_context())
        yield proxy
    finally:
        proxy.stop()


def _wait_proxy(proxy: Proxy, context: ssl.SSLContext, timeout: float = 20.0) -> None:
    """Until ``GET /health`` through the proxy answers 200 (the upstream is reached too)."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        if proxy.process.poll() is not None:
            raise RuntimeError(f"{proxy.name} exited early:\n{proxy.log()}")
        try:
            with urllib.request.urlopen(proxy.url + "/health", timeout=2, context=context) as r:
                if r.status == 200:
                    return
        except (OSError, urllib.error.URLError) as exc:
            last = exc
        time.sleep(0.1)
    raise RuntimeError(f"{proxy.name} not ready within {timeout} s ({last}):\n{proxy.log()}")


# -- the systemd unit ------------------------------------------------------------------------


def unit_settings(unit: Path | None = None) -> dict[str, list[str]]:
    """The ``[Service]`` settings of ``hubbub.service``: name -> every value given, in order."""
    settings: dict[str, list[str]] = {}
    section = ""
    for raw in (unit or DEPLOY / "hubbub.service").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
            continue
        if section == "[Service]":
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def environment_file(path: Path | None = None) -> dict[str, str]:
    """The variables ``hubbub.env`` sets (systemd's EnvironmentFile syntax: KEY=VALUE lines)."""
    variables: dict[str, str] = {}
    for raw in (path or DEPLOY / "hubbub.env").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        key, _, value = line.partition("=")
        variables[key.strip()] = value.strip()
    return variables


RECIPE_CONFIG = "/etc/hubbub/hubbub.toml"
"""Where the unit's ExecStart reads hubbub.toml."""


def unit_command(config: Path | str) -> list[str]:
    """The unit's ExecStart as arguments for ``python``: ``-m hubbub serve --config ...``.

    The executable (the venv's ``hubbub`` script) becomes ``-m hubbub`` for the
    interpreter running the tests; the recipe's configuration file is replaced by
    ``config``, and must be there to be replaced.
    """
    (exec_start,) = unit_settings()["ExecStart"]
    argv = shlex.split(exec_start)
    assert Path(argv[0]).name == "hubbub", argv
    assert argv[1] == "serve", argv
    assert RECIPE_CONFIG in argv, argv
    rest = [str(config) if a == RECIPE_CONFIG else a for a in argv[2:]]
    return ["-m", "hubbub", "serve", *rest]


def render_config(
    directory: Path,
    port: int,
    *,
    secret: str,
    api_key: str,
    replacements: Sequence[tuple[str, str]] = (),
) -> Path:
    """``examples/deploy/hubbub.toml`` in ``directory``, with ``jwt-secret`` and ``api-keys``.

    The test's port replaces 8000, then each ``(old, new)`` of ``replacements``
    applies once; each fails when the recipe no longer contains what it replaces.
    The key files hold the test's secret and API key, as the recipe's would.
    """
    recipe = "examples/deploy/hubbub.toml"
    text = (DEPLOY / "hubbub.toml").read_text()
    text = replace_once(text, "\nport = 8000\n", f"\nport = {port}\n", recipe)
    for old, new in replacements:
        text = replace_once(text, old, new, recipe)
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("jwt-secret", "api-keys"):
        assert f'"{name}"' in text, f"{recipe} no longer names {name}"
    (directory / "jwt-secret").write_text(secret + "\n")
    (directory / "api-keys").write_text(api_key + "\n")
    config = directory / "hubbub.toml"
    config.write_text(text)
    return config


def python_path(*extra: Path) -> str:
    """PYTHONPATH for a served process: ``extra`` first, then what this process was given."""
    parts = [str(p) for p in extra]
    if os.environ.get("PYTHONPATH"):
        parts.append(os.environ["PYTHONPATH"])
    return os.pathsep.join(parts)
