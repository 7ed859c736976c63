"""Training jobs: validation, the queue, and the scheduler that starts them in order.

A job asks for `gpus_per_node` whole GPUs on each of `nodes` nodes of a pool.

Where the backend has no scheduler of its own (local, docker), podbay queues: a job waits
`queued` while its pool lacks free GPUs or its team is at its job quota, and starts in
submission order as devices free up; the first job that does not fit blocks later ones in
the same pool, so a big job is not starved by small ones. The devices a job holds are
claims in the same quota book as workspaces' (`job:<id>`), so a workspace and a job can
never share a device.

Where the backend queues itself (Kueue, Slurm: `TrainingBackend.queues_jobs`), podbay does
not queue twice: a job is handed to the engine at once and stays `pending` there (shown to
users as `queued`, with the engine's reason) until the engine runs it; the quota book
records its GPUs from then on.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import Float, Integer, String, Text, select
from sqlalchemy.orm import Mapped, mapped_column

from .config import ProfileKind
from .environment import job_env
from .portal import OptionsRefused, Portal
from .quota import ClaimRefused, Demand, NoCapacity, QuotaExceeded
from .quota.book import Base
from .training import BackendStatus, BackendUnavailable, JobSpec, TrainingBackend

log = logging.getLogger("podbay.jobs")

STATES = ("queued", "starting", "running", "succeeded", "failed", "cancelled")
ACTIVE = ("queued", "starting", "running")
# Handed to an engine that queues (Kueue, Slurm), not running yet: "queued" to users.
PENDING = "pending"
TERMINAL = ("succeeded", "failed", "cancelled")
JOB_POOL = "training"
RESERVED_ENV = re.compile(r"^(HOME|CUDA_VISIBLE_DEVICES|NVIDIA_VISIBLE_DEVICES|NVIDIA_.*|PODBAY_.*|JUPYTERHUB_.*)$")


class JobRow(Base):
    __tablename__ = "podbay_jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(63))
    user: Mapped[str] = mapped_column(String(255), index=True)
    team: Mapped[str | None] = mapped_column(String(255), index=True, nullable=True)
    image: Mapped[str] = mapped_column(String(255))
    command: Mapped[str] = mapped_column(Text)
    workdir: Mapped[str] = mapped_column(Text)
    volumes: Mapped[str] = mapped_column(Text, default="[]")
    env: Mapped[str] = mapped_column(Text, default="{}")
    # Per node; `nodes` of them.
    gpus: Mapped[int] = mapped_column(Integer)
    nodes: Mapped[int] = mapped_column(Integer, default=1)
    pool: Mapped[str] = mapped_column(String(64))
    from_workspace: Mapped[str | None] = mapped_column(String(255), nullable=True)
    state: Mapped[str] = mapped_column(String(16), index=True)
    exit_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    message: Mapped[str] = mapped_column(Text, default="")
    devices: Mapped[str] = mapped_column(Text, default="[]")
    created: Mapped[float] = mapped_column(Float)
    started: Mapped[float | None] = mapped_column(Float, nullable=True)
    finished: Mapped[float | None] = mapped_column(Float, nullable=True)
    ref: Mapped[str] = mapped_column(Text, default="{}")


NAME = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"


class JobRequest(BaseModel):
    """A training job as a client submits it."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME, description="lower-case letters, digits and '-', at most 63")
    command: list[str] = Field(min_length=1, max_length=1000, description="argv, e.g. [\"python\", \"train.py\"]")
    gpus_per_node: int = Field(default=1, ge=0, le=1024, validation_alias=AliasChoices("gpus_per_node", "gpus"),
                               description="whole GPUs on each node (`gpus` is accepted as well)")
    nodes: int = Field(default=1, ge=1, le=1024, description="how many nodes the job spans")
    pool: str | None = Field(default=None, max_length=64, description="the pool to run in (default: training)")
    image: str | None = None
    workdir: str | None = Field(default=None, max_length=4096, description="relative to the home directory")
    volumes: list[str] | None = Field(default=None, max_length=64)
    env: dict[str, str] = Field(default_factory=dict, max_length=256)
    from_workspace: str | None = Field(default=None, max_length=255,
                                       description="take image, volumes and working directory from this workspace")

    @field_validator("command")
    @classmethod
    def _command(cls, v: list[str]) -> list[str]:
        if not v[0].strip():
            raise ValueError("the program (the command's first item) is empty")
        if any("\0" in a for a in v):
            raise ValueError("command items may not contain NUL characters")
        return v

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        for key, value in v.items():
            if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key):
                raise ValueError(f"{key!r} is not a valid environment variable name")
            if RESERVED_ENV.match(key):
                raise ValueError(f"{key} is set by podbay and cannot be given")
            if "\0" in value:
                raise ValueError(f"the value of {key} contains a NUL character")
        return v


