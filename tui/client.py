"""One async client for everything the TUI and the commands do.

Long because: it is the one place where every call to the hub and to podbay's service is
made and its failures put into words, so that the TUI, the commands and `podbay ssh` say
the same things.

Workspaces are JupyterHub named servers, so they go through JupyterHub's REST API (both
the 5.x and the 6.x request body for starting one); everything else goes through
podbay's service. Failures become a few exception types that carry a sentence a person
can act on. One shared httpx client, timeouts set; tokens never appear in messages.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import ssl
from dataclasses import dataclass
from typing import Any, AsyncIterator
from urllib.parse import quote, urljoin
from urllib.request import getproxies

import httpx

from .hubapi import HubAPI, KEEPALIVE


class ClientError(Exception):
    """Something the user should read: `str(e)` says what happened and what to do."""


class HubUnavailable(ClientError):
    pass


class AuthError(ClientError):
    pass


class Forbidden(ClientError):
    pass


class NotFound(ClientError):
    pass


class Refused(ClientError):
    """The hub or the service refused the request (bad input, quota, capacity)."""

    def __init__(self, message: str, status: int = 400, code: str = "refused"):
        super().__init__(message)
        self.status, self.code = status, code


@dataclass(frozen=True)
class Workspace:
    name: str
    state: str  # ready, pending (starting/stopping), stopped
    image: str
    profile: str
    volumes: list[str]
    started: str | None
    last_activity: str | None
    url: str | None
    pending: str | None
    # Started without naming an image: `image` is then the catalog's default, which is what
    # such a workspace runs (and runs again at a restart, even if the default changed).
    image_default: bool = False

    @classmethod
    def from_model(cls, name: str, model: dict[str, Any]) -> "Workspace":
        opts = model.get("user_options") or {}
        if model.get("ready"):
            state = "ready"
        elif model.get("pending"):
            state = model["pending"]  # "spawn" or "stop"
            state = {"spawn": "starting", "stop": "stopping"}.get(state, state)
        else:
            state = "stopped"
        return cls(name=name, state=state, image=opts.get("image", ""), profile=opts.get("profile", "cpu"),
                   volumes=list(opts.get("volumes") or []), started=model.get("started"),
                   last_activity=model.get("last_activity"), url=model.get("url"),
                   pending=model.get("pending"))


def _message(r: httpx.Response) -> str:
    try:
        body = r.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return r.text.strip()[:300] or r.reason_phrase
    if isinstance(body, dict):
        return str(body.get("message") or body.get("detail") or body)
    return str(body)


class LoginFailed(ClientError):
    pass


async def start_pairing(url: str, host: str, transport: httpx.AsyncBaseTransport | None = None) -> dict | None:
    """Ask podbay's service for a login code (hub/service/pairing.py): its answer, or None where the
    portal has none (an older podbay: paste a token instead)."""
    async with httpx.AsyncClient(base_url=url.rstrip("/"), timeout=15, transport=transport) as http:
        try:
            r = await http.post("/services/podbay/api/v1/pairings", json={"host": host})
        except httpx.HTTPError as e:
            raise HubUnavailable(f"{url} does not answer ({type(e).__name__}): check the address") from None
    if r.status_code == 404:
        return None
    if r.status_code != 201:
        raise LoginFailed(f"the portal refused to start a login ({r.status_code}): {_message(r)}")
    return r.json()


async def wait_for_pairing(url: str, started: dict, clock=None, sleep=None,
                           transport: httpx.AsyncBaseTransport | None = None) -> dict:
    """Poll until the code is approved: the token's record ({token, user, expires_at, …});
    LoginFailed with the portal's words when it is refused, used or expired."""
    import asyncio
    import time

    clock, sleep = clock or time.monotonic, sleep or asyncio.sleep
    deadline = clock() + started["expires_in"]
    async with httpx.AsyncClient(base_url=url.rstrip("/"), timeout=15, transport=transport) as http:
        while clock() < deadline:
            await sleep(started.get("interval", 2))
            try:
                r = await http.post("/services/podbay/api/v1/pairings/token",
                                    json={"device_code": started["device_code"]})
            except httpx.HTTPError:
                continue  # the portal restarting: ask again until the code expires
            if r.status_code == 200:
                return r.json()
            try:
                error = r.json().get("error")
            except ValueError:
                error = None
            if error != "authorization_pending":
                raise LoginFailed(f"login failed: {_message(r)}")
    raise LoginFailed("login failed: the code expired before it was approved; log in again")


