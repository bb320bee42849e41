"""A Griffe extension for the API reference: hubbub's docstrings use Sphinx roles.

The docstrings write ``:class:`Identity``` or ``:meth:`stop```, which plain
Markdown would show as they are. This turns each role into its name in code,
linked to the object's entry in the reference where it has one: the name is
resolved from the object the docstring belongs to (a method's ``stop`` is its
class's), and the link is *optional* (autorefs' ``optional``), because many
roles name private helpers (``hubbub._connection.Connection``) that the
reference deliberately leaves out. Used by ``mkdocs.yml``
(``mkdocstrings.handlers.python.options.extensions``).
"""

from __future__ import annotations

import html
import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:class|meth|func|attr|exc|mod|data|obj|const):`(~?)([^`<>]+)`")


def _identifier(obj: griffe.Object, name: str) -> str:
    """The full path ``name`` means in ``obj``'s docstring, or ``name`` when unknown."""
    name = name.removesuffix("()")
    head, _, rest = name.partition(".")
    scope: griffe.Object | None = obj
    while scope is not None:
        try:
            found = scope.resolve(head)
        except griffe.NameResolutionError:
            scope = scope.parent
            continue
        return f"{found}.{rest}" if rest else found
    return name


class SphinxRoles(griffe.Extension):
    """Rewrites the Sphinx roles of every docstring into optional cross-references."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        self._walk(pkg, set())

    def _walk(self, obj: griffe.Object, seen: set[str]) -> None:
        if obj.path in seen:
            return
        seen.add(obj.path)
        if obj.docstring is not None:
            obj.docstring.value = ROLE.sub(lambda m: self._link(obj, m), obj.docstring.value)
        for member in obj.members.values():
            if not member.is_alias:
                self._walk(member, seen)  # type: ignore[arg-type]

    @staticmethod
    def _link(obj: griffe.Object, match: re.Match[str]) -> str:
        short, name = match.group(1), match.group(2)
        text = name.rsplit(".", 1)[-1] if short else name
        identifier = _identifier(obj, name)
        return (
            f'<autoref identifier="{html.escape(identifier)}" optional>'
            f"<code>{html.escape(text)}</code></autoref>"
        )
