"""The hub's REST API as the service uses it: who a token belongs to and what it may do,
through JupyterHub's own HubAuth (its cache, its scope checks), and reading users' servers
and making narrowly scoped tokens with the service's own token, through
podbay.tui.hubapi.HubAPI, the one client of the hub's API (every name quoted)."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any

import httpx
from jupyterhub.services.auth import HubAuth, check_scopes
from tornado.web import HTTPError as _HubAuthError  # how HubAuth fails (hub down, 5xx)

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
        reaches only itself. Filters resolved as JupyterHub does (`access:servers` covers
        `access:servers!user=alice`; `…!server=alice/x` does not)."""
        return bool(check_scopes({f"access:servers!user={self.name}"}, self.scopes))


# The scope that lets a token use this service. JupyterHub resolves any token of a user,
# whatever it was made for (a notebook extension's token, a narrowly scoped one): only
# those granted access to podbay may act here. The hub config grants it to every user's
# own tokens and to workspaces' tokens. (The hub also tells a managed service its access
# scopes in $JUPYTERHUB_OAUTH_ACCESS_SCOPES, which HubAuth reads: that wins when set.)
ACCESS_SCOPE = "access:services!service=podbay"


class HubClient:
    """The hub's REST API, as this service sees it: resolving callers' tokens and reading
    users' servers with the service's own token. A caller (who, admin, groups, scopes) is
    kept `ttl` seconds: HubAuth keeps the token's model, this the user's groups beside it,
    so a request within the ttl costs the hub nothing."""

    def __init__(self, api_url: str, token: str, ttl: float = 30.0, transport=None):
        self.api = HubAPI(api_url, token=token, transport=transport)
        # HubAuth takes 0 as "forever": never below a second.
        self.auth = HubAuth(api_url=api_url, api_token=token, cache_max_age=max(1, int(ttl)))
        if not self.auth.access_scopes:
            self.auth.access_scopes = {ACCESS_SCOPE}
        self.ttl = ttl
        self._callers: dict[str, tuple[float, Caller | None]] = {}

    async def resolve(self, token: str) -> Caller | None:
        key = hashlib.sha256(token.encode()).hexdigest()
        hit = self._callers.get(key)
        if hit and hit[0] > time.monotonic():
            return hit[1]
        try:
            model = await self.auth.user_for_token(token, sync=False)
            if model is None or model.get("kind", "user") != "user":
                caller = None
            else:
                # A workspace's own token may not read the user's groups: ask as the service.
                full = await self.user(model["name"])
                caller = Caller(model["name"], bool(full.get("admin")), tuple(full.get("groups") or ()),
                                may_access=bool(self.auth.check_scopes(self.auth.access_scopes, model)),
                                scopes=frozenset(model.get("scopes") or ()))
        except ApiError:
            raise
        except (httpx.HTTPError, _HubAuthError, OSError) as e:
            raise ApiError(503, "hub_unavailable",
                           f"JupyterHub's API is not reachable ({type(e).__name__}); try again shortly") from None
        if len(self._callers) > 10_000:  # tokens nobody sends again do not pile up
            self._callers.clear()
        self._callers[key] = (time.monotonic() + self.ttl, caller)
        return caller

    def forget(self, token: str) -> None:
        """Forget a token (it was revoked): ours by its hash; HubAuth's cache is keyed its own
        way, and revoking is rare, so all of that goes."""
        self._callers.pop(hashlib.sha256(token.encode()).hexdigest(), None)
        self.auth.cache.clear()

    async def user(self, name: str) -> dict[str, Any]:
        """A user's model with their servers; ApiError 503 where the hub cannot answer."""
        try:
            r = await self.api.user(name)
        except httpx.HTTPError:
            raise ApiError(503, "hub_unavailable", "JupyterHub's API is not reachable; try again shortly") from None
        if r.status_code >= 400:
            raise ApiError(503, "hub_unavailable", f"JupyterHub's API answered {r.status_code}; try again shortly")
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
