"""The slurm backend: workspaces on this development node (as the local backend runs them),
training pools on a Slurm cluster (a DGX SuperPOD's, with Pyxis and Enroot for containers).

A pool whose `queue` names a Slurm partition is Slurm's: its jobs are `sbatch`ed there
(training/slurm.py), and its capacity is what Slurm says of its nodes (GRES configured and
allocated, nodes down or drained), not podbay's inventory. Slurm queues, so podbay does not:
its fair share, accounts, QOS and partitions decide when a job runs; a team's job-GPU quota
is the limit the site sets in Slurm (an association's GrpTRES), which podbay shows.

How podbay reaches Slurm: Slurm's own commands on this node, authenticated by munge, as on
any login node of the cluster. They are Slurm's stable interface across its releases (the
REST API's versions change with each), need no token to rotate, and are what a SuperPOD's
login nodes have anyway. Errors that mean the controller is out of reach make jobs wait
(BackendUnavailable); anything else Slurm refuses is quoted to the person.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import time
from dataclasses import dataclass, field
from typing import Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from .backends import LocalBackend
from .config import PodbayConfig, ProfileKind, _Model
from .quota.book import Snapshot
from .quota.capacity import CapacitySource, InventoryCapacity, Usage, default_weight
from .training import BackendUnavailable

# What Slurm's commands say when the controller (or slurmdbd) cannot be reached.
UNREACHABLE = ("Unable to contact slurm controller", "Socket timed out", "Connection refused", "Zero Bytes were transmitted",
               "Unable to connect to database", "slurmdbd: Connection", "Connection timed out", "Slurm backup controller")
# The most GPUs on a node of a pool Slurm has never described: no job is refused for its size.
UNKNOWN_SIZE = 1 << 20
TIME = re.compile(r"^(\d{1,3}-)?\d{1,5}(:\d{2}){0,2}$")


class SlurmSettings(_Model):
    model_config = ConfigDict(extra="forbid", frozen=True)
    # The pools whose jobs Slurm runs, each with its partition (a pool's `queue` names one
    # too); the others are this node's (workspaces).
    partitions: dict[str, str] = {}
    # slurm.conf for the commands (SLURM_CONF); None: SLURM_CONF, else the node's own.
    conf: str | None = None
    # Where sbatch, squeue, sacct, scancel, scontrol live, if not on PATH.
    bin_dir: str | None = None
    # A team's Slurm account (default: the team's name); users in no team use default_account
    # (None: their default in Slurm).
    accounts: dict[str, str] = {}
    default_account: str | None = None
    qos: str | None = None
    # --time of a job that asks for none, and the most one may ask for (Slurm's format:
    # minutes, HH:MM:SS, D-HH:MM:SS; None: the partition's own maximum decides).
    time_limit: str = "04:00:00"
    time_max: str | None = None
    # The GRES that counts GPUs, and a type to ask for (gpu:a100:N), if any.
    gres: str = Field("gpu", pattern=r"^[a-z][a-z0-9_]*$")
    gpu_type: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+$")
    # What each GPU comes with (--cpus-per-gpu, --mem-per-gpu, e.g. 16 and 200G): without
    # them a job gets one CPU per node and the partition's default memory.
    cpus_per_gpu: int | None = Field(None, ge=1, le=1024)
    mem_per_gpu: str | None = Field(None, pattern=r"^\d+[KMGT]?$")
    # pyxis: the job runs in the catalog image (srun --container-image, Enroot); none: as a
    # process on the nodes, for sites whose software is a shared tree.
    container: Literal["pyxis", "none"] = "pyxis"
    # Slurm job names are <job_prefix>-<podbay job id>.
    job_prefix: str = Field("podbay", pattern=r"^[a-z][a-z0-9-]{0,30}$")
    master_port: int = Field(29500, ge=1024, le=65535)
    # How long what Slurm says of its nodes is reused before it is asked again (seconds).
    refresh: float = Field(5.0, ge=0.5, le=300)
    # Seconds a Slurm command may take.
    timeout: float = Field(30.0, ge=1, le=600)

    @field_validator("time_limit", "time_max")
    @classmethod
    def _slurm_time(cls, v: str | None) -> str | None:
        if v is not None and not TIME.match(v):
            raise ValueError("a Slurm time: minutes, HH:MM:SS or D-HH:MM:SS")
        return v

    @model_validator(mode="after")
    def _default_within_max(self):
        if seconds(self.time_limit) == 0 or (self.time_max and seconds(self.time_max) == 0):
            raise ValueError("a time limit of 0 is no limit at all in Slurm: give one")
        if self.time_max and seconds(self.time_limit) > seconds(self.time_max):
            raise ValueError(f"time_limit {self.time_limit} is above time_max {self.time_max}")
        return self

    def partition(self, cfg: PodbayConfig, pool: str) -> str | None:
        if pool in self.partitions:
            return self.partitions[pool]
        p = cfg.pools.get(pool)
        return p.queue if p else None

    def account_for(self, team: str | None) -> str | None:
        return self.accounts.get(team, team) if team else self.default_account

    def gpus(self, n: int) -> str:
        """The GRES request for n GPUs on each node."""
        return f"{self.gres}:{self.gpu_type}:{n}" if self.gpu_type else f"{self.gres}:{n}"


def seconds(text: str) -> int:
    """A Slurm time in seconds: minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS."""
    days, _, rest = text.rpartition("-") if "-" in text else ("", "", text)
    parts = [int(p) for p in rest.split(":")]
    if days:
        h, m, s = (parts + [0, 0])[:3]
        return ((int(days) * 24 + h) * 60 + m) * 60 + s
    if len(parts) == 1:
        return parts[0] * 60
    if len(parts) == 2:
        return parts[0] * 60 + parts[1]
    return (parts[0] * 60 + parts[1]) * 60 + parts[2]


class SlurmError(RuntimeError):
    """Slurm refused (its words, for the person)."""


# What Slurm's commands get of the service's environment: nothing else (the service holds
# secrets, and SBATCH_*/SLURM_* variables would change what sbatch does).
PASSED_ENV = ("PATH", "LANG", "LANGUAGE", "TZ", "SLURM_CONF")


@dataclass
class Commands:
    """Slurm's commands, with this deployment's slurm.conf."""

    settings: SlurmSettings

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k in PASSED_ENV or k.startswith("LC_")}
        if self.settings.conf:
            env["SLURM_CONF"] = self.settings.conf
        return env

    def program(self, name: str) -> str:
        return os.path.join(self.settings.bin_dir, name) if self.settings.bin_dir else name

    def _result(self, argv: list[str], code: int, out: str, err: str) -> str:
        if code == 0:
            return out
        words = " ".join(err.split()) or f"{argv[0]} exited with status {code}"
        if any(u.lower() in words.lower() for u in UNREACHABLE):
            raise BackendUnavailable(f"Slurm is not reachable ({words}); waiting for it")
        raise SlurmError(words.removeprefix("sbatch: error: ").removeprefix("error: "))

    def run(self, name: str, *args: str, timeout: float | None = None) -> str:
        argv = [self.program(name), *args]
        timeout = timeout or self.settings.timeout
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=self.env,
                               stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            raise BackendUnavailable(f"{argv[0]} is not installed on this node (Slurm's client, slurm-client)") from None
        except subprocess.TimeoutExpired:
            raise BackendUnavailable(f"{name} did not answer in {timeout:g}s; waiting for Slurm") from None
        return self._result(argv, r.returncode, r.stdout, r.stderr)

    async def arun(self, name: str, *args: str, stdin: str | None = None, pass_fds: tuple[int, ...] = (),
                   timeout: float | None = None) -> str:
        argv = [self.program(name), *args]
        timeout = timeout or self.settings.timeout
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=self.env, pass_fds=pass_fds)
        except FileNotFoundError:
            raise BackendUnavailable(f"{argv[0]} is not installed on this node (Slurm's client, slurm-client)") from None
        try:
            out, err = await asyncio.wait_for(proc.communicate(stdin.encode() if stdin is not None else None), timeout)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
            raise BackendUnavailable(f"{name} did not answer in {timeout:g}s; waiting for Slurm") from None
        return self._result(argv, proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"))


# --- what Slurm says of its nodes ------------------------------------------------------


@dataclass
class SlurmNode:
    name: str
    state: str  # Slurm's words: IDLE, MIXED, ALLOCATED, DOWN, DRAIN, IDLE+DRAIN, …
    partitions: list[str]
    gpus: int
    gpus_used: int
    reason: str = ""

    @property
    def usable(self) -> bool:
        """Takes new jobs: not down, drained, draining, failing or powered off."""
        words = set(re.split(r"[+*~#!%$@^-]", self.state.upper()))
        return not words & {"DOWN", "DRAIN", "DRAINING", "DRAINED", "FAIL", "FAILING", "POWERED_DOWN", "POWERING_DOWN",
                            "NOT_RESPONDING", "INVAL", "FUTURE", "MAINT", "RESERVED", "UNKNOWN"}


def gres_count(tres: str, gres: str) -> int:
    """gres/gpu=N from a TRES list (CfgTRES, AllocTRES); 0 when absent."""
    m = re.search(rf"(?:^|,)gres/{re.escape(gres)}=(\d+)(?:,|$)", tres or "")
    return int(m.group(1)) if m else 0


def parse_nodes(text: str, gres: str = "gpu") -> list[SlurmNode]:
    """`scontrol show node --oneliner`: one node per line of key=value pairs."""
    nodes = []
    for line in text.splitlines():
        fields = dict(re.findall(r"(\w+)=(.*?)(?=\s+\w+=|$)", line.strip()))
        if "NodeName" not in fields:
            continue
        nodes.append(SlurmNode(
            name=fields["NodeName"], state=fields.get("State", "UNKNOWN"),
            partitions=[p for p in fields.get("Partitions", "").split(",") if p],
            gpus=gres_count(fields.get("CfgTRES", ""), gres), gpus_used=gres_count(fields.get("AllocTRES", ""), gres),
            reason=fields.get("Reason", "").split(" [")[0]))
    return nodes


@dataclass
class NodeView:
    """Slurm's nodes, asked again after `refresh` seconds (one `scontrol` for all pools)."""

    commands: Commands
    refresh: float
    _at: float = -1e9
    _nodes: list[SlurmNode] = field(default_factory=list)
    error: str | None = None

    def nodes(self) -> list[SlurmNode]:
        """The nodes as Slurm last said; while it cannot be asked, the last answer (sizes
        stay known, `error` says why nothing counts as free)."""
        now = time.monotonic()
        if now - self._at >= self.refresh:
            try:
                # Short: the spawn form asks on the hub's loop.
                text = self.commands.run("scontrol", "show", "node", "--oneliner", timeout=3)
                self._nodes, self.error = parse_nodes(text, self.commands.settings.gres), None
            except (BackendUnavailable, SlurmError) as e:
                self.error = str(e)
            self._at = now
        return self._nodes


