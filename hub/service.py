"""podbay's REST service: catalog, capacity, quota, volumes and training jobs.

JupyterHub runs it as a managed service under /services/podbay/; the API is under
`api/v1/` there, its OpenAPI document at `api/v1/openapi.json`. Callers authenticate with
JupyterHub API tokens (`Authorization: token …` or `Bearer …`), which the hub resolves.
Every error is JSON `{"error": code, "message": sentence}` and never repeats a token.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import time
from dataclasses import dataclass
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, AsyncIterator

import httpx
from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, SecretStr, TypeAdapter
from starlette.exceptions import HTTPException as StarletteHTTPException

from .backends import Backend
from .hubapi import user_path
from .jobs import STATES, TERMINAL, Job, JobManager, JobRequest
from .quota import LedgerUnavailable, fmt_units
from .portal import OptionsRefused, Portal
from .secrets import SecretRefused, SecretsUnavailable, SecretStore, key_from_env
from .sshkeys import KeyRefused, KeyStore
from .training import BadCursor
from .usage.policy import IdlePolicy, Sampler, notices_for
from .usage.settings import fmt_duration
from .usage.store import UsageStore

log = logging.getLogger("podbay.service")

MAX_BODY = 256 * 1024
# Job ids are database integers: refuse what no database row can have (found by fuzzing).
JobId = Path(ge=1, le=2**31 - 1)


class ApiError(Exception):
    def __init__(self, status: int, error: str, message: str):
        self.status, self.error, self.message = status, error, message


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
        self.http = httpx.AsyncClient(base_url=api_url.rstrip("/") + "/", timeout=10,
                                      headers={"Authorization": f"token {token}"}, transport=transport)
        self.ttl = ttl
        self._cache: dict[str, tuple[float, Caller | None]] = {}

    async def resolve(self, token: str) -> Caller | None:
        key = hashlib.sha256(token.encode()).hexdigest()
        hit = self._cache.get(key)
        if hit and hit[0] > time.monotonic():
            return hit[1]
        try:
            r = await self.http.get("user", headers={"Authorization": f"token {token}"})
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
        r = await self.http.get(user_path(name), params={"include_stopped_servers": "1"})
        r.raise_for_status()
        return r.json()

    async def new_token(self, user: str, note: str, seconds: int, scopes: list[str]) -> dict[str, Any]:
        """A token of `user`'s with only `scopes` (the service role's `tokens` scope)."""
        try:
            r = await self.http.post(user_path(user, "tokens"),
                                     json={"note": note[:200], "expires_in": seconds, "scopes": scopes})
        except httpx.HTTPError:
            raise ApiError(503, "hub_unavailable", "JupyterHub's API is not reachable; try again shortly") from None
        if r.status_code >= 400:
            raise ApiError(502, "hub_refused", f"the hub did not make the token ({r.status_code}): tell the platform team")
        return r.json()

    async def aclose(self) -> None:
        await self.http.aclose()


# --- response models (the OpenAPI schemas clients rely on) -------------------------------


class SecretOut(BaseModel):
    name: str
    updated: float


class SecretIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # SecretStr: never in a repr, a log line or a validation error.
    value: SecretStr = Field(max_length=8192)


class SshKeyOut(BaseModel):
    fingerprint: str
    type: str
    comment: str
    added: float


class SshOut(BaseModel):
    # The account a workspace runs as: SSH logs in to it (`User` in ~/.ssh/config).
    login: str
    # The persistent home, where SSH sessions start.
    home: str
    # The workspace's sshd, under a running workspace's URL: raw TCP over a WebSocket.
    path: str = "sshd/"
    keys: int


class JupyterTokenIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    days: int = Field(30, ge=1, le=90)


class JupyterTokenOut(BaseModel):
    token: str
    expires_at: str | None
    scopes: list[str]
    note: str


class SshKeyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # One line of a .pub file.
    key: str = Field(max_length=16384)


class ImageOut(BaseModel):
    name: str
    display_name: str
    description: str
    image: str
    default: bool


class ProfileOut(BaseModel):
    id: str
    title: str
    kind: str
    description: str
    pools: list[str]
    gpu_units: float
    gpu_units_text: str
    total: int
    free: int
    available: bool
    reason: str | None


class CatalogOut(BaseModel):
    images: list[ImageOut]
    profiles: list[ProfileOut]


class UsageRow(BaseModel):
    total: int
    used: int
    free: int


class NodeOut(BaseModel):
    """A node of a pool whose engine reports them (Slurm): its state in the engine's words."""
    name: str
    state: str
    # Whether it takes new jobs (not down, drained, draining, …), and why not.
    usable: bool
    reason: str = ""
    gpus: int
    gpus_used: int


