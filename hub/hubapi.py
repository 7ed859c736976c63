"""Paths of JupyterHub's REST API built from names.

A user or server name is one path segment, whatever it holds: JupyterHub accepts `#`, `?`
and `/` in names (a deployment's username_pattern may not forbid them), and a name put into
a URL unquoted becomes a fragment (`admin#x` → `users/admin`), a query (`alice?x` →
`users/alice`) or other segments (`alice/../admin`, which HTTP clients resolve). Every URL
podbay builds from a name comes from here.
"""

from __future__ import annotations

from urllib.parse import quote


def segment(name: object) -> str:
    """One path segment: every character that could end it or change its meaning is quoted."""
    return quote(str(name), safe="")


def user_path(user: str, *rest: object) -> str:
    """`users/<user>[/<rest>…]`, each part one segment: user_path("a#b", "servers", "x")."""
    return "/".join(["users", segment(user), *(segment(part) for part in rest)])
