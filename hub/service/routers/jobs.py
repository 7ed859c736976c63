"""Training jobs: submit, list, one, logs (followed until the job ends), cancel."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import PlainTextResponse, Response, StreamingResponse
from pydantic import TypeAdapter

from ...jobs import STATES, Job, JobRequest
from ...portal import OptionsRefused
from ...training import BadCursor
from ..context import Service
from ..errors import ApiError
from ..hubclient import Caller
from ..schemas import ERRORS

# Job ids are database integers: refuse what no database row can have (found by fuzzing).
JobId = Path(ge=1, le=2**31 - 1)
_JOB_LIST = TypeAdapter(list[Job])


def router(svc: Service, prefix: str) -> APIRouter:
    jobs, hub = svc.jobs, svc.hub
    caller = svc.caller
    api = APIRouter(prefix=prefix, responses=ERRORS)

    def may_see(who: Caller, job: Job | None, job_id: int) -> Job:
        if job is None:
            raise ApiError(404, "not_found", f"there is no job {job_id}")
        if not job.seen_by(who.name, who.admin):
            raise ApiError(403, "forbidden", f"job {job_id} belongs to another user")
        return job

    @api.post("/jobs", response_model=Job, status_code=201, summary="Submit a training job")
    async def submit(req: JobRequest, who: Caller = Depends(caller)):
        ws_options = None
        if req.from_workspace is not None:
            model = await hub.user(who.name)
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
        return StreamingResponse(jobs.follow_logs(job_id, first), media_type="text/plain; charset=utf-8")

    @api.delete("/jobs/{job_id}", response_model=Job, summary="Cancel a job")
    async def cancel(job_id: int = JobId, who: Caller = Depends(caller)):
        may_see(who, await asyncio.to_thread(jobs.get, job_id), job_id)
        return await jobs.cancel(job_id)

    return api