class PoolCapacity(BaseModel):
    pool: str
    profiles: dict[str, UsageRow]
    devices: dict[str, UsageRow]
    nodes: list[NodeOut] = []


class CapacityOut(BaseModel):
    pools: list[PoolCapacity]


class QuotaOut(BaseModel):
    gpu_units: float
    workspaces_per_user: int
    job_gpus: int


class UsageOut(BaseModel):
    gpu_units: float
    workspaces: int
    job_gpus: int


class JobLimitOut(BaseModel):
    """A team's job GPUs as the engine that runs its jobs enforces them (Slurm's account)."""
    source: str
    account: str
    # None: no limit (or the engine could not be asked).
    gpus: int | None
    gpus_in_use: int | None


class MeOut(BaseModel):
    name: str
    admin: bool
    teams: list[str]
    team: str | None
    quota: QuotaOut
    usage: UsageOut
    # Where the engine enforces the team's job GPUs instead of quota.job_gpus.
    job_limit: JobLimitOut | None = None


class VolumeOut(BaseModel):
    name: str
    description: str
    mount_path: str
    read_only: bool


class NoticeOut(BaseModel):
    workspace: str
    kind: str = Field(description="warning: an action is coming; or the action taken (release-gpu, stop, warn)")
    profile: str
    at: float = Field(description="when (unix time): the warning's, or the action's")
    deadline: float | None = Field(None, description="warning: when the action will be taken")
    action: str | None = None
    state: str | None = Field(None, description="actions: started, done or failed")
    message: str


class KeepIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hours: float = Field(gt=0, le=24 * 30, description="keep the GPU this many hours from now, idle or not")


class KeepOut(BaseModel):
    workspace: str
    keep_until: float


class UsageRowOut(BaseModel):
    key: str | None = Field(description="the user, team, profile or pool")
    gpu_hours_held: float
    gpu_hours_used: float
    utilization: float | None = Field(description="mean utilisation while held, percent (null: never measured)")
    holdings: int


class IdleJobOut(BaseModel):
    job_id: int
    user: str
    profile: str
    gpus: int
    hours: float


class ShowbackOut(BaseModel):
    since: float
    until: float
    by: str
    rows: list[UsageRowOut]
    total: UsageRowOut
    idle_jobs: list[IdleJobOut] = Field(description="jobs that ended in the period and never used their GPUs")
    hourly: list[dict] = Field(default_factory=list, description="mean utilisation per hour (for charts)")


class ErrorOut(BaseModel):
    error: str
    message: str


ERRORS = {s: {"model": ErrorOut} for s in (400, 401, 403, 404, 413, 422, 503)}


# --- the app ---------------------------------------------------------------------------