class Job(BaseModel):
    """A training job as the service returns it (also its OpenAPI schema)."""

    model_config = ConfigDict(frozen=True)

    id: int
    name: str
    user: str
    team: str | None
    image: str
    command: list[str]
    workdir: str
    volumes: list[str]
    env: dict[str, str]
    gpus: int = Field(description="whole GPUs in all: gpus_per_node × nodes")
    gpus_per_node: int
    nodes: int
    pool: str
    from_workspace: str | None
    state: str = Field(description="queued (also while the engine holds it), starting, running, "
                                    "succeeded, failed or cancelled")
    exit_code: int | None
    message: str = Field(description="what it waits for, or how it ended: the engine's reason where it queues")
    devices: list[str]
    created: float
    started: float | None
    finished: float | None

    @classmethod
    def from_row(cls, r: JobRow) -> "Job":
        nodes = r.nodes or 1
        return cls(id=r.id, name=r.name, user=r.user, team=r.team, image=r.image, command=json.loads(r.command),
                   workdir=r.workdir, volumes=json.loads(r.volumes), env=json.loads(r.env), gpus=r.gpus * nodes,
                   gpus_per_node=r.gpus, nodes=nodes, pool=r.pool, from_workspace=r.from_workspace,
                   state="queued" if r.state == PENDING else r.state, exit_code=r.exit_code,
                   message=r.message, devices=json.loads(r.devices), created=r.created, started=r.started,
                   finished=r.finished)


