"""Jobs as the REST service sees them: submissions checked against the catalog, the
user's volumes and the team's quota, then left to the scheduler; reads; cancel."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from ..portal import OptionsRefused, Portal
from ..training import TrainingBackend
from .model import JOB_POOL, TERMINAL, Job, JobRequest, JobRow
from .scheduler import Scheduler
from .store import JobStore



class JobManager:
    def __init__(self, portal: Portal, backend: TrainingBackend, clock=time.time):
        self.portal = portal
        self.backend = backend
        self.clock = clock
        self.store = JobStore(portal.book)
        self.scheduler = Scheduler(portal, backend, self.store, self.home_of, clock)

    @property
    def default_pool(self) -> str:
        return JOB_POOL if JOB_POOL in self.portal.cfg.pools else next(iter(self.portal.cfg.pools))

    def home_of(self, user: str, pool: str | None = None) -> Path:
        """The home jobs (of `pool`) work in: podbay's directory (local), or where the pool's
        engine mounts it."""
        return self.backend.for_pool(pool or self.default_pool).home_of(user) or self.portal.data_dir / "homes" / user

    # --- submitting --------------------------------------------------------------------

    def submit(self, user: str, groups: list[str], req: JobRequest,
               workspace_options: dict[str, Any] | None = None) -> Job:
        """Validate and queue a job; raise OptionsRefused with the reason if it can't be."""
        portal, cfg = self.portal, self.portal.cfg
        inherited = workspace_options or {}
        if req.from_workspace is not None and workspace_options is None:
            raise OptionsRefused(f"you have no workspace named {req.from_workspace!r}")
        # The checks a workspace's options get (Portal), on what the job asks or inherits.
        image = portal.checked_image(req.image or inherited.get("image"))
        pool = req.pool or self.default_pool
        if pool not in cfg.pools:
            raise OptionsRefused(f"unknown pool {pool!r}; choose one of: {', '.join(cfg.pools)}")
        team = portal.team_for(user, groups)
        teams = cfg.teams_of(user, groups)
        names = [v.name for v in portal.checked_volumes(
            user, teams, req.volumes if req.volumes is not None else list(inherited.get("volumes") or []))]
        engine = self.backend.for_pool(pool)
        if not engine.as_person:
            try:
                as_person = self.portal.workspace_account(user) is not None
            except ValueError:
                as_person = True  # people are accounts here, and this one has none: no job as the portal
            if as_person:
                # Where people are their cluster accounts, no job of theirs runs as the portal's.
                raise OptionsRefused(f"pool {pool}'s jobs would run as the portal's own account, not as you: "
                                     "submit to a pool on Slurm")
        if req.nodes > 1 and not engine.multi_node:
            raise OptionsRefused(f"the {engine.name} backend runs a job on one machine: ask for nodes: 1 "
                                 f"(and up to {portal.capacity.most_gpus_per_node(pool)} GPUs on it)")
        total = req.gpus_per_node * req.nodes
        quota = portal.quota_for(team)
        if total > quota.job_gpus and not engine.enforces_job_quota:
            who = f"team {team}" if team else "users without a team"
            raise OptionsRefused(f"{who} may use at most {quota.job_gpus} job GPUs at once; this job asks for "
                                 + (f"{req.gpus_per_node} × {req.nodes} nodes = {total}" if req.nodes > 1 else str(total)))
        # What the engine would reject outright, in its words (Slurm: an unknown account or
        # partition), before podbay's own view of the pool's size.
        try:
            engine.check_submit(team=team, pool=pool, gpus_per_node=req.gpus_per_node, nodes=req.nodes, user=user,
                                      time_limit=req.time_limit)
        except ValueError as e:
            raise OptionsRefused(str(e)) from None
        most = portal.capacity.most_gpus_per_node(pool)
        if req.gpus_per_node > most:
            raise OptionsRefused(f"pool {pool} has at most {most} whole GPUs on one node; "
                                 f"this job asks for {req.gpus_per_node}")
        try:
            home = self.home_of(user, pool)  # the person's cluster home where jobs run as them
        except ValueError as e:
            raise OptionsRefused(str(e)) from None
        rel = Path(req.workdir or ".")
        if rel.is_absolute() or ".." in rel.parts:
            raise OptionsRefused("workdir must be a path inside your home directory, like projects/resnet")
        workdir = home / rel
        if engine.host_homes:
            if req.workdir and not workdir.is_dir():
                raise OptionsRefused(f"working directory ~/{rel} does not exist")
            workdir.mkdir(parents=True, exist_ok=True)
        now = self.clock()
        row = JobRow(
            name=req.name, user=user, team=team, image=image.name, command=json.dumps(req.command),
            workdir=str(workdir), volumes=json.dumps(names), env=json.dumps(req.env), gpus_per_node=req.gpus_per_node,
            nodes=req.nodes, pool=pool, from_workspace=req.from_workspace, state="queued", time_limit=req.time_limit,
            message="waiting for the scheduler", devices="[]", created=now, ref="{}",
        )
        job = self.store.add(row)
        self.scheduler.wake()
        return job

    # --- reading -------------------------------------------------------------------------

    def get(self, job_id: int) -> Job | None:
        return self.store.get(job_id)

    def list(self, user: str | None = None, team: str | None = None, state: str | None = None,
             limit: int | None = 500) -> list[Job]:
        """Jobs, newest first; `queued` includes those an engine holds."""
        return self.store.list(user, team, state, limit)

    async def read_logs(self, job_id: int, cursor: str | None = None) -> tuple[bytes, str | None]:
        """Output from `cursor` on (None: from the start), and the cursor to continue from.
        The cursor is the backend's own (a byte offset for files); callers only hand it back."""
        ref = await self.store.job_ref(job_id)
        if not ref:
            return b"", None  # not started: nothing yet, and the next read starts at the start
        job = await asyncio.to_thread(self.get, job_id)
        return await self.backend.for_pool(job.pool).read_logs(ref, cursor)

    async def follow_logs(self, job_id: int, first: tuple[bytes, str | None],
                          interval: float = 0.2) -> AsyncIterator[bytes]:
        """Output as it comes, from a first read on (made by the caller, so that a bad cursor is
        refused before a stream starts), until the job has ended and all of it is read."""
        chunk, cursor = first
        while True:
            if chunk:
                yield chunk
            # Read whether it had ended before reading on, so no output after the end is lost.
            done = (await asyncio.to_thread(self.get, job_id)).state in TERMINAL
            chunk, cursor = await self.read_logs(job_id, cursor)
            if not chunk and done:
                return
            if not chunk:
                await asyncio.sleep(interval)

    # --- the scheduler's, for the service ----------------------------------------------

    async def cancel(self, job_id: int) -> Job | None:
        return await self.scheduler.cancel(job_id)

    async def reconcile(self) -> None:
        await self.scheduler.reconcile()

    async def tick(self) -> None:
        await self.scheduler.tick()

    async def run(self, interval: float = 0.5) -> None:
        await self.scheduler.run(interval)
