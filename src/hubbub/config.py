"""The configuration file of ``hubbub serve``: one TOML file for every option of the server.

A team whose backend is not Python runs hubbub as a standalone server and
configures it without writing code: ``hubbub serve --config hubbub.toml``. The
msgspec Structs (``_config_model``) are the single source of truth for every key: they decode
and validate the file (unknown keys, wrong types and out-of-range values are
refused by msgspec itself), give ``hubbub config schema`` its JSON Schema, and
the command-line flags and ``HUBBUB_*`` variables of ``hubbub serve`` are mapped
onto them (:data:`OPTIONS`), with the precedence flag > environment > file >
default. Python users build :class:`~hubbub.Hub` and friends directly; this
module is the layer that builds them from a file (``docs/config.md``).

Every mistake is a :class:`ConfigError`: one line naming the file, the line, the
key's dotted path (``namespaces[1].history_size``) and a hint. tomllib keeps no
positions, so :func:`find_line` finds a key's line from the text itself.

Some options can change while the server runs (keys, limits, allowed origins,
JWT verification): :class:`Reloader` applies a new file to the running objects
(``hubbub serve`` does on SIGHUP) and reports what needs a restart.

This module is the public face; the work is done by private modules, each one
step, importing only those listed after it:

- ``_config_reload``: :class:`Reloader`, what a reload may change;
- ``_config_build``: reading key files and certificates, building the app (:func:`build_app`);
- ``_config_load``: TOML to :class:`Config`, errors by file and line, :data:`OPTIONS`;
- ``_config_show``: ``hubbub config show``/``schema``/``example``;
- ``_config_check``: the rules across keys (:func:`check`), without I/O;
- ``_config_hub``: the Limits, Namespaces and broker of the hub's tables;
- ``_config_model``: the Structs and :class:`ConfigError`;
- ``_config_locate``: :func:`find_line`.
"""

from __future__ import annotations

from ._config_build import Served as Served
from ._config_build import api_keys_of as api_keys_of
from ._config_build import authenticator_of as authenticator_of
from ._config_build import build_app as build_app
from ._config_build import build_demo_hub as build_demo_hub
from ._config_build import build_parts as build_parts
from ._config_build import check_tls as check_tls
from ._config_build import hmac_secret_of as hmac_secret_of
from ._config_build import is_loopback as is_loopback
from ._config_build import key_of as key_of
from ._config_check import check as check
from ._config_hub import broker_of as broker_of
from ._config_hub import limits_of as limits_of
from ._config_hub import namespace_options as namespace_options
from ._config_load import OPTIONS as OPTIONS
from ._config_load import Option as Option
from ._config_load import convert_option as convert_option
from ._config_load import environment_overrides as environment_overrides
from ._config_load import load as load
from ._config_load import loads as loads
from ._config_load import with_overrides as with_overrides
from ._config_locate import find_line as find_line
from ._config_model import HUB_SECTIONS as HUB_SECTIONS
from ._config_model import PATH_KEYS as PATH_KEYS
from ._config_model import SECRET_KEYS as SECRET_KEYS
from ._config_model import AccessLevel as AccessLevel
from ._config_model import AdminConfig as AdminConfig
from ._config_model import ApiConfig as ApiConfig
from ._config_model import AuthConfig as AuthConfig
from ._config_model import BrokerConfig as BrokerConfig
from ._config_model import Claim as Claim
from ._config_model import CommandLimit as CommandLimit
from ._config_model import CommandType as CommandType
from ._config_model import Config as Config
from ._config_model import ConfigError as ConfigError
from ._config_model import HubConfig as HubConfig
from ._config_model import LimitsConfig as LimitsConfig
from ._config_model import LogLevel as LogLevel
from ._config_model import MetricsConfig as MetricsConfig
from ._config_model import NamespaceConfig as NamespaceConfig
from ._config_model import NonNegativeFloat as NonNegativeFloat
from ._config_model import NonNegativeInt as NonNegativeInt
from ._config_model import PersonalConfig as PersonalConfig
from ._config_model import PositiveFloat as PositiveFloat
from ._config_model import PositiveInt as PositiveInt
from ._config_model import Rule as Rule
from ._config_model import ServerConfig as ServerConfig
from ._config_model import WebSocketCompression as WebSocketCompression
from ._config_model import WebSocketImplementation as WebSocketImplementation
from ._config_reload import RELOADABLE as RELOADABLE
from ._config_reload import Reloader as Reloader
from ._config_show import dump as dump
from ._config_show import effective as effective
from ._config_show import example as example
from ._config_show import schema as schema

__all__ = [
    "OPTIONS",
    "AdminConfig",
    "ApiConfig",
    "AuthConfig",
    "BrokerConfig",
    "Claim",
    "CommandLimit",
    "Config",
    "ConfigError",
    "HubConfig",
    "LimitsConfig",
    "MetricsConfig",
    "NamespaceConfig",
    "Option",
    "PersonalConfig",
    "Reloader",
    "Served",
    "ServerConfig",
    "api_keys_of",
    "build_app",
    "build_demo_hub",
    "dump",
    "example",
    "find_line",
    "hmac_secret_of",
    "is_loopback",
    "load",
    "loads",
    "schema",
    "with_overrides",
]
