"""``python -m hubbub``: the same as the ``hubbub`` command."""

from __future__ import annotations

from .cli import main

main()
