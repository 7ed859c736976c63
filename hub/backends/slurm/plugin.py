"""The slurm backend's plugin: capacity from what Slurm says of its partitions' nodes, jobs
through `sbatch` (jobs.py), workspaces as the local backend runs them or, with
`slurm.workspaces: slurm`, as Slurm jobs on their pool's partition (spawner.py)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from ...config import PodbayConfig, ProfileKind
from ...quota.book import Snapshot
from ...quota.capacity import CapacitySource, InventoryCapacity, Usage, default_weight
from ...training import BackendUnavailable
from ..base import HubSide
from ..local.plugin import LocalBackend
from .commands import Commands, SlurmError, SlurmSettings
from .nodes import SlurmNode, parse_nodes

# The most GPUs on a node of a pool Slurm has never described: no job is refused for its size.
UNKNOWN_SIZE = 1 << 20


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
    # Workspaces: processes on this development node, as the local backend runs them, unless
    # slurm.workspaces says Slurm jobs (spawner_for).
    spawner = "podbay-local"

    def spawner_for(self, cfg):
        return "podbay-slurm" if cfg.slurm.workspaces == "slurm" else self.spawner

    def person_home(self, cfg, account):
        return str(account.home) if cfg.slurm.workspaces == "slurm" else super().person_home(cfg, account)

    def places(self, cfg):
        # Slurm places its jobs' GPUs (GRES): podbay names none.
        return cfg.slurm.workspaces != "slurm"

    def configure(self, c, cfg):
        if cfg.slurm.workspaces == "local":
            return super().configure(c, cfg)
        # The image's jupyterhub-singleuser (Pyxis), or the hub's own from the shared tree.
        if cfg.slurm.container == "none":
            super().configure(c, cfg)
        # The wait in the queue is the spawner's to end (workspace_wait); the hub's own timeout
        # leaves room after it for the image's pull and JupyterLab's start.
        c.PodbaySlurmSpawner.start_timeout = int(cfg.slurm.workspace_wait) + 600

    def start_hub(self, cfg, portal, hub_port):
        if cfg.slurm.workspaces == "local":
            return super().start_hub(cfg, portal, hub_port)
        from .spawner import live_jobs, slurm_job_alive

        # One squeue for every workspace's job (slurmctld out of reach: each is kept).
        ids = [a.ref["slurm_id"] for a in portal.book.allocations() if a.kind == "workspace" and a.ref.get("slurm_id")]
        live = live_jobs(Commands(cfg.slurm), ids)
        released = portal.book.reconcile(lambda a: slurm_job_alive(live, a), kinds=("workspace",))
        return HubSide(cfg.slurm.hub_address, released)

    @classmethod
    def settings_model(cls):
        return SlurmSettings

    def describe(self, cfg):
        pools = ", ".join(f"{name} → partition {cfg.slurm.partition(cfg, name)}" for name in cfg.pools
                          if cfg.slurm.partition(cfg, name)) or "none"
        who = ("each as the person's cluster account" if self.runs_as_person(cfg)
               else "as the hub's account, NOT isolated from each other")
        where = ("as Slurm jobs on their pool's partition" if cfg.slurm.workspaces == "slurm" else "on this node")
        return f"slurm: workspaces {where} ({who}), training pools on Slurm ({pools})"

    def check(self, cfg):
        out = [(("volumes", i), "the slurm backend mounts a directory: give source (pvc is for kubernetes)")
               for i, vol in enumerate(cfg.volumes) if not vol.source]
        settings: SlurmSettings = cfg.slurm
        for name in settings.partitions:
            if name not in cfg.pools:
                out.append((("slurm", "partitions", name), f"pool {name!r} is not declared under pools:"))
        if settings.workspaces == "slurm":
            for i, profile in enumerate(cfg.profiles):
                if not any(settings.partition(cfg, pool) for pool in profile.pools):
                    out.append((("profiles", i, "pools"), f"workspaces are Slurm jobs (slurm.workspaces: slurm): profile "
                                f"{profile.id} needs a pool with a Slurm partition"))
                elif profile.spec.kind == "shared":
                    out.append((("profiles", i, "id"), f"Slurm hands out whole GPUs and MIG slices, not time-sliced "
                                f"shares: profile {profile.id} cannot run as a Slurm job"))
        if not any(settings.partition(cfg, name) for name in cfg.pools):
            out.append((("pools",), "no pool names a Slurm partition: give the training pool one "
                                    "(slurm: partitions: {training: <partition>}, or the pool's queue)"))
        return out

    def runs_as_person(self, cfg):
        return cfg.slurm.run_as == "person"

    def check_pools(self, cfg, pools, backend):
        """A training pool on Slurm beside `backend`'s workspaces: each needs its partition,
        and a job moved from a workspace must find the workspace's files on the nodes."""
        out = [(("pools", pool, "queue"), f"pool {pool} runs on Slurm: give it its partition (queue: <partition>)")
               for pool in pools if not cfg.slurm.partition(cfg, pool)]
        out += [(("volumes", i), "jobs on Slurm mount a directory: give source (pvc is for kubernetes)")
                for i, vol in enumerate(cfg.volumes) if not vol.source]
        if backend == "docker" and self.runs_as_person(cfg):
            # Workspaces are the people's accounts with their cluster homes (podbay-docker):
            # a moved job finds the same files. A home per workspace would be a Docker volume.
            if cfg.docker.home_per_workspace:
                out.append((("docker", "home_per_workspace"), "beside a Slurm pool workspaces use the person's "
                            "cluster home, which Slurm's nodes see too: there is no home per workspace"))
        elif backend != "local":
            # docker's homes are Docker volumes (unless people are their accounts, above),
            # kubernetes' PVCs: no Slurm node sees them, so a job moved from a workspace would
            # not find its files.
            fix = ("set slurm.run_as: person, so that workspaces use the people's cluster homes"
                   if backend == "docker" else "a Slurm pool runs beside local or docker workspaces, or with backend: slurm")
            out += [(("pools", pool, "engine"),
                     f"the {backend} backend keeps homes where Slurm's nodes cannot see them (a job moved from a "
                     f"workspace would not find its files): {fix}") for pool in pools]
        return out

    def layouts(self, portal):
        # This node's inventory (local workspaces), and the nodes of Slurm's partitions.
        pools = [p for p in portal.cfg.pools if portal.cfg.slurm.partition(portal.cfg, p)]
        return super().layouts(portal) + self.pool_layouts(portal, pools)

    def pool_layouts(self, portal, pools):
        from .layouts import slurm_layouts

        try:
            return slurm_layouts(portal.cfg, pools)
        except (BackendUnavailable, SlurmError) as e:
            raise BackendUnavailable(f"Slurm could not say what its nodes have: {e}") from None

    def engine_of(self, cfg, pool):
        # The pools without a partition are this node's (local workspaces).
        return "slurm" if cfg.slurm.partition(cfg, pool) else "local"

    def layout_modes(self, cfg):
        # Slurm hands out whole GPUs and MIG slices (time-sliced shares run no podbay job there).
        return frozenset({"whole", "mig"})

    def cannot_apply_layouts(self, portal):
        return ("podbay does not re-cut Slurm's nodes: drain the node, apply the layout with nvidia-mig-parted, "
                "update its Gres and resume it, as `podbay advise` prints it")

    async def doctor(self, cfg):
        from .doctor import diagnose

        return await diagnose(cfg)

    def capacity(self, cfg, inventory):
        return SlurmCapacity(cfg, inventory, NodeView(Commands(cfg.slurm), cfg.slurm.refresh))

    def training(self, portal):
        from .jobs import SlurmJobs

        return SlurmJobs(portal.cfg, portal.data_dir / "homes")
