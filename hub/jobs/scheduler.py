"""The scheduler: what starts a job, follows it, and ends it.

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

It runs on the service's event loop; every database read and write goes through the
store's async forms, in threads.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path

from ..config import ProfileKind
from ..environment import job_env
from ..portal import Portal
from ..quota import ClaimRefused, Demand, NoCapacity, QuotaExceeded
from ..training import BackendStatus, BackendUnavailable, JobSpec, TrainingBackend
from .model import PENDING, TERMINAL, Job
from .store import JobStore

log = logging.getLogger("podbay.jobs")


class Scheduler:
    def __init__(self, portal: Portal, backend: TrainingBackend, store: JobStore,
                 home_of: Callable[[str, str | None], Path], clock=time.time):
        self.portal = portal
        self.backend = backend
        self.store = store
        self.home_of = home_of
        self.clock = clock
        self._lock = asyncio.Lock()
        # Engines whose jobs a restart could not reconcile yet (out of reach then).
        self._unreconciled: set[int] = set()
        # Jobs being stopped by cancel (outside the lock): their futures end with the stop.
        self.cancelling: dict[int, asyncio.Future] = {}
        self.wakeup = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    def wake(self) -> None:
        """Run a tick soon; callable from any thread (a submission is stored in a worker
        thread, and asyncio's Event is not thread-safe)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return  # no scheduler runs (tests tick by hand; PODBAY_PAUSE_JOBS)
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self.wakeup.set()
        else:
            loop.call_soon_threadsafe(self.wakeup.set)

    async def _release(self, job_id: int) -> None:
        await asyncio.to_thread(self.portal.book.release, f"job:{job_id}")

    def _demand(self, job: Job) -> Demand:
        spec = ProfileKind("full", count=job.gpus_per_node) if job.gpus_per_node else ProfileKind("cpu")
        return Demand(f"gpu-{job.gpus_per_node}" + (f"×{job.nodes}" if job.nodes > 1 else ""), spec,
                      (job.pool,), gpus=job.gpus)

    # --- cancelling ----------------------------------------------------------------------

    async def cancel(self, job_id: int) -> Job:
        async with self._lock:
            job = await self.store.job(job_id)
            if job is None or job.state in TERMINAL:
                return job
            stored = (await self.store.stored_states([job_id]))[job_id]
            if stored == "queued":
                # Only podbay holds it: nothing runs, and under the lock the scheduler cannot
                # start it now.
                await self.store.update(job_id, state="cancelled", finished=self.clock(), message="cancelled by request")
                self.wakeup.set()
                return await self.store.job(job_id)
            stopping = self.cancelling.get(job_id)
            if stopping is None:
                ref = await self.store.job_ref(job_id)
                self.cancelling[job_id] = asyncio.get_running_loop().create_future()
            else:
                ref = None  # another request is stopping it: wait for that one
        if ref is None:
            await asyncio.shield(stopping)  # the first cancel's failure is this one's too
            return await self.store.job(job_id)
        # The stop itself (SIGTERM, the grace period, SIGKILL; or the engine taking back a
        # job it holds) runs outside the scheduler's lock: other jobs start and end
        # meanwhile. The scheduler leaves this one alone until cancel has recorded how it
        # ended, or failed, whatever happens here.
        failure: BaseException | None = None
        try:
            engine = self.backend.for_pool(job.pool)
            await engine.cancel(ref)
            status = await engine.status(ref)
            code = status.exit_code if status.state == "exited" else None
            async with self._lock:
                await self.store.update(job_id, state="cancelled", exit_code=code, finished=self.clock(),
                                   message="cancelled by request")
                await self._release(job_id)
        except BaseException as e:
            failure = e
            raise
        finally:
            done = self.cancelling.pop(job_id)
            if failure is None:
                done.set_result(None)
            else:
                done.set_exception(failure if isinstance(failure, Exception) else RuntimeError("cancel interrupted"))
                done.exception()  # retrieved here: a lone cancel has nobody else waiting on it
            self.wakeup.set()
        return await self.store.job(job_id)

    # --- scheduling ----------------------------------------------------------------------

    async def reconcile(self) -> None:
        """After a (re)start: learn what happened to the jobs the service believed active.
        An engine out of reach is asked again at each tick until it answers; the others'
        jobs go on meanwhile."""
        async with self._lock:
            await self._reconcile(None)

    async def _reconcile(self, only: set[int] | None) -> None:
        active = await self.store.in_state("starting") + await self.store.in_state(PENDING) + await self.store.in_state("running")
        if only is not None:
            active = [j for j in active if id(self.backend.for_pool(j.pool)) in only]
        statuses = {}
        for engine in {id(self.backend.for_pool(j.pool)): self.backend.for_pool(j.pool) for j in active}.values():
            try:
                statuses |= await engine.reconcile({job.id: await self.store.job_ref(job.id) for job in active
                                                    if self.backend.for_pool(job.pool) is engine})
            except BackendUnavailable as e:
                log.warning("the %s engine is out of reach (%s): its jobs are reconciled when it answers", engine.name, e)
                self._unreconciled.add(id(engine))
            else:
                self._unreconciled.discard(id(engine))
        stored = await self.store.stored_states([j.id for j in active])
        for job in active:
            if job.id not in statuses:
                continue  # its engine did not answer: as it was
            status = statuses[job.id]
            if status.state == "exited":
                await self._finish(job, status.exit_code, status.message)
            elif status.state in ("running", "pending"):
                await self._follow_engine(job, stored[job.id], status)
            elif stored[job.id] == "starting":
                # It never started: queue it again, with its place in line.
                await self._release(job.id)
                await self.store.update(job.id, state="queued", devices=[], ref={}, message="requeued after a restart")
            else:
                await self._release(job.id)
                await self.store.update(job.id, state="failed", finished=self.clock(), message=status.message)
        # Claims of jobs that are not active any more (a crash between the two writes).
        active = {f"job:{j.id}" for j in await self.store.in_state("running") + await self.store.in_state("starting")}
        await asyncio.to_thread(self.portal.book.reconcile, lambda a: a.key in active, ("job",))

    async def _finish(self, job: Job, code: int | None, message: str = "") -> None:
        state = "succeeded" if code == 0 else "failed"
        message = "finished" if code == 0 else (message or f"exited with code {code}")
        await self.store.update(job.id, state=state, exit_code=code, finished=self.clock(), message=message)
        await self._release(job.id)

    async def _follow_engine(self, job: Job, stored: str, status: BackendStatus) -> None:
        """A job the engine runs or holds (stored starting, pending or running): record what
        it says."""
        engine = self.backend.for_pool(job.pool)
        if status.state == "pending" and not engine.queues_jobs:
            # An engine with no queue of its own still starting what podbay placed (an image
            # being pulled): it is running as far as podbay's queue goes, and keeps its devices.
            status = BackendStatus("running", message=status.message)
        if status.state == "running":
            if engine.queues_jobs and stored != "running":
                # From now on it holds GPUs: the quota book shows them. The engine's own
                # quota (Kueue's ClusterQueue, Slurm's QOS) decided it may run.
                ref = engine.usage_ref(await self.store.job_ref(job.id))
                await asyncio.to_thread(
                    self.portal.book.claim, key=f"job:{job.id}", kind="job", user=job.user, team=job.team,
                    demand=self._demand(job), quota=self.portal.quota_for(job.team), enforce_job_quota=False,
                    replace=True, ref=ref)
            if stored != "running":
                await self.store.update(job.id, state="running", started=job.started or self.clock(), message="running")
        elif status.state == "pending":
            message = f"queued in {engine.name}: {status.message or 'waiting for the engine'}"
            if stored != PENDING:
                # Running: taken back by the engine (preempted, requeued). Starting: handed
                # over just before the service stopped. Either way it holds nothing now.
                await self._release(job.id)
                await self.store.update(job.id, state=PENDING, message=message)
                return
            if await asyncio.to_thread(self.portal.book.get, f"job:{job.id}") is not None:
                await self._release(job.id)  # claimed as it ran, but the service stopped before recording it
            if job.message != message:
                await self.store.update(job.id, message=message)

    async def tick(self) -> None:
        async with self._lock:
            if self._unreconciled:
                await self._reconcile(set(self._unreconciled))
            # Engines that queue get new jobs first, so this tick already shows their reason;
            # once one cannot be reached, its others wait for the next tick.
            unreachable: set[int] = set(self._unreconciled)
            for job in reversed(await self.store.in_state("queued")):
                engine = self.backend.for_pool(job.pool)
                if engine.queues_jobs and id(engine) not in unreachable and not await self._hand_over(job):
                    unreachable.add(id(engine))
            for stored in ("running", PENDING):
                for job in await self.store.in_state(stored):
                    engine = self.backend.for_pool(job.pool)
                    if job.id in self.cancelling or id(engine) in unreachable:
                        continue  # cancel records how it ended; an engine out of reach, when it is back
                    try:
                        status = await engine.status(await self.store.job_ref(job.id))
                    except BackendUnavailable:
                        # Its jobs stay as they were until it is back; other engines' go on.
                        unreachable.add(id(engine))
                        continue
                    except Exception:
                        # One job the engine cannot answer for does not stop the others.
                        log.exception("could not read the state of job %s; trying again", job.id)
                        continue
                    if status.state == "exited":
                        await self._finish(job, status.exit_code, status.message)
                    elif status.state == "lost":
                        await self._release(job.id)
                        await self.store.update(job.id, state="failed", finished=self.clock(), message=status.message)
                    else:
                        await self._follow_engine(job, stored, status)
            # Where only podbay queues: in submission order, devices freed above already free.
            blocked: set[str] = set()
            for job in reversed(await self.store.in_state("queued")):
                engine = self.backend.for_pool(job.pool)
                if engine.queues_jobs or id(engine) in unreachable:
                    continue
                if job.pool in blocked:
                    await self._set_message(job, f"waiting for earlier jobs in pool {job.pool}")
                    continue
                await self._try_start(job, blocked)

    async def _set_message(self, job: Job, message: str) -> None:
        if job.message != message:
            await self.store.update(job.id, message=message)

    def _spec(self, job: Job, devices: list[str] | None) -> JobSpec:
        """What the backend runs: the job's request, its mounts and its environment."""
        engine = self.backend.for_pool(job.pool)
        vols = []
        for name in job.volumes:
            vol = self.portal.cfg.volume(name)
            if vol is not None:
                vols.append((engine.mount_source(vol, self.portal.volume_source(vol)),
                             str(self.home_of(job.user, job.pool) / vol.target), vol.read_only))
        # The image's and the team's settings and the person's secrets, the job's own env over them.
        apart = engine.secrets_apart
        settings = self.portal.settings_env(job.user, job.team, job.image, with_secrets=not apart)
        env = job_env(job_id=job.id, name=job.name, image=job.image, team=job.team, volumes=job.volumes,
                      devices=devices, gpus=job.gpus, home=str(self.home_of(job.user, job.pool)),
                      user_env={**settings, **job.env})
        pool = self.portal.cfg.pools.get(job.pool)
        return JobSpec(id=job.id, name=job.name, user=job.user, image=job.image, command=job.command,
                       workdir=job.workdir, env=env, volumes=vols, devices=list(devices or []),
                       workspace=job.from_workspace, gpus_per_node=job.gpus_per_node, nodes=job.nodes,
                       pool=job.pool, queue=engine.queue_of(job.pool) or (pool.queue if pool else None),
                       team=job.team, time_limit=job.time_limit, created=job.created,
                       volume_names=list(job.volumes), secrets=self.portal.secrets.values(job.user) if apart else {})

    async def _hand_over(self, job: Job) -> bool:
        """An engine that queues gets the job at once: podbay does not queue it again.

        It is `starting` while handed over: a service that stops in between finds it that way
        and asks the engine (by the job's id) whether it got it, rather than handing it over
        twice."""
        await self.store.update(job.id, state="starting", ref={"job_id": job.id, "created": job.created, "user": job.user},
                                message=f"handing over to {self.backend.for_pool(job.pool).name}")
        try:
            ref = await self.backend.for_pool(job.pool).submit(self._spec(job, None))
        except BackendUnavailable as e:
            await self.store.update(job.id, state="queued", ref={}, message=f"waiting: {e}")
            return False
        except Exception as e:
            log.exception("job %s was not accepted", job.id)
            await self.store.update(job.id, state="failed", finished=self.clock(), message=f"not accepted: {e}")
            return True
        await self.store.update(job.id, state=PENDING, ref={**ref, "job_id": job.id, "created": job.created},
                                message=f"queued in {self.backend.for_pool(job.pool).name}: submitted")
        return True

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
            await self.store.update(job.id, state="failed", finished=self.clock(), message=str(e))
            return
        devices = list(alloc.devices) if self.portal.places_devices else None
        await self.store.update(job.id, state="starting", devices=list(alloc.devices), ref={"job_id": job.id},
                           message="starting")
        try:
            ref = await self.backend.for_pool(job.pool).submit(self._spec(job, devices))
        except BackendUnavailable as e:
            # Keep its place in line; nothing ran, so nothing is lost by trying again.
            await self._release(job.id)
            await self.store.update(job.id, state="queued", devices=[], ref={}, message=f"waiting: {e}")
            blocked.add(job.pool)
            return
        except Exception as e:
            log.exception("job %s could not start", job.id)
            await self._release(job.id)
            await self.store.update(job.id, state="failed", finished=self.clock(), message=f"could not start: {e}")
            return
        await self.store.update(job.id, state="running", ref={**ref, "job_id": job.id}, started=self.clock(),
                           message="running")

    async def run(self, interval: float = 0.5) -> None:
        """The scheduler: a tick on every submission or cancellation, and every interval."""
        self._loop = asyncio.get_running_loop()
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