class BodyLimit:
    """Refuse request bodies over a limit (413) before they are read into memory."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await _error_response(413, "too_large", f"the request body is over {self.limit} bytes")(
                scope, receive, send)
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise ApiError(413, "too_large", f"the request body is over {self.limit} bytes")
            return message

        return await self.app(scope, limited, send)


_JOB_LIST = TypeAdapter(list[Job])


def _error_response(status: int, error: str, message: str) -> JSONResponse:
    return JSONResponse({"error": error, "message": message}, status_code=status)


def create_app(portal: Portal, jobs: JobManager, hub: HubClient, prefix: str = "/services/podbay/",
               run_scheduler: bool = True, background: Sequence[Callable[[], Awaitable[None]]] = (),
               pairing=None, sampler: Sampler | None = None, pages=None) -> FastAPI:
    base = prefix.rstrip("/") + "/api/v1"
    secrets = SecretStore(portal.book, key_from_env())
    keys = KeyStore(portal.book)
    usage = UsageStore(portal.book)
    policy = IdlePolicy(portal.cfg, portal.cfg.usage.interval)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        tasks = [asyncio.create_task(jobs.run())] if run_scheduler else []
        # The backend's own (a cluster's watches), for as long as the service runs.
        tasks += [asyncio.create_task(run()) for run in background]
        if sampler is not None:
            tasks.append(asyncio.create_task(sampler.run()))
        yield
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await jobs.backend.aclose()
        if sampler is not None:
            await sampler.source.aclose()
        await hub.aclose()
        if pairing is not None:
            await pairing.http.aclose()

    app = FastAPI(title="podbay", version="1", lifespan=lifespan,
                  openapi_url=f"{base}/openapi.json", docs_url=f"{base}/docs", redoc_url=None,
                  description="Catalog, capacity, quotas, volumes and training jobs of a podbay portal. "
                              "Workspaces are JupyterHub named servers: use JupyterHub's REST API for them.")
    app.add_middleware(BodyLimit, limit=MAX_BODY)
    if pairing is not None:
        app.include_router(pairing)
    if pages is not None:
        app.include_router(pages)

    @app.exception_handler(ApiError)
    async def _api_error(_req, exc: ApiError):
        return _error_response(exc.status, exc.error, exc.message)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_req, exc: RequestValidationError):
        parts = []
        for e in exc.errors():
            where = ".".join(str(x) for x in e["loc"] if x not in ("body", "query", "path"))
            msg = e["msg"].removeprefix("Value error, ")
            if e["type"] == "extra_forbidden":
                msg = "unknown field"
            parts.append(f"{where}: {msg}" if where else msg)
        return _error_response(400, "invalid_request", "; ".join(parts) or "the request is not valid")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_req, exc: StarletteHTTPException):
        codes = {404: "not_found", 405: "method_not_allowed"}
        return _error_response(exc.status_code, codes.get(exc.status_code, "error"), str(exc.detail))

    @app.exception_handler(Exception)
    async def _crash(_req, exc: Exception):
        log.exception("unhandled error")
        return _error_response(500, "internal", "podbay hit an internal error; the platform team can find it in the service log")

    async def caller(request: Request) -> Caller:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() not in ("token", "bearer") or not token:
            raise ApiError(401, "unauthorized",
                           "send a JupyterHub API token as 'Authorization: token <token>' (make one at /hub/token)")
        who = await hub.resolve(token)
        if who is None:
            raise ApiError(401, "unauthorized",
                           "the token is not valid (expired or revoked?); make a new one at /hub/token")
        if not who.may_access:
            raise ApiError(403, "missing_scope",
                           f"this token of {who.name} lacks the scope {ACCESS_SCOPE}, which podbay's service "
                           "requires: use a token made at /hub/token without narrowing its scopes, or one "
                           f"that includes {ACCESS_SCOPE}")
        return who

    def may_see(who: Caller, job: Job | None, job_id: int) -> Job:
        if job is None:
            raise ApiError(404, "not_found", f"there is no job {job_id}")
        if job.user != who.name and not who.admin:
            raise ApiError(403, "forbidden", f"job {job_id} belongs to another user")
        return job

    api = APIRouter(prefix=base, responses=ERRORS)

    @api.get("/catalog", response_model=CatalogOut, summary="Images and GPU profiles, with what the caller may take now")
    async def catalog(who: Caller = Depends(caller)):
        choices = await asyncio.to_thread(portal.choices, who.name, list(who.groups))
        return CatalogOut(
            images=[ImageOut(**i.model_dump()) for i in portal.cfg.images],
            profiles=[ProfileOut(id=c.profile.id, title=c.profile.title, kind=c.profile.spec.kind,
                                 description=c.profile.description, pools=c.profile.pools,
                                 gpu_units=float(c.units), gpu_units_text=fmt_units(c.units),
                                 total=c.total, free=c.free, available=c.available, reason=c.reason)
                      for c in choices])

    @api.get("/capacity", response_model=CapacityOut, summary="Per pool: profiles and devices, total, used and free")
    async def capacity(who: Caller = Depends(caller)):
        return await asyncio.to_thread(_capacity, portal)

    @api.get("/me", response_model=MeOut, summary="The caller, their teams, quota and usage")
    async def me(who: Caller = Depends(caller)):
        def compute():
            team = portal.team_for(who.name, list(who.groups))
            q = portal.quota_for(team)
            snap = portal.book.snapshot()
            return MeOut(
                name=who.name, admin=who.admin, teams=portal.cfg.teams_of(who.name, list(who.groups)), team=team,
                quota=QuotaOut(gpu_units=float(q.units), workspaces_per_user=q.workspaces_per_user, job_gpus=q.job_gpus),
                usage=UsageOut(gpu_units=float(snap.units_of(team, who.name)),
                               workspaces=snap.workspaces.get(who.name, 0), job_gpus=snap.job_gpus_of(team, who.name)))
        out = await asyncio.to_thread(compute)
        limit = await jobs.backend.team_limit(out.team)
        return out.model_copy(update={"job_limit": JobLimitOut(**limit)}) if limit else out

    @api.get("/volumes", response_model=list[VolumeOut], summary="Volumes the caller may mount")
    async def volumes(who: Caller = Depends(caller)):
        return [VolumeOut(name=v.name, description=v.description, mount_path=f"~/{v.target}", read_only=v.read_only)
                for v in portal.volumes_for(who.name, list(who.groups))]

    async def sync_secrets(user: str) -> None:
        """Where the engine keeps a copy (a Kubernetes Secret), bring it up to date now; if the
        engine is out of reach, the person's next start does."""
        sync = getattr(jobs.backend, "sync_secrets", None)
        if sync is None:
            return
        try:
            await sync(user, await asyncio.to_thread(secrets.values, user))
        except Exception as e:  # noqa: BLE001 - the engine's words, never a value
            log.warning("could not bring %s's secrets to the engine now (%s); their next start will",
                        user, type(e).__name__)

    @api.get("/secrets", response_model=list[SecretOut], summary="Your secrets' names (never their values)")
    async def list_secrets(who: Caller = Depends(caller)):
        return [SecretOut(**s) for s in await asyncio.to_thread(secrets.names, who.name)]

    @api.put("/secrets/{name}", status_code=204, summary="Set one of your secrets, for every workspace and job you start")
    async def put_secret(body: SecretIn, name: str = Path(max_length=255), who: Caller = Depends(caller)):
        try:
            await asyncio.to_thread(secrets.put, who.name, name, body.value.get_secret_value())
        except SecretRefused as e:
            raise ApiError(400, "invalid_secret", str(e)) from None
        except SecretsUnavailable as e:
            raise ApiError(503, "secrets_unavailable", str(e)) from None
        log.info("%s set the secret %s", who.name, name)
        await sync_secrets(who.name)
        return Response(status_code=204)

    @api.delete("/secrets/{name}", status_code=204, summary="Remove one of your secrets")
    async def delete_secret(name: str = Path(max_length=255), who: Caller = Depends(caller)):
        if not await asyncio.to_thread(secrets.remove, who.name, name):
            raise ApiError(404, "not_found", f"you have no secret {name}")
        log.info("%s removed the secret %s", who.name, name)
        await sync_secrets(who.name)
        return Response(status_code=204)

    @api.get("/keys", response_model=list[SshKeyOut], summary="Your SSH public keys")
    async def list_keys(who: Caller = Depends(caller)):
        return [SshKeyOut(**k) for k in await asyncio.to_thread(keys.list, who.name)]

    def open_every_workspace(who: Caller, what: str) -> None:
        if not who.reaches_all_workspaces():
            raise ApiError(403, "forbidden", f"{what} needs a login that reaches all your workspaces (podbay login on "
                                             "your own computer), not a workspace's token or a narrower one")

    @api.post("/keys", response_model=SshKeyOut, status_code=201, summary="Register an SSH public key")
    async def add_key(body: SshKeyIn, who: Caller = Depends(caller)):
        # A key opens every workspace, for as long as it is registered.
        open_every_workspace(who, "registering an SSH key")
        try:
            added = await asyncio.to_thread(keys.add, who.name, body.key)
        except KeyRefused as e:
            raise ApiError(400, "invalid_key", str(e)) from None
        log.info("%s registered the SSH key %s", who.name, added["fingerprint"])
        return SshKeyOut(**added)

    @api.delete("/keys/{fingerprint:path}", status_code=204, summary="Remove one of your SSH keys")
    async def delete_key(fingerprint: str = Path(max_length=64), who: Caller = Depends(caller)):
        open_every_workspace(who, "removing an SSH key")
        if not await asyncio.to_thread(keys.remove, who.name, fingerprint):
            raise ApiError(404, "not_found", f"you have no key {fingerprint}")
        log.info("%s removed the SSH key %s", who.name, fingerprint)
        return Response(status_code=204)

    @api.get("/keys/authorized_keys", response_class=PlainTextResponse,
             summary="Your keys as an authorized_keys file (what a workspace's sshd asks at each login)")
    async def authorized_keys(who: Caller = Depends(caller)):
        return PlainTextResponse(await asyncio.to_thread(keys.authorized_keys, who.name))

    @api.get("/ssh", response_model=SshOut, summary="How SSH reaches your workspaces")
    async def ssh(who: Caller = Depends(caller)):
        plugin = portal.plugin or Backend()
        return SshOut(login=plugin.workspace_login(), home=plugin.workspace_home(portal.data_dir, who.name),
                      keys=len(await asyncio.to_thread(keys.list, who.name)))

    @api.post("/workspaces/{name}/jupyter-token", response_model=JupyterTokenOut, status_code=201,
              summary="A token for VS Code's Jupyter extension, good for this one workspace only")
    async def jupyter_token(body: JupyterTokenIn | None = None, name: str = Path(max_length=255),
                            who: Caller = Depends(caller)):
        # Never more than the caller has: a workspace's token may not mint one for another.
        open_every_workspace(who, "a token for the Jupyter extension")
        try:
            model = await hub.user(who.name)
        except httpx.HTTPError:
            raise ApiError(503, "hub_unavailable", "JupyterHub's API is not reachable; try again shortly") from None
        if name not in (model.get("servers") or {}):
            raise ApiError(404, "not_found", f"you have no workspace named {name}")
        # Reach this workspace and read it (the extension lists the person's servers and asks
        # for their names): nothing that starts, stops, or reaches another one.
        scopes = [f"access:servers!server={who.name}/{name}", f"read:servers!server={who.name}/{name}",
                  f"read:users:name!user={who.name}"]
        note = f"VS Code Jupyter extension, workspace {name} (podbay ws open --vscode)"
        days = (body or JupyterTokenIn()).days
        made = await hub.new_token(who.name, note, days * 86400, scopes)
        log.info("%s made a Jupyter extension token for %s", who.name, name)
        return JupyterTokenOut(token=made["token"], expires_at=made.get("expires_at"), scopes=scopes, note=note)

    def notices_of(user: str) -> list[NoticeOut]:
        return [NoticeOut(**n) for n in notices_for(portal.cfg, usage, policy, user, time.time())]

    @api.get("/notices", response_model=list[NoticeOut],
             summary="Idle GPU warnings on your workspaces, and what the idle rules did lately")
    async def notices(who: Caller = Depends(caller)):
        return await asyncio.to_thread(notices_of, who.name)

    @api.post("/workspaces/{name}/keep", response_model=KeepOut,
              summary="Keep a workspace's GPU for some hours even if it is idle")
    async def keep(body: KeepIn, name: str = Path(max_length=255), who: Caller = Depends(caller)):
        most = portal.cfg.idle.keep_max
        if not most:
            raise ApiError(403, "keep_not_allowed", "this portal does not let GPUs be kept while idle "
                                                    "(idle.keep_max is 0): use the GPU, or ask the platform team")
        if body.hours * 3600 > most:
            raise ApiError(400, "keep_too_long", f"at most {fmt_duration(most)} ahead (idle.keep_max); "
                                                 f"ask again then if you still need it")
        now = time.time()
        until = now + body.hours * 3600
        current = await asyncio.to_thread(usage.open_holding, f"workspace:{who.name}/{name}")
        if current is None:
            raise ApiError(404, "not_found", f"you have no running workspace named {name}")
        rule = policy.rule(current)
        if rule is not None and current.idle_since is not None:
            # However often it is asked (a script may): at most keep_max beyond when this
            # idle streak's action would have come. Any GPU activity starts a new streak.
            cap = current.idle_since + rule.after + most
            if cap <= now:
                raise ApiError(409, "keep_used_up", f"{name}'s GPU has been kept idle for as long as this portal "
                                                    f"allows ({fmt_duration(most)}); use it, or stop the workspace")
            until = min(until, cap)
        held = await asyncio.to_thread(usage.keep, who.name, name, until)
        if held is None:
            raise ApiError(404, "not_found", f"you have no running workspace named {name}")
        if held.acted:
            raise ApiError(409, "too_late", f"the idle rule is already acting on {name} ({held.acted}); "
                                            "start it again once it has")
        until = held.keep_until
        log.info("%s keeps the GPU of %s until %s", who.name, name, time.strftime("%H:%M", time.localtime(until)))
        return KeepOut(workspace=name, keep_until=until)

    @api.get("/usage", response_model=ShowbackOut,
             summary="GPU-hours held and used, and utilisation while held, per user, team, profile or pool",
             description="Your own usage; a team's if you are in it (`team=`); anyone's for admins.")
    async def showback(who: Caller = Depends(caller),
                       since: float | None = Query(None, description="unix time; default: 30 days ago"),
                       until: float | None = Query(None, description="unix time; default: now"),
                       by: str = Query("user", pattern="^(user|team|profile|pool)$"),
                       user: str | None = Query(None, max_length=255),
                       team: str | None = Query(None, max_length=255)):
        now = time.time()
        until = now if until is None else until
        since = until - 30 * 86400 if since is None else since
        if since >= until:
            raise ApiError(400, "invalid_request", "since must be before until")
        if not who.admin:
            if team is not None:
                if team not in portal.cfg.teams_of(who.name, list(who.groups)):
                    raise ApiError(403, "forbidden", f"you are not in team {team}: you may see your own usage "
                                                     "and your teams'")
            elif user not in (None, who.name):
                raise ApiError(403, "forbidden", "only admins can see other users' usage")
            else:
                user = who.name

        def compute():
            rows = usage.usage(since, until, by, user=user, team=team)
            held = sum(r["gpu_hours_held"] for r in rows)
            used = sum(r["gpu_hours_used"] for r in rows)
            held_m = sum(r["gpu_hours_measured"] for r in rows)
            total = UsageRowOut(key=None, gpu_hours_held=held, gpu_hours_used=used,
                                utilization=(used / held_m * 100) if held_m else None,
                                holdings=sum(r["holdings"] for r in rows))
            jobs_idle = [IdleJobOut(job_id=int(h.key.split(":", 1)[1]), user=h.user, profile=h.profile, gpus=h.gpus,
                                    hours=((h.ended or now) - h.started) / 3600)
                         for h in usage.idle_jobs(since, until, user=user)
                         if team is None or h.team == team]
            return ShowbackOut(since=since, until=until, by=by,
                               rows=[UsageRowOut(key=r[by], **{k: r[k] for k in ("gpu_hours_held", "gpu_hours_used",
                                                                                   "utilization", "holdings")})
                                     for r in rows],
                               total=total, idle_jobs=jobs_idle,
                               hourly=usage.hourly(since, until, user=user, team=team)
                               if until - since <= 93 * 86400 else [])
        return await asyncio.to_thread(compute)

    from .usage.metrics import PodbayCollector, registry_for

    registry = registry_for(PodbayCollector(portal, jobs, usage, sampler, lambda: _capacity(portal)))

    @api.get("/metrics", response_class=PlainTextResponse,
             summary="Prometheus metrics: capacity, claims, the job queue, GPU-hours, idle actions",
             description="For admins' tokens, or any token with JupyterHub's read:metrics scope.")
    async def metrics(who: Caller = Depends(caller)):
        if not (who.admin or "read:metrics" in who.scopes):
            raise ApiError(403, "forbidden", "metrics are for admins, or a token with the read:metrics scope")
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        body = await asyncio.to_thread(generate_latest, registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    @api.post("/jobs", response_model=Job, status_code=201, summary="Submit a training job")
    async def submit(req: JobRequest, who: Caller = Depends(caller)):
        ws_options = None
        if req.from_workspace is not None:
            try:
                model = await hub.user(who.name)
            except httpx.HTTPError:
                raise ApiError(503, "hub_unavailable", "JupyterHub's API is not reachable; try again shortly") from None
            server = (model.get("servers") or {}).get(req.from_workspace)
            ws_options = (server.get("user_options") or {}) if server is not None else None
        try:
            job = await asyncio.to_thread(jobs.submit, who.name, list(who.groups), req, ws_options)
        except OptionsRefused as e:
            raise ApiError(400, "invalid_job", str(e)) from None
        return job

    @api.get("/jobs", response_model=list[Job], summary="Jobs: your own, or anyone's for admins")
    async def list_jobs(who: Caller = Depends(caller),
                        user: str | None = Query(None, max_length=255),
                        team: str | None = Query(None, max_length=255),
                        state: str | None = Query(None, pattern="^(" + "|".join(STATES) + ")$"),
                        limit: int = Query(500, ge=1, le=5000)):
        if not who.admin:
            if user not in (None, who.name) or team is not None:
                raise ApiError(403, "forbidden", "only admins can list other users' or teams' jobs")
            user = who.name
        listed = await asyncio.to_thread(jobs.list, user, team, state, limit)
        # Serialized once, here: the models were built from the database just now, and
        # FastAPI would validate every one of them again against response_model (a list of
        # thousands is the engine's queue).
        return Response(_JOB_LIST.dump_json(listed), media_type="application/json")

    @api.get("/jobs/{job_id}", response_model=Job, summary="One job")
    async def get_job(job_id: int = JobId, who: Caller = Depends(caller)):
        return may_see(who, await asyncio.to_thread(jobs.get, job_id), job_id)

    @api.get("/jobs/{job_id}/logs", response_class=PlainTextResponse,
             summary="A job's output; follow=true streams until the job ends",
             description="The `X-Podbay-Cursor` header of the answer is where the output read ends: "
                         "pass it back as `cursor` to get only what came after.")
    async def logs(job_id: int = JobId, who: Caller = Depends(caller), follow: bool = False,
                   cursor: str | None = Query(None, max_length=1024, description="from a previous answer's "
                                              "X-Podbay-Cursor header")):
        may_see(who, await asyncio.to_thread(jobs.get, job_id), job_id)
        try:
            if not follow:
                data, after = await jobs.read_logs(job_id, cursor)
                # The bytes as they are: a read may end inside a multi-byte character, which
                # the next read (from the cursor) completes. Decoding here would break it twice.
                return PlainTextResponse(data, headers={"X-Podbay-Cursor": after} if after is not None else None)
            # The first read here, so that a bad cursor is a 400, not a broken stream.
            first = await jobs.read_logs(job_id, cursor)
        except BadCursor as e:
            raise ApiError(400, "bad_cursor", str(e)) from None
        return StreamingResponse(_follow(jobs, job_id, first), media_type="text/plain; charset=utf-8")

    @api.delete("/jobs/{job_id}", response_model=Job, summary="Cancel a job")
    async def cancel(job_id: int = JobId, who: Caller = Depends(caller)):
        may_see(who, await asyncio.to_thread(jobs.get, job_id), job_id)
        return await jobs.cancel(job_id)

    app.include_router(api)
    return app


async def _follow(jobs: JobManager, job_id: int, first: tuple[bytes, str | None],
                  interval: float = 0.2) -> AsyncIterator[bytes]:
    chunk, cursor = first
    while True:
        if chunk:
            yield chunk
        # Read whether it had ended before reading on, so no output after the end is lost.
        done = (await asyncio.to_thread(jobs.get, job_id)).state in TERMINAL
        chunk, cursor = await jobs.read_logs(job_id, cursor)
        if not chunk and done:
            return
        if not chunk:
            await asyncio.sleep(interval)


def _capacity(portal: Portal) -> CapacityOut:
    snap = portal.book.snapshot()
    if "capacity" in snap.memo:
        return snap.memo["capacity"]
    pools = []
    for pool in portal.cfg.pools:
        profiles = {}
        for p in portal.cfg.profiles:
            if pool in p.pools and p.spec.kind != "cpu":
                total, free = portal.counts(p.spec, [pool], snap)
                profiles[p.id] = UsageRow(total=total, used=total - free, free=free)
        devices = {kind: UsageRow(total=u.total, used=u.used, free=u.free)
                   for kind, u in portal.capacity.devices(pool, snap).items()}
        states = getattr(portal.capacity, "node_states", lambda _pool: [])(pool)
        nodes = [NodeOut(name=n.name, state=n.state, usable=n.usable, reason=n.reason, gpus=n.gpus,
                         gpus_used=n.gpus_used) for n in states]
        pools.append(PoolCapacity(pool=pool, profiles=profiles, devices=devices, nodes=nodes))
    snap.memo["capacity"] = CapacityOut(pools=pools)
    return snap.memo["capacity"]


def _own_namespace() -> str | None:
    try:
        with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace") as f:
            return f.read().strip() or None
    except OSError:
        return None


def main() -> None:
    import uvicorn
    from urllib.parse import urlparse

    logging.basicConfig(level=logging.INFO, format="[%(levelname)1.1s %(asctime)s podbay-service] %(message)s")
    # One line per request would be one per exporter per usage.interval: the service says
    # what matters in its own words.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    env = os.environ
    from .backends import BackendError, chosen, load

    try:
        portal = Portal.open(env["PODBAY_CONFIG"], env["PODBAY_DB_URL"], env["PODBAY_DATA_DIR"],
                             env.get("PODBAY_BACKEND"))
    except (LedgerUnavailable, BackendError) as e:
        raise SystemExit(f"podbay-service: {e}") from None
    try:
        plugin = load(chosen(portal.cfg, env.get("PODBAY_BACKEND")))
        backend = plugin.training(portal)
    except BackendError as e:
        raise SystemExit(f"podbay-service: {e}") from None
    jobs = JobManager(portal, backend)
    hub = HubClient(env["JUPYTERHUB_API_URL"], env["JUPYTERHUB_API_TOKEN"])
    # PODBAY_PAUSE_JOBS=1: accept and queue jobs but start none (maintenance of the pool).
    paused = env.get("PODBAY_PAUSE_JOBS") == "1"
    if paused:
        log.warning("PODBAY_PAUSE_JOBS is set: jobs are queued, none is started")
    prefix = env.get("JUPYTERHUB_SERVICE_PREFIX", "/services/podbay/")
    # `podbay login` pairs with a browser session, and podbay's pages live in one: the
    # browser logs in to the hub by OAuth (hub/browser.py).
    from jupyterhub.services.auth import HubOAuth

    from .browser import BrowserSession, TrustedProxies, shares_origin
    from .pages import pages_router
    from .pairing import pairing_router

    oauth = HubOAuth(api_token=env["JUPYTERHUB_API_TOKEN"], cache_max_age=0) if env.get("JUPYTERHUB_CLIENT_ID") else None
    # Other people's workspaces on the pages' own origin (hub/browser.py says what is off then).
    exposed = shares_origin(env, plugin.isolates_users)
    if exposed:
        log.warning("workspaces share the hub's origin (no subdomain_host): approving `podbay login` in the browser, "
                    "and jobs' output and cancel on the pages, are off (PODBAY_SHARED_ORIGIN=accept turns them on)")
    session = BrowserSession(oauth, hashlib.sha256(f"podbay-session:{env['JUPYTERHUB_API_TOKEN']}".encode()).digest(),
                             prefix, exposed)
    url = urlparse(env.get("JUPYTERHUB_SERVICE_URL", "http://127.0.0.1:8003"))
    bind = env.get("PODBAY_SERVICE_BIND") or url.hostname or "127.0.0.1"
    # Whose X-Forwarded-For is believed: the proxy's. By default this machine's own addresses
    # (the proxy runs beside the hub: the loopback, or the address the service listens on,
    # the docker network's gateway); a workspace calling the service directly is counted by
    # its own address.
    own = [bind] if bind not in ("0.0.0.0", "::", "") else []
    proxies = TrustedProxies.parse(env.get("PODBAY_TRUSTED_PROXIES"), ["127.0.0.0/8", "::1/128", *own])
    background = [lambda: plugin.serve(portal)]
    if env.get("PODBAY_TRUSTED_PROXY_PODS"):
        # On a cluster the proxy is a pod of its own, found by its labels (the chart's
        # app=jupyterhub,component=proxy) in the hub's namespace.
        from .k8s.api import follow_pod_addresses

        namespace = env.get("POD_NAMESPACE") or _own_namespace() or "default"
        background.append(lambda: follow_pod_addresses(env["PODBAY_TRUSTED_PROXY_PODS"], namespace, proxies.found))
    pairing = pairing_router(prefix, env["JUPYTERHUB_API_URL"], env["JUPYTERHUB_API_TOKEN"],
                             int(portal.cfg.auth.cli_token_days * 86400), session, hub.forget, proxies)
    from .usage.policy import HubServers

    job_pods = getattr(getattr(portal.cfg, "kubernetes", None), "name_prefix", None) if plugin.name == "kubernetes" else None
    sampler = Sampler(portal.cfg, UsageStore(portal.book), portal.inventory, HubServers(hub.http),
                      job_pod_prefix=job_pods)
    pages = pages_router(prefix, portal, jobs, session)
    app = create_app(portal, jobs, hub, prefix, run_scheduler=not paused, background=background,
                     pairing=pairing, sampler=sampler, pages=pages)
    # On a cluster the URL names the hub's Service, which the pod cannot bind: PODBAY_SERVICE_BIND
    # (config/helm/values.yaml sets 0.0.0.0) says where to listen instead.
    # proxy_headers off: the peer stays the peer (TrustedProxies decides whose header counts).
    uvicorn.run(app, host=bind, port=url.port or 8003, proxy_headers=False,
                log_level="info",
                access_log=False)


if __name__ == "__main__":
    main()
