"""The hub's REST API as the service uses it: resolving callers' tokens (cached for a short
while), reading users' servers and making narrowly scoped tokens with the service's own token.
Built on podbay.tui.hubapi.HubAPI, the one client of the hub's API (every name quoted)."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any

import httpx

from podbay.tui.hubapi import HubAPI
from .errors import ApiError

# --- who is calling ------------------------------------------------------------------


@dataclass(frozen=True)
class Caller:
    name: str
    admin: bool
    groups: tuple[str, ...]
    # False when the token is a user's but lacks ACCESS_SCOPE: refused with a 403 naming it.
    may_access: bool = True
    # The token's own scopes, as the hub resolved them.
    scopes: frozenset[str] = frozenset()

    def reaches_all_workspaces(self) -> bool:
        """Whether this token may reach every one of the person's workspaces: what making a
        token for one, or a key that opens them all, must not exceed. A workspace's own token
        reaches only itself."""
        return bool({"access:servers", f"access:servers!user={self.name}"} & self.scopes)


# The scope that lets a token use this service. JupyterHub resolves any token of a user,
# whatever it was made for (a notebook extension's token, a narrowly scoped one): only
# those granted access to podbay may act here. The hub config grants it to every user's
# own tokens and to workspaces' tokens.
ACCESS_SCOPE = "access:services!service=podbay"
_ACCESS_SCOPES = {"access:services", ACCESS_SCOPE}


class HubClient:
    """The hub's REST API, as this service sees it: resolving callers' tokens (cached for a
    short while) and reading users' servers with the service's own token."""

    def __init__(self, api_url: str, token: str, ttl: float = 30.0, transport=None):
        self.api = HubAPI(api_url, token=token, transport=transport)
        self.ttl = ttl
        self._cache: dict[str, tuple[float, Caller | None]] = {}

    async def resolve(self, token: str) -> Caller | None:
        key = hashlib.sha256(token.encode()).hexdigest()
        hit = self._cache.get(key)
        if hit and hit[0] > time.monotonic():
            return hit[1]
        try:
            r = await self.api.user(headers={"Authorization": f"token {token}"})
            if r.status_code in (401, 403):
                caller = None
            else:
                r.raise_for_status()
                model = r.json()
                if model.get("kind", "user") != "user":
                    caller = None
                else:
                    # A workspace's own token may not read the user's groups: ask as the service.
                    full = await self.user(model["name"])
                    scopes = frozenset(model.get("scopes") or ())
                    caller = Caller(model["name"], bool(full.get("admin")), tuple(full.get("groups") or ()),
                                    may_access=bool(_ACCESS_SCOPES & scopes), scopes=scopes)
        except httpx.HTTPError as e:
            raise ApiError(503, "hub_unavailable",
                           f"JupyterHub's API is not reachable ({type(e).__name__}); try again shortly") from None
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[key] = (time.monotonic() + self.ttl, caller)
        return caller

    def forget(self, token: str) -> None:
        """Drop a token from the cache (it was revoked)."""
        self._cache.pop(hashlib.sha256(token.encode()).hexdigest(), None)

    async def user(self, name: str) -> dict[str, Any]:
        r = await self.api.user(name)
        r.raise_for_status()
        return r.json()

    async def new_token(self, user: str, note: str, seconds: int, scopes: list[str]) -> dict[str, Any]:
        """A token of `user`'s with only `scopes` (the service role's `tokens` scope)."""
        try:
            r = await self.api.new_token(user, note, seconds, scopes)
        except httpx.HTTPError:
            raise ApiError(503, "hub_unavailable", "JupyterHub's API is not reachable; try again shortly") from None
        if r.status_code >= 400:
            raise ApiError(502, "hub_refused", f"the hub did not make the token ({r.status_code}): tell the platform team")
        return r.json()

    async def aclose(self) -> None:
        await self.api.aclose()