def _transports() -> dict:
    """httpx's transports, with https's made at its first request. httpx reads its CA bundle
    (certifi's, 20-40 ms) whenever a transport is made, and every `podbay` command makes one:
    a portal on plain http (embedded mode, 127.0.0.1) never needs it, an https one reads it
    at the first request, as before (benchmarks/tui_latency.py). Where the environment names a
    proxy (HTTP_PROXY, HTTPS_PROXY, ALL_PROXY), httpx's own transports: only they use it."""
    proxies = getproxies()
    if (any(proxies.get(scheme) for scheme in ("http", "https", "all"))
            and "*" not in {host.strip() for host in proxies.get("no", "").split(",")}):
        return {}
    # The plain transport never makes a TLS connection: every https:// URL goes to the other
    # one. Were it asked to, its context knows no CA and refuses the server: it fails closed.
    return {"transport": httpx.AsyncHTTPTransport(verify=ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), limits=KEEPALIVE),
            "mounts": {"https://": _TLSOnFirstUse()}}


class _TLSOnFirstUse(httpx.AsyncBaseTransport):
    def __init__(self) -> None:
        self._transport: httpx.AsyncHTTPTransport | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._transport is None:
            self._transport = httpx.AsyncHTTPTransport(limits=KEEPALIVE)
        return await self._transport.handle_async_request(request)

    async def aclose(self) -> None:
        if self._transport is not None:
            await self._transport.aclose()


