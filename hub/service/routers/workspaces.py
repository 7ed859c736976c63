"""A workspace's extras beside JupyterHub's own API: a token for VS Code's Jupyter extension, idle notices, keeping a GPU."""

from __future__ import annotations

import asyncio
import logging
import time

from fastapi import APIRouter, Depends, Path

from ...usage.policy import notices_for
from ...usage.settings import fmt_duration
from ..context import Service, open_every_workspace
from ..errors import ApiError
from ..hubclient import Caller
from ..schemas import ERRORS, JupyterTokenIn, JupyterTokenOut, KeepIn, KeepOut, NoticeOut

log = logging.getLogger("podbay.service")


def router(svc: Service, prefix: str) -> APIRouter:
    portal, hub = svc.portal, svc.hub
    usage, policy, caller = svc.usage, svc.policy, svc.caller
    api = APIRouter(prefix=prefix, responses=ERRORS)

    @api.post("/workspaces/{name}/jupyter-token", response_model=JupyterTokenOut, status_code=201,
              summary="A token for VS Code's Jupyter extension, good for this one workspace only")
    async def jupyter_token(body: JupyterTokenIn | None = None, name: str = Path(max_length=255),
                            who: Caller = Depends(caller)):
        # Never more than the caller has: a workspace's token may not mint one for another.
        open_every_workspace(who, "a token for the Jupyter extension")
        model = await hub.user(who.name)
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

    return api