class JobManager:
    def __init__(self, portal: Portal, backend: TrainingBackend, clock=time.time):
        self.portal = portal
        self.backend = backend
        self.clock = clock
        self._write = portal.book.write_session
        self._read = portal.book.read_session
        self._tick_lock = asyncio.Lock()
        # Jobs being stopped by cancel (outside the lock): their futures end with the stop.
        self._cancelling: dict[int, asyncio.Future] = {}
        self.wakeup = asyncio.Event()

    @property
    def default_pool(self) -> str:
        return JOB_POOL if JOB_POOL in self.portal.cfg.pools else next(iter(self.portal.cfg.pools))

    def home_of(self, user: str) -> Path:
        """The home jobs work in: podbay's directory (local), or where the backend mounts it."""
        return self.backend.home_of(user) or self.portal.data_dir / "homes" / user

    # --- submitting --------------------------------------------------------------------

    def submit(self, user: str, groups: list[str], req: JobRequest,
               workspace_options: dict[str, Any] | None = None) -> Job:
        """Validate and queue a job; raise OptionsRefused with the reason if it can't be."""
        portal, cfg = self.portal, self.portal.cfg
        inherited = workspace_options or {}
        if req.from_workspace is not None and workspace_options is None:
            raise OptionsRefused(f"you have no workspace named {req.from_workspace!r}")
        image_name = req.image or inherited.get("image") or cfg.default_image.name
        image = cfg.image(image_name)
        if image is None:
            raise OptionsRefused(f"unknown image {image_name!r}; choose one of: "
                                 + ", ".join(i.name for i in cfg.images))
        pool = req.pool or self.default_pool
        if pool not in cfg.pools:
            raise OptionsRefused(f"unknown pool {pool!r}; choose one of: {', '.join(cfg.pools)}")
        team = portal.team_for(user, groups)
        teams = cfg.teams_of(user, groups)
        names = req.volumes if req.volumes is not None else list(inherited.get("volumes") or [])
        for name in names:
            vol = cfg.volume(name)
            if vol is None:
                raise OptionsRefused(f"unknown volume {name!r}")
            if not portal.may_mount(vol, user, teams):
                raise OptionsRefused(f"you may not mount volume {name!r}")
        if req.nodes > 1 and not self.backend.multi_node:
            raise OptionsRefused(f"the {self.backend.name} backend runs a job on one machine: ask for nodes: 1 "
                                 f"(and up to {portal.capacity.most_gpus_per_node(pool)} GPUs on it)")
        total = req.gpus_per_node * req.nodes
        quota = portal.quota_for(team)
        if total > quota.job_gpus:
            who = f"team {team}" if team else "users without a team"
            raise OptionsRefused(f"{who} may use at most {quota.job_gpus} job GPUs at once; this job asks for "
                                 + (f"{req.gpus_per_node} × {req.nodes} nodes = {total}" if req.nodes > 1 else str(total)))
        most = portal.capacity.most_gpus_per_node(pool)
        if req.gpus_per_node > most:
            raise OptionsRefused(f"pool {pool} has at most {most} whole GPUs on one node; "
                                 f"this job asks for {req.gpus_per_node}")
        home = self.home_of(user)
        rel = Path(req.workdir or ".")
        if rel.is_absolute() or ".." in rel.parts:
            raise OptionsRefused("workdir must be a path inside your home directory, like projects/resnet")
        workdir = home / rel
        if self.backend.host_homes:
            if req.workdir and not workdir.is_dir():
                raise OptionsRefused(f"working directory ~/{rel} does not exist")
            workdir.mkdir(parents=True, exist_ok=True)
        now = self.clock()
        row = JobRow(
            name=req.name, user=user, team=team, image=image.name, command=json.dumps(req.command),
            workdir=str(workdir), volumes=json.dumps(names), env=json.dumps(req.env), gpus=req.gpus_per_node,
            nodes=req.nodes, pool=pool, from_workspace=req.from_workspace, state="queued",
            message="waiting for the scheduler", devices="[]", created=now, ref="{}",
        )
        with self._write() as s, s.begin():
            s.add(row)
            s.flush()
            job = Job.from_row(row)
        self.wakeup.set()
        return job

    # --- reading -------------------------------------------------------------------------

    def get(self, job_id: int) -> Job | None:
        with self._read() as s:
            row = s.get(JobRow, job_id)
            return Job.from_row(row) if row else None

    def _states(self, job_ids: list[int]) -> dict[int, str]:
        """The stored states, where `pending` is not yet folded into `queued`."""
        with self._read() as s:
            return dict(s.execute(select(JobRow.id, JobRow.state).where(JobRow.id.in_(job_ids))).all())

    def list(self, user: str | None = None, team: str | None = None, state: str | None = None,
             limit: int | None = 500, *, stored: bool = False) -> list[Job]:
        """Jobs, newest first. `state` is what users see (`queued` includes the engine's
        pending jobs), or, with `stored`, the state as stored."""
        with self._read() as s:
            q = select(JobRow)
            if user:
                q = q.where(JobRow.user == user)
            if team:
                q = q.where(JobRow.team == team)
            if state == "queued" and not stored:
                q = q.where(JobRow.state.in_(("queued", PENDING)))
            elif state:
                q = q.where(JobRow.state == state)
            q = q.order_by(JobRow.id.desc())
            return [Job.from_row(r) for r in s.scalars(q.limit(limit) if limit else q)]

    def _ref(self, job_id: int) -> dict:
        with self._read() as s:
            row = s.get(JobRow, job_id)
            return json.loads(row.ref) if row else {}

    async def read_logs(self, job_id: int, cursor: str | None = None) -> tuple[bytes, str | None]:
        """Output from `cursor` on (None: from the start), and the cursor to continue from.
        The cursor is the backend's own (a byte offset for files); callers only hand it back."""
        ref = await asyncio.to_thread(self._ref, job_id)
        if not ref:
            return b"", cursor
        return await self.backend.read_logs(ref, cursor)

    def _write_fields(self, job_id: int, **values) -> None:
        with self._write() as s, s.begin():
            row = s.get(JobRow, job_id)
            for k, v in values.items():
                setattr(row, k, json.dumps(v) if k in ("ref", "devices") else v)

    # The scheduler and cancel run on the service's event loop: their database reads and
    # writes go to threads, so that a write waiting for the database's lock (SQLite's busy
    # timeout is 30 s) stalls no other request.

    async def _update(self, job_id: int, **values) -> None:
        await asyncio.to_thread(self._write_fields, job_id, **values)

    async def _jobs(self, state: str) -> list[Job]:
        """Jobs in a stored state, oldest last (as list returns them)."""
        return await asyncio.to_thread(lambda: self.list(None, None, state, None, stored=True))

    async def _job(self, job_id: int) -> Job | None:
        return await asyncio.to_thread(self.get, job_id)

    async def _job_ref(self, job_id: int) -> dict:
        return await asyncio.to_thread(self._ref, job_id)

    async def _release(self, job_id: int) -> None:
        await asyncio.to_thread(self.portal.book.release, f"job:{job_id}")

    def _demand(self, job: Job) -> Demand:
        spec = ProfileKind("full", count=job.gpus_per_node) if job.gpus_per_node else ProfileKind("cpu")
        return Demand(f"gpu-{job.gpus_per_node}" + (f"×{job.nodes}" if job.nodes > 1 else ""), spec,
                      (job.pool,), gpus=job.gpus)

    # --- cancelling ----------------------------------------------------------------------

    async def cancel(self, job_id: int) -> Job:
        async with self._tick_lock:
            job = await self._job(job_id)
            if job is None or job.state in TERMINAL:
                return job
            stored = (await asyncio.to_thread(self._states, [job_id]))[job_id]
            if stored == "queued":
                # Only podbay holds it: nothing runs, and under the lock the scheduler cannot
                # start it now.
                await self._update(job_id, state="cancelled", finished=self.clock(), message="cancelled by request")
                self.wakeup.set()
                return await self._job(job_id)
            stopping = self._cancelling.get(job_id)
            if stopping is None:
                ref = await self._job_ref(job_id)
                self._cancelling[job_id] = asyncio.get_running_loop().create_future()
            else:
                ref = None  # another request is stopping it: wait for that one
        if ref is None:
            await asyncio.shield(stopping)  # the first cancel's failure is this one's too
            return await self._job(job_id)
        # The stop itself (SIGTERM, the grace period, SIGKILL; or the engine taking back a
        # job it holds) runs outside the scheduler's lock: other jobs start and end
        # meanwhile. The scheduler leaves this one alone until cancel has recorded how it
        # ended, or failed, whatever happens here.
        failure: BaseException | None = None
        try:
            await self.backend.cancel(ref)
            status = await self.backend.status(ref)
            code = status.exit_code if status.state == "exited" else None
            async with self._tick_lock:
                await self._update(job_id, state="cancelled", exit_code=code, finished=self.clock(),
                                   message="cancelled by request")
                await self._release(job_id)
        except BaseException as e:
            failure = e
            raise
        finally:
            done = self._cancelling.pop(job_id)
            if failure is None:
                done.set_result(None)
            else:
                done.set_exception(failure if isinstance(failure, Exception) else RuntimeError("cancel interrupted"))
                done.exception()  # retrieved here: a lone cancel has nobody else waiting on it
            self.wakeup.set()
        return await self._job(job_id)

    # --- scheduling ----------------------------------------------------------------------

    async def reconcile(self) -> None:
        """After a (re)start: learn what happened to the jobs the service believed active."""
        async with self._tick_lock:
            active = await self._jobs("starting") + await self._jobs(PENDING) + await self._jobs("running")
            statuses = await self.backend.reconcile({job.id: await self._job_ref(job.id) for job in active})
            stored = await asyncio.to_thread(self._states, [j.id for j in active])
            for job in active:
                status = statuses[job.id]
                if status.state == "exited":
                    await self._finish(job, status.exit_code)
                elif status.state in ("running", "pending"):
                    await self._follow_engine(job, stored[job.id], status)
                elif stored[job.id] == "starting":
                    # It never started: queue it again, with its place in line.
                    await self._release(job.id)
                    await self._update(job.id, state="queued", devices=[], ref={}, message="requeued after a restart")
                else:
                    await self._release(job.id)
                    await self._update(job.id, state="failed", finished=self.clock(), message=status.message)
            # Claims of jobs that are not active any more (a crash between the two writes).
            active = {f"job:{j.id}" for j in await self._jobs("running") + await self._jobs("starting")}
            await asyncio.to_thread(self.portal.book.reconcile, lambda a: a.key in active, ("job",))

    async def _finish(self, job: Job, code: int | None) -> None:
        state = "succeeded" if code == 0 else "failed"
        message = "finished" if code == 0 else f"exited with code {code}"
        await self._update(job.id, state=state, exit_code=code, finished=self.clock(), message=message)
        await self._release(job.id)

    async def _follow_engine(self, job: Job, stored: str, status: BackendStatus) -> None:
        """A job the engine runs or holds: record what it says."""
        if status.state == "running":
            if stored != "running":
                if stored == PENDING:
                    # From now on it holds GPUs: the quota book shows them. The engine's own
                    # quota (Kueue's ClusterQueue, Slurm's QOS) decided it may run.
                    await asyncio.to_thread(
                        self.portal.book.claim, key=f"job:{job.id}", kind="job", user=job.user, team=job.team,
                        demand=self._demand(job), quota=self.portal.quota_for(job.team), enforce_job_quota=False,
                        replace=True)
                await self._update(job.id, state="running", started=job.started or self.clock(), message="running")
        elif status.state == "pending":
            message = f"queued in {self.backend.name}: {status.message or 'waiting for the engine'}"
            if stored == "running":
                # Taken back by the engine (preempted, requeued): it holds nothing now.
                await self._release(job.id)
                await self._update(job.id, state=PENDING, message=message)
            elif job.message != message:
                await self._update(job.id, message=message)

    async def tick(self) -> None:
        async with self._tick_lock:
            if self.backend.queues_jobs:
                # The engine gets new jobs first, so this tick already shows its reason.
                for job in reversed(await self._jobs("queued")):
                    await self._hand_over(job)
            for stored in ("running", PENDING):
                for job in await self._jobs(stored):
                    if job.id in self._cancelling:
                        continue  # cancel records how it ended
                    status = await self.backend.status(await self._job_ref(job.id))
                    if status.state == "exited":
                        await self._finish(job, status.exit_code)
                    elif status.state == "lost":
                        await self._release(job.id)
                        await self._update(job.id, state="failed", finished=self.clock(), message=status.message)
                    else:
                        await self._follow_engine(job, stored, status)
            if self.backend.queues_jobs:
                return
            # Only podbay queues: in submission order, devices freed above already free.
            blocked: set[str] = set()
            for job in reversed(await self._jobs("queued")):
                if job.pool in blocked:
                    await self._set_message(job, f"waiting for earlier jobs in pool {job.pool}")
                    continue
                await self._try_start(job, blocked)

    async def _set_message(self, job: Job, message: str) -> None:
        if job.message != message:
            await self._update(job.id, message=message)

    def _spec(self, job: Job, devices: list[str] | None) -> JobSpec:
        """What the backend runs: the job's request, its mounts and its environment."""
        vols = []
        for name in job.volumes:
            vol = self.portal.cfg.volume(name)
            if vol is not None:
                vols.append((self.backend.mount_source(vol, str(self.portal.volume_source(vol))),
                             str(self.home_of(job.user) / vol.target), vol.read_only))
        env = job_env(job_id=job.id, name=job.name, image=job.image, team=job.team, volumes=job.volumes,
                      devices=devices, gpus=job.gpus, home=str(self.home_of(job.user)), user_env=job.env)
        pool = self.portal.cfg.pools.get(job.pool)
        return JobSpec(id=job.id, name=job.name, user=job.user, image=job.image, command=job.command,
                       workdir=job.workdir, env=env, volumes=vols, devices=list(devices or []),
                       workspace=job.from_workspace, gpus_per_node=job.gpus_per_node, nodes=job.nodes,
                       pool=job.pool, queue=pool.queue if pool else None)

    async def _hand_over(self, job: Job) -> None:
        """An engine that queues gets the job at once: podbay does not queue it again."""
        try:
            ref = await self.backend.submit(self._spec(job, None))
        except BackendUnavailable as e:
            await self._set_message(job, f"waiting: {e}")
            return
        except Exception as e:
            log.exception("job %s was not accepted", job.id)
            await self._update(job.id, state="failed", finished=self.clock(), message=f"not accepted: {e}")
            return
        await self._update(job.id, state=PENDING, ref={**ref, "job_id": job.id},
                           message=f"queued in {self.backend.name}: submitted")

    async def _try_start(self, job: Job, blocked: set[str]) -> None:
        try:
            alloc = await asyncio.to_thread(
                self.portal.claim, key=f"job:{job.id}", kind="job", user=job.user, team=job.team,
                demand=self._demand(job), quota=self.portal.quota_for(job.team))
        except QuotaExceeded as e:
            await self._set_message(job, f"waiting: {e}")
            return
        except NoCapacity:
            blocked.add(job.pool)
            await self._set_message(job, f"waiting for {job.gpus} free GPUs in pool {job.pool}")
            return
        except ClaimRefused as e:
            await self._update(job.id, state="failed", finished=self.clock(), message=str(e))
            return
        devices = list(alloc.devices) if self.portal.places_devices else None
        await self._update(job.id, state="starting", devices=list(alloc.devices), ref={"job_id": job.id},
                           message="starting")
        try:
            ref = await self.backend.submit(self._spec(job, devices))
        except BackendUnavailable as e:
            # Keep its place in line; nothing ran, so nothing is lost by trying again.
            await self._release(job.id)
            await self._update(job.id, state="queued", devices=[], ref={}, message=f"waiting: {e}")
            blocked.add(job.pool)
            return
        except Exception as e:
            log.exception("job %s could not start", job.id)
            await self._release(job.id)
            await self._update(job.id, state="failed", finished=self.clock(), message=f"could not start: {e}")
            return
        await self._update(job.id, state="running", ref={**ref, "job_id": job.id}, started=self.clock(),
                           message="running")

    async def run(self, interval: float = 0.5) -> None:
        """The scheduler: a tick on every submission or cancellation, and every interval."""
        await self.reconcile()
        while True:
            try:
                await self.tick()
            except Exception:
                log.exception("scheduler tick failed; trying again")
            self.wakeup.clear()
            try:
                await asyncio.wait_for(self.wakeup.wait(), interval)
            except asyncio.TimeoutError:
                pass
