"""MkDocs hooks for the documentation site (``mkdocs.yml``: ``hooks:``).

The site's home page is the README itself, not a copy that would go stale:
``docs/index.md`` holds the marker line below, replaced at build time by
``README.md``. The README's links are written for a reader on the repository
(``docs/auth.md``); on the site its pages sit beside the home page
(``auth.md``), so that prefix is dropped. A README link to a file the site does
not contain is logged as a warning, which fails ``mkdocs build --strict``.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

MARKER = "<!-- the README is included here by scripts/mkdocs_hooks.py -->"
README = Path(__file__).resolve().parent.parent / "README.md"
LINK = re.compile(r"\]\((?!https?:|mailto:|#)([^)\s]+)\)")

log = logging.getLogger("mkdocs.hooks.readme")


def _site_link(match: re.Match[str]) -> str:
    target = match.group(1)
    if target.startswith("docs/"):
        return f"]({target.removeprefix('docs/')})"
    log.warning("README.md links to %s, which the documentation site does not contain", target)
    return match.group(0)


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    """Put the README, with its links made relative to the site, where the marker is."""
    if MARKER not in markdown:
        return markdown
    readme = LINK.sub(_site_link, README.read_text(encoding="utf-8"))
    return markdown.replace(MARKER, readme)
