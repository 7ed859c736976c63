"""Showback (GPU-hours held and used) and Prometheus metrics."""

from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter, Depends, Query
from fastapi.responses import PlainTextResponse, Response
from jupyterhub.services.auth import check_scopes

from ..context import Service
from ..errors import ApiError
from ..hubclient import Caller
from ..schemas import ERRORS, DemandOut, IdleJobOut, ShowbackOut, UsageRowOut
from ...usage.demand import DemandLog
from .catalog import capacity_of


def router(svc: Service, prefix: str) -> APIRouter:
    portal, jobs = svc.portal, svc.jobs
    usage, caller = svc.usage, svc.caller
    demand = DemandLog(portal.book)
    api = APIRouter(prefix=prefix, responses=ERRORS)

    @api.get("/usage", response_model=ShowbackOut,
             summary="GPU-hours held and used, utilisation while held, and the requests refused",
             description="Your own usage; a team's if you are in it (`team=`); anyone's for admins. `demand` "
                         "counts the period's requests per profile and what they got (granted, or refused for "
                         "capacity or quota), kept for `usage.retention_days`.")
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
                               demand=[DemandOut(**d) for d in demand.counts(since, until, user=user, team=team)],
                               hourly=usage.hourly(since, until, user=user, team=team)
                               if until - since <= 93 * 86400 else [])
        return await asyncio.to_thread(compute)

    from ...usage.metrics import PodbayCollector, registry_for

    registry = registry_for(PodbayCollector(portal, jobs, usage, svc.sampler, lambda: capacity_of(portal)))

    @api.get("/metrics", response_class=PlainTextResponse,
             summary="Prometheus metrics: capacity, claims, the job queue, GPU-hours, idle actions",
             description="For admins' tokens, or any token with JupyterHub's read:metrics scope.")
    async def metrics(who: Caller = Depends(caller)):
        if not (who.admin or check_scopes("read:metrics", who.scopes)):
            raise ApiError(403, "forbidden", "metrics are for admins, or a token with the read:metrics scope")
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        body = await asyncio.to_thread(generate_latest, registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return api
