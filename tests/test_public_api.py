"""The public API: ``hubbub.__all__`` is sorted, complete and true; redis stays optional."""

from __future__ import annotations

import subprocess
import sys
from types import ModuleType

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