class SlurmCapacity(CapacitySource):
    """Pools whose queue is a Slurm partition: Slurm's nodes. The others (the development
    pool, where workspaces run on this node): the inventory and the quota book."""

    def __init__(self, cfg: PodbayConfig, inventory, view: NodeView):
        self.cfg, self.view = cfg, view
        self.local = InventoryCapacity(inventory)

    def partition(self, pool: str) -> str | None:
        return self.cfg.slurm.partition(self.cfg, pool)

    def nodes(self, pool: str) -> list[SlurmNode]:
        partition = self.partition(pool)
        return [n for n in self.view.nodes() if partition in n.partitions]

    def unit_weight(self, spec, pools):
        if all(self.partition(p) for p in pools):
            return default_weight(spec)
        return self.local.unit_weight(spec, [p for p in pools if not self.partition(p)])

    def counts(self, spec: ProfileKind, pools, snap: Snapshot):
        local = [p for p in pools if not self.partition(p)]
        total, free = self.local.counts(spec, local, snap) if local else (0, 0)
        if spec.kind == "cpu" or total == -1:
            return (-1, -1)
        for pool in pools:
            if not self.partition(pool):
                continue
            if spec.kind != "full":
                continue  # Slurm hands out whole GPUs
            for node in self.nodes(pool):
                total += node.gpus // spec.count
                if node.usable and not self.view.error:
                    free += max(node.gpus - node.gpus_used, 0) // spec.count
        return total, free

    def devices(self, pool, snap):
        if not self.partition(pool):
            return self.local.devices(pool, snap)
        row = Usage(0, 0, 0)
        for node in self.nodes(pool):
            row.total += node.gpus
            row.used += min(node.gpus_used, node.gpus)
            row.free += max(node.gpus - node.gpus_used, 0) if node.usable and not self.view.error else 0
        return {"gpu": row} if row.total else {}

    def node_states(self, pool: str) -> list[SlurmNode]:
        return self.nodes(pool) if self.partition(pool) else []

    def most_gpus_per_node(self, pool):
        if not self.partition(pool):
            return self.local.most_gpus_per_node(pool)
        nodes = self.nodes(pool)
        if not nodes and self.view.error:
            return UNKNOWN_SIZE  # never heard from Slurm: it decides when it answers
        return max((n.gpus for n in nodes), default=0)