class PodbayClient:
    def __init__(self, url: str, token: str, user: str | None = None, *, timeout: float = 15.0,
                 transport: httpx.AsyncBaseTransport | None = None, service_url: str | None = None):
        self.url = url.rstrip("/")
        self.service_url = (service_url or url).rstrip("/")
        self.user = user
        self.http = httpx.AsyncClient(
            headers={"Authorization": f"token {token}", "Accept": "application/json"},
            timeout=httpx.Timeout(timeout, connect=5.0), limits=KEEPALIVE,
            **({"transport": transport} if transport else _transports()),
        )
        # The hub's API through this client's connection and its words for failures.
        self.hub = HubAPI(self.hub_api, http=self.http, send=self._request)
        self._default_image: str | None = None
        self._default_asked: asyncio.Future | None = None

    def use_token(self, token: str) -> None:
        """A new login's token for every request from now on."""
        self.http.headers["Authorization"] = f"token {token}"

    @property
    def hub_api(self) -> str:
        return f"{self.url}/hub/api"

    @property
    def service_api(self) -> str:
        return f"{self.service_url}/services/podbay/api/v1"

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> "PodbayClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def _request(self, method: str, url: str, **kw) -> httpx.Response:
        try:
            r = await self.http.request(method, url, **kw)
        except httpx.TimeoutException:
            raise HubUnavailable(f"{self.url} did not answer in time; is the hub up? Try again shortly.") from None
        except httpx.HTTPError as e:
            raise HubUnavailable(f"cannot reach {self.url} ({type(e).__name__}); is the hub running?") from None
        self._raise_for(r)
        return r

    def _raise_for(self, r: httpx.Response) -> None:
        if r.status_code < 400:
            return
        msg = _message(r)
        # JupyterHub answers a bad token with 403 ("Missing or invalid credentials", or no
        # message at all on /user): that is a login problem, not a permission one.
        if r.status_code == 401 or (r.status_code == 403 and (
                "credentials" in msg.lower() or msg in ("None", "") or r.url.path.endswith("/hub/api/user"))):
            raise AuthError("your token was not accepted (expired or revoked?): run `podbay login` again")
        if r.status_code == 403 and not (r.request.method == "POST" and "/servers/" in r.url.path):
            raise Forbidden(f"not allowed: {msg}")
        # A 403 when starting a workspace is podbay's quota refusal: handled as Refused below.
        if r.status_code == 404:
            raise NotFound(msg)
        if r.status_code in (502, 503, 504) and "podbay" not in msg.lower() and r.headers.get(
                "content-type", "").startswith("text/html"):
            raise HubUnavailable(f"{self.url} is up but the hub or service behind it is not ({r.status_code})")
        code = "refused"
        try:
            code = r.json().get("error", code)
        except Exception:
            pass
        raise Refused(msg, r.status_code, code)

    # --- JupyterHub: who am I, workspaces ---------------------------------------------------

    async def whoami(self) -> dict[str, Any]:
        model = (await self.hub.user()).json()
        self.user = model["name"]
        return model

    async def _me(self) -> str:
        if self.user is None:
            await self.whoami()
        return self.user

    async def workspaces(self) -> list[Workspace]:
        # The TUI's first paint waits on this: one round trip to the hub where it can be (the
        # token's own user, with its servers), and the catalog's default image asked for
        # beside it the first time, not after it.
        if self._default_image is None and self._default_asked is None:
            # Asked once per client, and let finish even when this list needs no default.
            self._default_asked = asyncio.ensure_future(self._default_image_if_known())
        if self.user is None:
            model = (await self.hub.user()).json()
            self.user = model["name"]
            if "servers" not in model:  # a token that may not read its user's servers there
                model = (await self.hub.user(self.user)).json()
        else:
            model = (await self.hub.user(self.user)).json()
        servers = model.get("servers") or {}
        found = [Workspace.from_model(n, m) for n, m in sorted(servers.items()) if n]
        if any(not ws.image for ws in found):
            image = self._default_image or await (self._default_asked or self._default_image_if_known())
            if image:
                found = [ws if ws.image else dataclasses.replace(ws, image=image, image_default=True) for ws in found]
        return found

    async def _default_image_if_known(self) -> str | None:
        # The list of workspaces is shown even when the service cannot say (an old portal, down);
        # it is asked again next time.
        try:
            return await self.default_image()
        except ClientError:
            self._default_asked = None
            return None

    async def default_image(self) -> str:
        """The catalog's default image (asked once per client: it changes with podbay.yaml)."""
        if self._default_image is None:
            images = (await self.catalog())["images"]
            self._default_image = next((i["name"] for i in images if i["default"]),
                                       images[0]["name"] if images else "")
        return self._default_image

    async def start_workspace(self, name: str, options: dict[str, Any]) -> None:
        user = await self._me()
        existed = any(w.name == name for w in await self.workspaces())
        try:
            await self.hub.start_server(user, name, options, timeout=90)
        except Refused:
            # JupyterHub keeps a record of a named server even when its first start is
            # refused; a workspace that never ran should not linger in the list.
            if not existed:
                try:
                    await self.hub.stop_server(user, name, remove=True)
                except ClientError:
                    pass
            raise

    async def stop_workspace(self, name: str) -> None:
        await self.hub.stop_server(await self._me(), name, timeout=90)

    async def delete_workspace(self, name: str) -> None:
        await self.hub.stop_server(await self._me(), name, remove=True, timeout=90)

    async def progress(self, name: str) -> AsyncIterator[dict[str, Any]]:
        """JupyterHub's spawn progress events, until ready or failed."""
        from httpx_sse import aconnect_sse

        user = await self._me()
        url = self.hub.url(self.hub.server_path(user, name) + "/progress")
        try:
            async with aconnect_sse(self.http, "GET", url, timeout=httpx.Timeout(None, connect=5.0)) as source:
                self._raise_for(source.response)
                async for event in source.aiter_sse():
                    data = json.loads(event.data)
                    yield data
                    if data.get("ready") or data.get("failed"):
                        return
        except httpx.HTTPError as e:
            raise HubUnavailable(f"lost the progress stream ({type(e).__name__})") from None

    def lab_url(self, ws: Workspace) -> str:
        return f"{self.server_url(ws)}lab" if ws.url else f"{self.url}/hub/user-redirect/"

    # --- podbay's service ------------------------------------------------------------------

    async def _svc(self, method: str, path: str, **kw) -> Any:
        r = await self._request(method, f"{self.service_api}/{path}", **kw)
        return r.json()

    async def catalog(self) -> dict[str, Any]:
        return await self._svc("GET", "catalog")

    async def capacity(self) -> dict[str, Any]:
        return await self._svc("GET", "capacity")

    async def gpus(self) -> dict[str, Any]:
        """Every node's GPUs and who holds each device (the capacity page's picture)."""
        return await self._svc("GET", "capacity/gpus")

    async def advice(self, days: float = 30, pool: list[str] | None = None) -> dict[str, Any]:
        # Replaying a month of demand takes the service a moment (benchmarks/placement_replay.py).
        return await self._svc("GET", "advice", params={"days": days, **({"pool": pool} if pool else {})},
                               timeout=120)

    async def apply_advice(self, node: str, days: float = 30, pool: list[str] | None = None,
                           config: str | None = None) -> dict[str, Any]:
        return await self._svc("POST", "advice/apply", json={"node": node, "days": days, "pool": pool, "config": config},
                               timeout=120)

    async def me(self) -> dict[str, Any]:
        return await self._svc("GET", "me")

    async def notices(self) -> list[dict[str, Any]]:
        """Idle GPU warnings on the person's workspaces and the idle rules' recent actions."""
        return await self._svc("GET", "notices")

    async def keep(self, name: str, hours: float) -> dict[str, Any]:
        return await self._svc("POST", f"workspaces/{quote(name, safe='')}/keep", json={"hours": hours})

    async def usage(self, **params) -> dict[str, Any]:
        return await self._svc("GET", "usage", params={k: v for k, v in params.items() if v is not None})

    async def volumes(self) -> list[dict[str, Any]]:
        return await self._svc("GET", "volumes")

    async def keys(self) -> list[dict[str, Any]]:
        return await self._svc("GET", "keys")

    async def add_key(self, line: str) -> dict[str, Any]:
        return await self._svc("POST", "keys", json={"key": line})

    async def delete_key(self, fingerprint: str) -> None:
        await self._request("DELETE", f"{self.service_api}/keys/{quote(fingerprint, safe=':')}")

    async def ssh_info(self) -> dict[str, Any]:
        """The account SSH logs in to in workspaces, and how many keys the person has."""
        return await self._svc("GET", "ssh")

    async def jupyter_token(self, name: str, days: int = 30) -> dict[str, Any]:
        """A token for VS Code's Jupyter extension, good for this one workspace."""
        return await self._svc("POST", f"workspaces/{quote(name, safe='')}/jupyter-token", json={"days": days})

    def server_url(self, ws: Workspace) -> str:
        """The workspace's Jupyter server, as a Jupyter client connects to it."""
        # The hub gives a path, or with subdomain_host the workspace's own origin.
        return (urljoin(self.url + "/", ws.url) if ws.url else
                f"{self.url}/user/{quote(self.user or '', safe='')}/{quote(ws.name, safe='')}/")

    async def secrets(self) -> list[dict[str, Any]]:
        return await self._svc("GET", "secrets")

    async def set_secret(self, name: str, value: str) -> None:
        await self._request("PUT", f"{self.service_api}/secrets/{quote(name, safe='')}", json={"value": value})

    async def delete_secret(self, name: str) -> None:
        await self._request("DELETE", f"{self.service_api}/secrets/{quote(name, safe='')}")

    async def jobs(self, **filters) -> list[dict[str, Any]]:
        params = {k: v for k, v in filters.items() if v is not None}
        return await self._svc("GET", "jobs", params=params)

    async def job(self, job_id: int) -> dict[str, Any]:
        return await self._svc("GET", f"jobs/{job_id}")

    async def submit_job(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self._svc("POST", "jobs", json=body)

    async def cancel_job(self, job_id: int) -> dict[str, Any]:
        return await self._svc("DELETE", f"jobs/{job_id}", timeout=60)

    async def logs(self, job_id: int) -> str:
        r = await self._request("GET", f"{self.service_api}/jobs/{job_id}/logs")
        return r.text

    async def follow_logs(self, job_id: int) -> AsyncIterator[str]:
        url = f"{self.service_api}/jobs/{job_id}/logs"
        try:
            async with self.http.stream("GET", url, params={"follow": "true"},
                                        timeout=httpx.Timeout(None, connect=5.0)) as r:
                if r.status_code >= 400:
                    await r.aread()
                    self._raise_for(r)
                async for chunk in r.aiter_text():
                    yield chunk
        except httpx.HTTPError as e:
            raise HubUnavailable(f"lost the log stream ({type(e).__name__})") from None
