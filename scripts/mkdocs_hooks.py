"""MkDocs hooks for the documentation site (``mkdocs.yml``: ``hooks:``).

The site's home page is the README itself, not a copy that would go stale:
``docs/index.md`` holds the marker line below, replaced at build time by
``README.md``. The README's links are written for a reader on the repository
(``docs/auth.md``); on the site its pages sit beside the home page
(``auth.md``), so that prefix is dropped. A README link to a file the site does
not contain is logged as a warning, which fails ``mkdocs build --strict``.

The guides link the files they walk through (``../examples/deploy/nginx.conf``
from a page of ``docs/``). The site ships ``examples/`` as plain files, served
as they are (a README there is not rendered as a page), so those links are
rewritten to the copies and mkdocs checks that each target exists; a link to a
folder means its README.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

MARKER = "<!-- the README is included here by scripts/mkdocs_hooks.py -->"
ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
LINK = re.compile(r"\]\((?!https?:|mailto:|#)([^)\s]+)\)")
SHIPPED = ("examples",)
"""Folders of the repository the site serves as plain files."""
SKIPPED = {"__pycache__", "node_modules", ".venv"}

log = logging.getLogger("mkdocs.hooks.readme")


class _PlainFile(File):
    """A file of the repository copied as it is: a README.md here is not a page."""

    def is_documentation_page(self) -> bool:
        return False


def on_files(files: Files, config: Any, **_: Any) -> Files:
    """Add every file under the shipped folders, at the same path on the site."""
    for folder in SHIPPED:
        for path in sorted((ROOT / folder).rglob("*")):
            if path.is_file() and not SKIPPED.intersection(path.relative_to(ROOT).parts):
                uri = path.relative_to(ROOT).as_posix()
                files.append(
                    _PlainFile(
                        uri,
                        str(ROOT),
                        config["site_dir"],
                        config["use_directory_urls"],
                        dest_uri=uri,
                    )
                )
    return files


def _shipped(target: str) -> str | None:
    """``target`` (relative to the repository) as a link on the site, if the site has it."""
    path, hash_, anchor = target.partition("#")
    if not path.startswith(tuple(f"{folder}/" for folder in SHIPPED)):
        return None
    if path.endswith("/"):
        path += "README.md"
    return path + hash_ + anchor


def _site_link(match: re.Match[str]) -> str:
    target = match.group(1)
    if target.startswith("docs/"):
        return f"]({target.removeprefix('docs/')})"
    shipped = _shipped(target)
    if shipped is not None:
        return f"]({shipped})"
    log.warning("README.md links to %s, which the documentation site does not contain", target)
    return match.group(0)


def _page_link(match: re.Match[str]) -> str:
    """A link of a page of ``docs/`` to ``../examples/...`` points at the site's copy."""
    target = match.group(1)
    if target.startswith("../"):
        shipped = _shipped(target.removeprefix("../"))
        if shipped is not None:
            return f"]({shipped})"
    return match.group(0)


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    """Put the README, with its links made relative to the site, where the marker is."""
    if MARKER not in markdown:
        return LINK.sub(_page_link, markdown)
    readme = LINK.sub(_site_link, README.read_text(encoding="utf-8"))
    return markdown.replace(MARKER, readme)
