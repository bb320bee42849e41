"""MkDocs hooks for the documentation site (``mkdocs.yml``: ``hooks:``).

The site's home page is the README itself, not a copy that would go stale:
``docs/index.md`` holds the marker line below, replaced at build time by
``README.md``. The README's links are written for a reader on the repository
(``docs/auth.md``); on the site its pages sit beside the home page
(``auth.md``), so that prefix is dropped.

Pages (and the README) also link to files of the repository that are not
pages (``../examples/deploy/nginx.conf``): right for a reader of the
repository, but the site has no copy of them and no repository address to send
the reader to, so on the site such a link becomes its text alone. A link to a
file that does not exist in the repository is logged as a warning, which fails
``mkdocs build --strict``, as does any other broken link.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

MARKER = "<!-- the README is included here by scripts/mkdocs_hooks.py -->"
ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = ROOT / "README.md"
LINK = re.compile(r"\[([^\]\n]*)\]\((?!https?:|mailto:|#)([^)\s#]+)(#[^)\s]*)?\)")

log = logging.getLogger("mkdocs.hooks.readme")


def _outside_docs(text: str, target: str, base: Path, source: str) -> str:
    """A link to a repository file that is not a page: its text, or a warning if it is missing."""
    path = (base / target).resolve()
    if path.exists() and path.is_relative_to(ROOT):
        return text
    log.warning("%s links to %s, which is not in the repository", source, target)
    return f"[{text}]({target})"


def _readme_link(match: re.Match[str]) -> str:
    text, target, anchor = match.group(1), match.group(2), match.group(3) or ""
    if target.startswith("docs/"):
        return f"[{text}]({target.removeprefix('docs/')}{anchor})"
    return _outside_docs(text, target, ROOT, "README.md")


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    """The README where the marker is; links out of ``docs/`` turned into their text."""
    if MARKER in markdown:
        readme = LINK.sub(_readme_link, README.read_text(encoding="utf-8"))
        markdown = markdown.replace(MARKER, readme)
    base = Path(page.file.abs_src_path).parent

    def page_link(match: re.Match[str]) -> str:
        target = match.group(2)
        if (base / target).resolve().is_relative_to(DOCS):
            return match.group(0)
        return _outside_docs(match.group(1), target, base, page.file.src_path)

    return LINK.sub(page_link, markdown)
