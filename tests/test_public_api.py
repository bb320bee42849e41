"""The public API: ``hubbub.__all__`` is sorted, complete and true; redis stays optional."""

from __future__ import annotations

import subprocess
import sys
from types import ModuleType

import pytest

import hubbub


def test_all_is_sorted() -> None:
    """``hubbub.__all__`` is sorted and has no duplicates."""
    assert hubbub.__all__ == sorted(set(hubbub.__all__))


def test_all_names_exist() -> None:
    """Every name in ``hubbub.__all__`` is an attribute of ``hubbub``."""
    missing = [name for name in hubbub.__all__ if not hasattr(hubbub, name)]
    assert missing == []


def test_every_public_name_is_in_all() -> None:
    """Every public name ``hubbub`` defines (other than its submodules) is in ``__all__``."""
    unlisted = []
    for name, value in vars(hubbub).items():
        if name.startswith("_") or isinstance(value, ModuleType):
            continue
        if type(value).__module__ == "__future__":  # `from __future__ import annotations`
            continue
        if name not in hubbub.__all__:
            unlisted.append(name)
    assert unlisted == []


def test_exported_objects_are_defined_by_hubbub() -> None:
    """Every exported class or function is defined inside the hubbub package."""
    for name in hubbub.__all__:
        value = getattr(hubbub, name)
        module = getattr(value, "__module__", None)
        if module is not None and not isinstance(value, str):
            assert module.split(".")[0] == "hubbub", name


def test_version_is_a_string() -> None:
    """``hubbub.__version__`` is a non-empty version string."""
    assert isinstance(hubbub.__version__, str)
    assert hubbub.__version__[0].isdigit()


def test_import_does_not_import_redis() -> None:
    """``import hubbub`` leaves redis unimported (the Redis broker is optional)."""
    code = (
        "import sys, hubbub\n"
        "loaded = sorted(m for m in sys.modules if m == 'redis' or m.startswith('redis.'))\n"
        "print(','.join(loaded))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == ""


def test_testing_all_is_sorted_and_true() -> None:
    """``hubbub.testing.__all__`` is sorted, and every name in it exists."""
    import hubbub.testing

    assert hubbub.testing.__all__ == sorted(set(hubbub.testing.__all__))
    assert [n for n in hubbub.testing.__all__ if not hasattr(hubbub.testing, n)] == []


def test_testing_does_not_import_pytest() -> None:
    """``import hubbub.testing`` works without pytest; only the contract module needs it."""
    code = (
        "import sys, hubbub.testing\n"
        "print('pytest' in sys.modules)\n"
        "import hubbub.testing.contract\n"
        "print('pytest' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.split() == ["False", "True"]


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("Publish", "PublishRequest"),
        ("Broadcast", "BroadcastRequest"),
        ("Notify", "NotifyRequest"),
        ("Disconnect", "DisconnectRequest"),
        ("HistoryResult", "HistoryPageResult"),
    ],
)
def test_renamed_api_structs_warn(old: str, new: str) -> None:
    """The 0.1 names of the HTTP API's structs still resolve, with a DeprecationWarning."""
    import hubbub.api

    with pytest.warns(DeprecationWarning, match=f"hubbub.api.{new}"):
        value = getattr(hubbub.api, old)
    assert value is getattr(hubbub.api, new)


def test_api_module_unknown_name_is_attribute_error() -> None:
    """A name ``hubbub.api`` never had is an AttributeError, not a warning."""
    import hubbub.api

    with pytest.raises(AttributeError):
        hubbub.api.NoSuchThing  # noqa: B018


def test_api_client_module_is_a_deprecated_alias() -> None:
    """``hubbub.api_client`` names resolve to ``hubbub.client.api``'s, with a warning."""
    import hubbub.api_client
    import hubbub.client
    import hubbub.client.api

    for name in ("HubbubAPI", "AsyncHubbubAPI", "HubbubAPIError", "BroadcastOutcome", "Stats"):
        with pytest.warns(DeprecationWarning, match="hubbub.client.api"):
            value = getattr(hubbub.api_client, name)
        assert value is getattr(hubbub.client.api, name)
    for name in ("HubbubAPI", "AsyncHubbubAPI", "HubbubAPIError"):
        assert getattr(hubbub.client, name) is getattr(hubbub.client.api, name)
    with pytest.raises(AttributeError):
        hubbub.api_client.NoSuchThing  # noqa: B018


def test_importing_the_api_client_alias_does_not_warn() -> None:
    """Only reading a name from ``hubbub.api_client`` warns, not importing the module."""
    code = (
        "import warnings\n"
        "warnings.simplefilter('error')\n"
        "import hubbub.api_client\n"
        "from hubbub.api_client import HubbubAPI\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert "DeprecationWarning: hubbub.api_client is deprecated" in result.stderr
    assert "line 4" in result.stderr
