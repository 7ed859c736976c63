"""Training-pool backends: where a job runs.

The interface is deliberately small, so docker, kubernetes and slurm can implement it:
`submit` hands a job to the engine (on devices the quota book already placed, where podbay
places) and returns a reference (a JSON-able dict the backend can find the job by after a
restart); `status` says whether the engine still holds it (`pending`, with its reason),
runs it, or how it ended; `read_logs` returns output from an opaque cursor; `cancel` stops
it. What is engine-specific (pids, files, container ids, Slurm job ids) stays inside the
reference and the cursor.

A backend with a scheduler of its own (Kueue, Slurm) sets `queues_jobs`: podbay then hands
it every job at once instead of queueing them itself. One that can run a job across
machines sets `multi_node`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal


class BackendUnavailable(RuntimeError):
    """The backend cannot be reached now (its engine is down): the job waits, it is not failed."""


@dataclass(frozen=True)
class JobSpec:
    """What a backend needs to run one job."""

    id: int
    name: str
    user: str
    image: str
    command: list[str]
    workdir: str
    # Everything the job sees from podbay and its user (environment.job_env): backends add
    # only what their own runtime needs (PATH for a process, nothing for a container).
    env: dict[str, str] = field(repr=False)
    volumes: list[tuple[str, str, bool]] = field(default_factory=list)  # (source, target, read_only)
    devices: list[str] = field(default_factory=list)
    # The workspace it was moved from, if any (its home may be that workspace's own).
    workspace: str | None = None
    gpus_per_node: int = 0
    nodes: int = 1
    pool: str = ""
    # The engine's queue or partition for the pool (podbay.yaml's pools.<name>.queue).
    queue: str | None = None
    team: str | None = None
    # The catalog volumes by name, for engines that mount them by their own means (PVCs).
    volume_names: list[str] = field(default_factory=list)
    # The person's secrets, for a backend that hands them over its own way (secrets_apart:
    # a Kubernetes Secret); elsewhere they are in `env`.
    secrets: dict[str, str] = field(default_factory=dict, repr=False)
    # How long it may run (Slurm's format), where the engine limits time; None: its default.
    time_limit: str | None = None
    # When podbay made it (epoch seconds): an engine that finds jobs by name takes none older.
    created: float | None = None


@dataclass(frozen=True)
class BackendStatus:
    # pending: accepted by the engine, not running yet (`message` says why, in its words).
    state: Literal["pending", "running", "exited", "lost"]
    exit_code: int | None = None
    message: str = ""


class TrainingBackend(ABC):
    name: str
    # Whether users' homes are directories podbay sees (local), or live elsewhere (Docker
    # volumes), so that a job's workdir cannot be checked before it runs.
    host_homes: bool = True
    # Whether the engine queues jobs itself (podbay then does not) and spans machines.
    queues_jobs: bool = False
    multi_node: bool = False
    # Whether the engine enforces teams' job-GPU limits itself (Slurm's associations): podbay
    # then refuses no job for its own job_gpus quota, and the engine queues it.
    enforces_job_quota: bool = False
    # Whether the engine hands a person's secrets to their jobs its own way (a Kubernetes
    # Secret: sync_secrets), so that podbay leaves them out of the job's environment.
    secrets_apart: bool = False
    # Whether the engine runs each job as the person's own cluster account (slurm's run_as:
    # person), not as the service's.
    as_person: bool = False

    def check_submit(self, *, team: str | None, pool: str, gpus_per_node: int, nodes: int,
                     time_limit: str | None = None, user: str | None = None) -> None:
        """Refuse now, with the engine's words (raise ValueError), a job the engine would
        reject outright; an engine out of reach refuses nothing (the job waits for it).
        `user` submits it (an engine that runs jobs as the person checks as them). Called in
        a worker thread."""
        if time_limit is not None:
            raise ValueError(f"the {self.name} backend does not limit a job's time: leave time_limit out")

    async def team_limit(self, team: str | None) -> dict | None:
        """The team's job-GPU limit as the engine enforces it, and what it uses now; None
        where podbay's own quota is the limit."""
        return None

    def queue_of(self, pool: str) -> str | None:
        """The engine's queue for a pool, where the backend's settings say (Slurm's
        partitions); None: the pool's own `queue`."""
        return None

    def home_of(self, user: str) -> Path | None:
        """The user's home as the job sees it, when it is not podbay's own directory."""
        return None

    def mount_source(self, volume, path: Path | None) -> str:
        """What to mount for a catalog volume whose directory is `path` (None: it has none,
        and the config check made sure this backend does not need one)."""
        return str(path)

    @abstractmethod
    async def submit(self, job: JobSpec) -> dict:
        """Start the job (or hand it to the engine's queue); return its reference.

        A service that stopped during a submit calls it again for the same job id: it must
        not leave two copies running (name the engine's job after the id, as the docker
        backend names its container)."""

    @abstractmethod
    async def status(self, ref: dict) -> BackendStatus:
        """Whether the engine holds the job (pending), runs it, or how it ended. `ref` may
        hold only `job_id` (a submit interrupted before its reference was recorded): find
        the job by its id then, or answer lost."""

    @abstractmethod
    async def cancel(self, ref: dict) -> None:
        """Stop the job and everything it started."""

    @abstractmethod
    async def read_logs(self, ref: dict, cursor: str | None = None) -> tuple[bytes, str | None]:
        """The job's output (stdout and stderr) from `cursor` on (None: the start), and the
        cursor to read on from. Raise BadCursor for one this backend never gave out."""

    async def sync_secrets(self, user: str, values: dict[str, str]) -> None:
        """Bring the engine's copy of a person's secrets up to date (secrets_apart); nothing
        where podbay passes them in the job's environment."""

    async def aclose(self) -> None:
        """Let go of connections to the engine (the service is stopping)."""

    async def reconcile(self, refs: dict[int, dict]) -> dict[int, BackendStatus]:
        """After a restart: the status of every job the service believed active."""
        return {job_id: await self.status(ref) for job_id, ref in refs.items()}

    def usage_ref(self, ref: dict) -> dict:
        """What the quota book keeps of a running job's reference, for matching its GPUs'
        utilisation where the engine placed them (Slurm: its job id, DCGM's hpc_job)."""
        return {}

    def for_pool(self, pool: str) -> "TrainingBackend":
        """The engine that runs `pool`'s jobs: this one, unless pools have engines of their
        own (PoolEngines)."""
        return self