class SlurmBackend(LocalBackend):
    name = "slurm"
    # Workspaces: processes on this development node, as the local backend runs them.
    spawner = "podbay-local"

    @classmethod
    def settings_model(cls):
        return SlurmSettings

    def describe(self, cfg):
        pools = ", ".join(f"{name} → partition {cfg.slurm.partition(cfg, name)}" for name in cfg.pools
                          if cfg.slurm.partition(cfg, name)) or "none"
        return f"slurm: workspaces on this node (NOT isolated from each other), training pools on Slurm ({pools})"

    def check(self, cfg):
        out = [(("volumes", i), "the slurm backend mounts a directory: give source (pvc is for kubernetes)")
               for i, vol in enumerate(cfg.volumes) if not vol.source]
        settings: SlurmSettings = cfg.slurm
        for name in settings.partitions:
            if name not in cfg.pools:
                out.append((("slurm", "partitions", name), f"pool {name!r} is not declared under pools:"))
        if not any(settings.partition(cfg, name) for name in cfg.pools):
            out.append((("pools",), "no pool names a Slurm partition: give the training pool one "
                                    "(slurm: partitions: {training: <partition>}, or the pool's queue)"))
        return out

    def capacity(self, cfg, inventory):
        return SlurmCapacity(cfg, inventory, NodeView(Commands(cfg.slurm), cfg.slurm.refresh))

    def training(self, portal):
        from .training.slurm import SlurmJobs

        return SlurmJobs(portal.cfg, portal.data_dir / "homes")
