"""podbay's web pages: capacity as a picture of the nodes and their GPUs, the person's jobs
(status with the engine's reason, logs that follow live, cancel), and GPU usage with charts.

Served by the REST service under `pages/`, behind the hub's login (the service's OAuth
session, the same one `podbay login`'s approval page uses), linked from the hub's
navigation bar (templates/hub/page.html). Rendered on the server with Jinja2; the charts
are Chart.js, shipped in static/ (no build step). Scripts come only from static/ (a CSP
forbids inline ones); a page's data for its script is JSON in a non-executed block.
"""

from __future__ import annotations

import asyncio
import logging
import json
import os
import time
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response, StreamingResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

from podbay.tui.fmt import gpu_hours

from ..browser import PAGE_HEADERS, BrowserSession, navigation, not_a_tab, page_script
from ..usage.settings import fmt_duration
from ..usage.store import UsageStore
from .picture import capacity_picture

if TYPE_CHECKING:
    from ..jobs import JobManager
    from ..portal import Portal

log = logging.getLogger(__name__)

# The hub package's templates and static files (the hub's own pages share them).
HERE = Path(__file__).parent.parent
STATIC = HERE / "static"
_ENV = Environment(loader=FileSystemLoader(HERE / "templates" / "pages"), autoescape=select_autoescape(["html"]))
_ENV.filters["hours"] = gpu_hours
_ENV.filters["when"] = lambda t: time.strftime("%Y-%m-%d %H:%M", time.localtime(t)) if t else "-"
_ENV.filters["duration"] = fmt_duration


# Why a job's output and cancel are not on its page (hub/browser.py: BrowserSession.exposed).
EXPOSED = ("this portal serves people's workspaces from its own address, where a page of another person's "
           "workspace could read a job's output or cancel it for you: use `podbay job logs` and `podbay job "
           "cancel` (or the TUI)")


