"""The service's request and response models: the OpenAPI schemas clients rely on."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, SecretStr


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


class HolderOut(BaseModel):
    user: str | None = Field(None, description="None where the engine says only that it is in use")
    what: str = Field(description="the workspace's name, the job's key, or 'in use'")
    profile: str | None = None
    kind: str | None = Field(None, description="workspace, job, or leftover (a MIG instance still being freed)")


class DeviceOut(BaseModel):
    id: str
    label: str = Field(description="GPU, a MIG profile (1g.10gb), or a shared slot (1/4)")
    units: str = Field(description="GPU units, as the quota counts them")
    holder: HolderOut | None = Field(description="None: free")


class GpuOut(BaseModel):
    index: int
    model: str
    kind: str = Field(description="full, mig or shared")
    on_request: bool = Field(False, description="its MIG slices are made as they are asked for: only those made are listed")
    free_units: str = Field(description="what is free on it, in GPU units (on request: the largest slice that still fits)")
    devices: list[DeviceOut]


class NodePictureOut(BaseModel):
    name: str
    state: str | None = Field(None, description="the engine's word for it, where the engine reports nodes")
    reason: str | None = None
    gpus: list[GpuOut]


class PoolPictureOut(BaseModel):
    name: str
    nodes: list[NodePictureOut]


class GpusOut(BaseModel):
    """Every node's GPUs and who holds each device: the capacity page's picture."""
    pools: list[PoolPictureOut]


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


class DemandOut(BaseModel):
    kind: str = Field(description="workspace or job")
    profile: str
    pool: str | None
    outcome: str = Field(description="granted; capacity: refused (a job: waited) for want of room; quota: refused "
                                     "(a job: waited) for the team's quota")
    requests: int


class ShowbackOut(BaseModel):
    since: float
    until: float
    by: str
    rows: list[UsageRowOut]
    total: UsageRowOut
    idle_jobs: list[IdleJobOut] = Field(description="jobs that ended in the period and never used their GPUs")
    demand: list[DemandOut] = Field(default_factory=list,
                                    description="requests in the period per profile, pool and outcome, most first")
    hourly: list[dict] = Field(default_factory=list, description="mean utilisation per hour (for charts)")


class ReplayOut(BaseModel):
    refused: int = Field(description="requests of the period the layout would have refused (replayed)")
    refused_by_profile: dict[str, int]
    gpu_hours_held: float
    gpu_hours_idle: float


class GpuAdviceOut(BaseModel):
    index: int
    model: str
    current: str = Field(description="its layout now: whole, shared 1/N, mig 2x1g.10gb+1x3g.40gb")
    advised: str
    changes: bool
    holders: list[str] = Field(description="what runs on it now")
    known_config: str | None = Field(description="the predefined mig-parted config of this layout, if any")


class NodeAdviceOut(BaseModel):
    node: str
    pool: str
    changes: bool
    config: str = Field(description="the mig-parted config that gives it the advised layout")
    interrupts: list[str] = Field(description="what changing it would interrupt")
    gpus: list[GpuAdviceOut]


class AdviceOut(BaseModel):
    since: float
    until: float
    pools: list[str]
    requests: int = Field(description="requests of the period replayed")
    engine: str
    before: ReplayOut = Field(description="the layouts the nodes have now")
    after: ReplayOut = Field(description="the advised layouts")
    nodes: list[NodeAdviceOut]
    mig_parted: dict = Field(description="a mig-parted config file (version v1) with the custom configs needed")
    nodes_yaml: list[dict] = Field(description="podbay.yaml nodes entries of the changed nodes (local, docker)")
    steps: list[str]
    left_out: list[str] = Field([], description="engines whose nodes are not in this advice, and why (Slurm "
                                                "could not be asked)")


class ApplyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    node: str = Field(max_length=253)
    days: float = Field(30, gt=0, le=400, description="the period the advice is made from, as for GET /advice")
    pool: list[str] | None = Field(None, description="as for GET /advice")
    idle_weight: float = Field(0.05, ge=0, le=10, description="as for GET /advice")
    config: str | None = Field(None, max_length=63,
                               description="the config the caller was shown for the node: refused (409) if the "
                                           "advice made now differs")


class ApplyOut(BaseModel):
    node: str
    config: str
    message: str


class ErrorOut(BaseModel):
    error: str
    message: str


ERRORS = {s: {"model": ErrorOut} for s in (400, 401, 403, 404, 409, 413, 422, 503)}
