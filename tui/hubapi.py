"""JupyterHub's REST API, for everyone in podbay who calls it: the client (CLI, TUI), and on
the portal the REST service, its token checks, the idle policy and `podbay login`'s pairing.
One place knows the paths, the quoting of names and the differences between JupyterHub
releases; each caller keeps its own words for failures (`send`).

A user or server name is one path segment, whatever it holds: JupyterHub accepts `#`, `?`
and `/` in names (a deployment's username_pattern may not forbid them), and a name put into
a URL unquoted becomes a fragment (`admin#x` → `users/admin`), a query (`alice?x` →
`users/alice`) or other segments (`alice/../admin`, which HTTP clients resolve). Every URL
podbay builds from a name comes from here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

import httpx


def segment(name: object) -> str:
    """One path segment: every character that could end it or change its meaning is quoted.
    A name that is all dots is quoted too: `servers/..` would be resolved away by the HTTP
    client (DELETE …/users/alice/servers/.. is DELETE …/users/alice), `%2E%2E` is sent as it is."""
    text = str(name)
    if text and set(text) == {"."}:
        return "%2E" * len(text)
    return quote(text, safe="")


def user_path(user: str, *rest: object) -> str:
    """`users/<user>[/<rest>…]`, each part one segment: user_path("a#b", "servers", "x")."""
    return "/".join(["users", segment(user), *(segment(part) for part in rest)])


Send = Callable[..., Awaitable[httpx.Response]]

# How long an idle connection is kept for the next request: under the 5 s after which
# configurable-http-proxy (Node's keepAliveTimeout), in front of every portal, closes it.
# httpx's own 5 s met the proxy's at the same moment, and a request sent on a connection as
# the proxy closed it failed ("Server disconnected", a reset): the TUI refreshes every 5 s.
KEEPALIVE = httpx.Limits(max_connections=100, max_keepalive_connections=20, keepalive_expiry=2.0)


class HubAPI:
    """`…/hub/api/` with one token (the service's, or the person's). Every method answers the
    hub's response as it is; `send` (default: the client's own request) lets a caller turn
    network failures into its own errors."""

    def __init__(self, api_url: str, *, token: str | None = None, http: httpx.AsyncClient | None = None,
                 send: Send | None = None, timeout: float = 10, transport: httpx.AsyncBaseTransport | None = None):
        self.base = api_url.rstrip("/") + "/"
        self.http = http or httpx.AsyncClient(timeout=timeout, transport=transport, limits=KEEPALIVE,
                                              headers={"Authorization": f"token {token}"} if token else None)
        self._send = send or self.http.request
        self._major: int | None = None

    def url(self, path: str = "") -> str:
        return self.base + path

    async def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        return await self._send(method, self.url(path), **kw)

    async def user(self, name: str | None = None, *, stopped: bool = True, **kw: Any) -> httpx.Response:
        """A user's model with their servers (stopped named ones too); None: the token's own
        user (`GET user`, which also says the token's scopes)."""
        params = {"include_stopped_servers": "1"} if stopped else None
        if name is None:
            return await self.request("GET", "user", params=params, **kw)
        return await self.request("GET", user_path(name), params=params, **kw)

    async def major(self) -> int:
        """JupyterHub's major version (cached): 6 wraps a start's options, 5.x does not."""
        if self._major is None:
            r = await self.request("GET", "")
            if r.status_code != 200:
                return 6  # asked again next time; 6.x accepts the wrapped body (and so do 5.3+'s successors)
            self._major = int(str(r.json().get("version", "6")).split(".")[0])
        return self._major

    def server_path(self, user: str, server: str) -> str:
        return user_path(user, "servers", server)

    async def start_server(self, user: str, server: str, options: dict, **kw: Any) -> httpx.Response:
        body = {"user_options": options} if await self.major() >= 6 else options
        return await self.request("POST", self.server_path(user, server), json=body, **kw)

    async def stop_server(self, user: str, server: str, *, remove: bool = False, **kw: Any) -> httpx.Response:
        return await self.request("DELETE", self.server_path(user, server), json={"remove": True} if remove else None,
                                  **kw)

    async def new_token(self, user: str, note: str, seconds: int, scopes: list[str]) -> httpx.Response:
        """A token of `user`'s with only `scopes` (the caller's role needs the `tokens` scope)."""
        return await self.request("POST", user_path(user, "tokens"),
                                  json={"note": note[:200], "expires_in": seconds, "scopes": scopes})

    async def delete_token(self, user: str, token_id: str) -> httpx.Response:
        return await self.request("DELETE", user_path(user, "tokens", token_id))

    async def aclose(self) -> None:
        await self.http.aclose()
