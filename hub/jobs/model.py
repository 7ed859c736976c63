"""Training jobs as clients ask for them (JobRequest), as the service returns them (Job, also
the OpenAPI schema) and as they are stored (JobRow, beside the quota book's tables).

A job asks for `gpus_per_node` whole GPUs on each of `nodes` nodes of a pool. Its stored
state is one of STATES, or `pending` while an engine that queues (Kueue, Slurm) holds it:
users see that as `queued`, with the engine's reason in `message`.
"""

from __future__ import annotations

import json

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import Float, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from ..environment import check_env_name
from ..quota.database import Base

STATES = ("queued", "starting", "running", "succeeded", "failed", "cancelled")
ACTIVE = ("queued", "starting", "running")
# Handed to an engine that queues (Kueue, Slurm), not running yet: "queued" to users.
PENDING = "pending"
TERMINAL = ("succeeded", "failed", "cancelled")
JOB_POOL = "training"


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
    # Whole GPUs on each of `nodes` nodes (Job.gpus is the total).
    gpus_per_node: Mapped[int] = mapped_column(Integer)
    nodes: Mapped[int] = mapped_column(Integer, default=1)
    # The engine's time limit for it (Slurm's format), where the engine enforces one.
    time_limit: Mapped[str | None] = mapped_column(String(32), nullable=True)
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
    time_limit: str | None = Field(default=None, pattern=r"^(\d{1,3}-)?\d{1,5}(:\d{2}){0,2}$",
                                   description="how long it may run, as Slurm writes it (minutes, HH:MM:SS, "
                                               "D-HH:MM:SS); where the engine limits time (slurm)")

    @field_validator("command")
    @classmethod
    def _command(cls, v: list[str]) -> list[str]:
        if not v[0].strip():
            raise ValueError("the program (the command's first item) is empty")
        if any("\0" in a for a in v):
            raise ValueError("command items may not contain NUL characters")
        return v

    @field_validator("workdir", "name")
    @classmethod
    def _printable(cls, v: str | None) -> str | None:
        # Paths and names reach engines' command lines and files: no line breaks or controls.
        if v is not None and any(ord(c) < 32 or ord(c) == 127 for c in v):
            raise ValueError("may not contain control characters (line breaks, tabs, …)")
        return v

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        for key, value in v.items():
            check_env_name(key)
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
    time_limit: str | None = None
    state: str = Field(description="queued (also while the engine holds it), starting, running, "
                                    "succeeded, failed or cancelled")
    exit_code: int | None
    message: str = Field(description="what it waits for, or how it ended: the engine's reason where it queues")
    devices: list[str]
    created: float
    started: float | None
    finished: float | None

    def seen_by(self, user: str, admin: bool) -> bool:
        """Who may read a job (its logs too) and cancel it: its owner, and admins."""
        return self.user == user or admin

    @classmethod
    def from_row(cls, r: JobRow) -> "Job":
        """From a row of the jobs table (an ORM object or a plain row)."""
        nodes = r.nodes or 1
        return cls(id=r.id, name=r.name, user=r.user, team=r.team, image=r.image, command=json.loads(r.command),
                   workdir=r.workdir, volumes=json.loads(r.volumes), env=json.loads(r.env), gpus=r.gpus_per_node * nodes,
                   gpus_per_node=r.gpus_per_node, nodes=nodes, pool=r.pool, from_workspace=r.from_workspace,
                   time_limit=r.time_limit,
                   state="queued" if r.state == PENDING else r.state, exit_code=r.exit_code,
                   message=r.message, devices=json.loads(r.devices), created=r.created, started=r.started,
                   finished=r.finished)