def pages_router(prefix: str, portal: "Portal", jobs: "JobManager", session: BrowserSession) -> APIRouter:
    """The pages under `prefix`pages/. Each is served only to a top-level navigation of the
    person's own tab, and its actions and its script's reads need a token only the page
    holds (hub/browser.py says why and what that does not cover)."""
    router = APIRouter(include_in_schema=False)
    usage = UsageStore(portal.book)
    base = f"{prefix}pages/"
    # The hub tells its services where it lives (a deployment's base_url).
    hub_home = os.environ.get("JUPYTERHUB_BASE_URL", "/").rstrip("/") + "/hub/home"

    def render(name: str, who: dict, status: int = 200, **ctx) -> HTMLResponse:
        html = _ENV.get_template(name).render(prefix=prefix, base=base, who=who, hub_home=hub_home, **ctx)
        return HTMLResponse(html, status_code=status, headers=PAGE_HEADERS)

    async def person(request: Request):
        return await session.user(request)

    async def page_or_login(request: Request):
        """(the person, None), or (None, the answer): not a tab's own navigation (a script's
        fetch or a frame, which must not read the page or its tokens), or a login first."""
        if not navigation(request):
            return None, HTMLResponse(not_a_tab(request), 403, headers=PAGE_HEADERS)
        who = await person(request)
        if who is None:
            if session.oauth is None:
                return None, HTMLResponse("podbay's pages need the hub's login (JupyterHub OAuth)", 503)
            return None, session.login_redirect(request)
        return who, None

    def may_see(who: dict, job_id: int):
        job = jobs.get(job_id)
        if job is None:
            return None, 404
        if not job.seen_by(who["name"], bool(who.get("admin"))):
            return None, 403
        return job, 200

    @router.get(f"{prefix}static/{{name}}")
    async def static(name: str):
        path = STATIC / name
        if "/" in name or not path.is_file():
            return Response("not found", 404)
        return FileResponse(path, headers={"Cache-Control": "public, max-age=86400", "X-Content-Type-Options": "nosniff"})

    # Someone who types the portal's address, or trims a page's, lands on the pages, not on
    # the API's JSON 404.
    @router.get(prefix.rstrip("/"))
    @router.get(prefix)
    @router.get(base.rstrip("/"))
    @router.get(base)
    async def landing():
        return RedirectResponse(f"{base}capacity", status_code=302)

    @router.get(f"{base}capacity")
    async def capacity(request: Request, advice: float | None = None):
        who, redirect = await page_or_login(request)
        if redirect:
            return redirect
        picture = await asyncio.to_thread(capacity_picture, portal)
        advised = None
        if who.get("admin") and advice is not None and 0 < advice <= 400:
            # Admins: the layout advice from the last `advice` days of demand (routers/advice.py),
            # asked for by a link, since replaying a month of a big cluster takes a moment.
            from .routers.advice import advice_for

            until = time.time()
            try:
                advised = await asyncio.to_thread(advice_for, portal, until - advice * 86400, until)
            except Exception as e:  # noqa: BLE001 - the page still shows capacity; the log has it
                log.exception("layout advice failed")
                advised = {"error": f"{type(e).__name__}: {e}"}
        return render("capacity.html", who, pools=picture, places=portal.places_devices, advice=advised,
                      advice_days=advice)

    @router.get(f"{base}jobs")
    async def jobs_page(request: Request):
        who, redirect = await page_or_login(request)
        if redirect:
            return redirect
        mine = await asyncio.to_thread(jobs.list, who["name"], None, None, 200)
        return render("jobs.html", who, jobs=mine)

    @router.get(f"{base}jobs/{{job_id}}")
    async def job_page(request: Request, job_id: int):
        who, redirect = await page_or_login(request)
        if redirect:
            return redirect
        job, status = await asyncio.to_thread(may_see, who, job_id)
        if job is None:
            message = "This job belongs to another user." if status == 403 else f"There is no job {job_id}."
            return render("error.html", who, status=status, message=message)
        return render("job.html", who, job=job, exposed=session.exposed,
                      csrf=session.page_token(request, "cancel", job_id),
                      logs_token=session.page_token(request, "logs", job_id), terminal=job.state in ("succeeded", "failed", "cancelled"))

    @router.get(f"{base}jobs/{{job_id}}/logs")
    async def job_logs(request: Request, job_id: int):
        # Only the job page's own script: it holds this job's token (a script of another page
        # on the hub's origin cannot read the page to learn it).
        if session.exposed:
            return Response(EXPOSED, 403)
        if not page_script(request) or not session.page_token_ok(
                request, request.headers.get("x-podbay-page", ""), "logs", job_id):
            return Response("reload the job's page", 403)
        who = await person(request)
        if who is None:
            return Response("log in again", 401)
        job, status = await asyncio.to_thread(may_see, who, job_id)
        if job is None:
            return Response("", status)
        first = await jobs.read_logs(job_id, None)
        # Follows as the job writes, until it ends; the page appends what comes.
        return StreamingResponse(jobs.follow_logs(job_id, first), media_type="text/plain; charset=utf-8",
                                 headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"})

    @router.post(f"{base}jobs/{{job_id}}/cancel")
    async def job_cancel(request: Request, job_id: int):
        # The page's own button, pressed by the person, with this job's token from the page.
        if not navigation(request, action=True):
            return Response("cancel with the button on the job's page", 403)
        if session.exposed:
            return Response(EXPOSED, 403)
        who = await person(request)
        if who is None:
            return Response("log in again", 401)
        # A urlencoded form (as pairing.py reads its own: no multipart parser needed).
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        if not session.page_token_ok(request, (form.get("csrf") or [""])[0], "cancel", job_id):
            return Response("this form is stale: reload the page", 403)
        job, status = await asyncio.to_thread(may_see, who, job_id)
        if job is None:
            return Response("", status)
        await jobs.cancel(job_id)
        return Response(status_code=303, headers={"Location": f"{base}jobs/{job_id}"})

    @router.get(f"{base}usage")
    async def usage_page(request: Request, days: int = 30, by: str = "user"):
        who, redirect = await page_or_login(request)
        if redirect:
            return redirect
        by = by if by in ("user", "team", "profile", "pool") else "user"
        days = max(1, min(days, 400))
        until = time.time()
        since = until - days * 86400
        # People see their own usage; admins everyone's.
        user = None if who.get("admin") else who["name"]

        def compute():
            return (usage.usage(since, until, by, user=user), usage.hourly(since, until, user=user),
                    usage.idle_jobs(since, until, user=user))
        rows, hourly, idle = await asyncio.to_thread(compute)
        # Hours to days for charts longer than a week: a readable number of bars.
        series = defaultdict(list)
        for point in hourly:
            bucket = point["hour"] // 86400 * 86400 if days > 7 else point["hour"]
            if point["utilization"] is not None:
                series[bucket].append(point["utilization"])
        chart = {"labels": [time.strftime("%m-%d" if days > 7 else "%m-%d %H:00", time.localtime(t)) for t in sorted(series)],
                 "utilization": [round(sum(v) / len(v), 1) for _t, v in sorted(series.items())],
                 "keys": [r[by] or "-" for r in rows], "held": [round(r["gpu_hours_held"], 2) for r in rows],
                 "used": [round(r["gpu_hours_used"], 2) for r in rows]}
        return render("usage.html", who, rows=rows, by=by, days=days, idle_jobs=idle, chart=json.dumps(chart).replace("<", "\\u003c"),
                      since=since, until=until)

    return router


__all__ = ["pages_router"]