class PoolEngines(TrainingBackend):
    """The backend's engine for most pools, another for pools that name one (`pools.<name>.
    engine`: workspaces on docker or kubernetes, the training pool on Slurm). Callers ask
    `for_pool(job.pool)` for everything about one job; what is not about one job (a team's
    limit, secrets, closing) goes to the engines concerned."""

    def __init__(self, main: TrainingBackend, pools: dict[str, TrainingBackend], default_pool: str):
        self.main, self.pools, self.default_pool = main, pools, default_pool
        self.name = main.name
        self.host_homes, self.queues_jobs, self.multi_node = main.host_homes, main.queues_jobs, main.multi_node
        self.enforces_job_quota = main.enforces_job_quota
        self.secrets_apart = any(e.secrets_apart for e in self.engines())

    def engines(self) -> list[TrainingBackend]:
        seen: list[TrainingBackend] = [self.main]
        for engine in self.pools.values():
            if all(engine is not e for e in seen):
                seen.append(engine)
        return seen

    def for_pool(self, pool: str) -> TrainingBackend:
        return self.pools.get(pool, self.main)

    # One job's calls, for a caller that did not ask for_pool: the backend's own engine.
    async def submit(self, job: JobSpec) -> dict:
        return await self.for_pool(job.pool).submit(job)

    async def status(self, ref: dict) -> BackendStatus:
        return await self.main.status(ref)

    async def cancel(self, ref: dict) -> None:
        await self.main.cancel(ref)

    async def read_logs(self, ref: dict, cursor: str | None = None) -> tuple[bytes, str | None]:
        return await self.main.read_logs(ref, cursor)

    async def team_limit(self, team: str | None) -> dict | None:
        return await self.for_pool(self.default_pool).team_limit(team)

    async def sync_secrets(self, user: str, values: dict[str, str]) -> None:
        for engine in self.engines():
            if engine.secrets_apart:
                await engine.sync_secrets(user, values)

    async def aclose(self) -> None:
        for engine in self.engines():
            await engine.aclose()


class BadCursor(ValueError):
    """A log cursor that this backend did not give out."""


def offset_of(cursor: str | None) -> int:
    """The byte offset a file cursor stands for."""
    if cursor is None:
        return 0
    if not (cursor.isascii() and cursor.isdigit()) or len(cursor) > 20:
        raise BadCursor(f"{cursor!r} is not a log cursor of this job; start without one")
    return int(cursor)


# Files in a job's folder, shared by the backends that keep one.

def read_from(path: Path, offset: int) -> bytes:
    """A file's bytes from `offset` on; nothing when it is not there (yet)."""
    try:
        with path.open("rb") as f:
            f.seek(offset)
            return f.read()
    except OSError:
        return b""


def read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None
