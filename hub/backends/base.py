"""Where workspaces and jobs run: one plugin per engine, found through the `podbay.backends`
entry points, so a new engine (Kubernetes, Slurm) is one module and one entry point, never
another `if backend == …` in the hub configuration, the service or the command line.

A deployment names its backend in podbay.yaml (`backend: docker`), its settings under the
backend's own key (`docker:`, validated by the model the plugin declares in
`settings_model`, with the plugin's own `check` for what only it knows);
`PODBAY_BACKEND` or `podbay up --backend` override it for a run.
The plugin ties together what must match: the JupyterHub spawner (its entry point in
`jupyterhub.spawners`), the training backend the REST service runs jobs on, who places
devices and where capacity comes from (quota/), and what the hub does at start (check the
engine, find where workspaces reach the hub, reconcile the quota book with what runs).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the hub-side modules load only in the process that uses them
    from collections.abc import Awaitable, Callable, Mapping

    from pydantic import BaseModel

    from ..advice.replay import SimGpu
    from ..config import PodbayConfig
    from ..doctor import Finding
    from ..inventory import Inventory
    from ..portal import Portal
    from ..quota.capacity import CapacitySource
    from ..quota.placement import Placement
    from ..training import TrainingBackend


@dataclass(frozen=True)
class HubSide:
    """What a backend tells the hub configuration at start."""

    # The address where workspaces reach the hub's API and podbay's service.
    workspace_side: str
    # Ledger keys of workspaces whose devices were released because they no longer run.
    released: list[str]


def holder_line(key: str, user: str, profile: str) -> str:
    """What holds a GPU, for people: "alice's workspace train (mig-3g.40gb)", "job 12 of bob (gpu-2)"."""
    kind, _, rest = key.partition(":")
    if kind == "workspace":
        server = rest.split("/", 1)[1] if "/" in rest else ""
        return f"{user}'s workspace {server or '(default)'} ({profile})"
    return f"{kind} {rest} of {user} ({profile})"


class Backend:
    name: str
    # The JupyterHub spawner, by its `jupyterhub.spawners` entry point.
    spawner: str
    # Whether podbay places devices itself (the quota book picks UUIDs: local, docker) or the
    # engine does (Kubernetes' device plugin, Slurm's GRES): then podbay never sets
    # CUDA_VISIBLE_DEVICES.
    places_devices: bool = True
    # Whether workspaces of different users are isolated from each other.
    isolates_users: bool = True

    def describe(self, cfg: "PodbayConfig") -> str:
        return self.name

    def spawner_for(self, cfg: "PodbayConfig") -> str:
        """The spawner of this deployment's workspaces (slurm's may be local processes or
        Slurm jobs, as its settings say)."""
        return self.spawner

    def isolates(self, cfg: "PodbayConfig") -> bool:
        """Whether this deployment's workspaces of different people are isolated from each
        other (isolates_users, unless the settings make each a person's own account)."""
        return self.isolates_users

    def places(self, cfg: "PodbayConfig") -> bool:
        """Whether podbay places this deployment's workspace devices (places_devices, unless
        the settings hand the workspaces to an engine that places its own)."""
        return self.places_devices

    def spawner_names(self, cfg: "PodbayConfig") -> set[str]:
        """The names a JupyterHub configuration may give this backend's spawner by: its entry
        point and the dotted path of the class it points to."""
        from importlib.metadata import entry_points

        spawner = self.spawner_for(cfg)
        names = {spawner}
        for ep in entry_points(group="jupyterhub.spawners", name=spawner):
            names.add(ep.value.replace(":", "."))
        return names

    def workspace_login(self) -> str:
        """The account a workspace runs as, which `podbay ssh` logs in to: the images' user
        (images/common/install-workspace.sh makes jovyan, uid 1000)."""
        return "jovyan"

    def workspace_home(self, data_dir: Path, user: str) -> str:
        """Where a person's persistent home is, seen from inside their workspace."""
        return "/home/jovyan"

    def person_home(self, cfg, account) -> str:
        """Where a person's workspace, running as their cluster account, sees their home:
        where the cluster's nodes do (containers mount it there, Slurm's nodes have it)."""
        return str(account.home)

    @classmethod
    def settings_model(cls) -> "type[BaseModel] | None":
        """The schema of this backend's section of podbay.yaml (under its name), or None."""
        return None

    def check(self, cfg: "PodbayConfig") -> list[tuple[tuple, str]]:
        """What is wrong in podbay.yaml for this backend only, as (place, sentence).

        Here: a backend whose engine does not queue (podbay does) has no use for a pool's
        `queue`; one whose engine does (Kueue, Slurm) overrides this."""
        out = [(("pools", name, "queue"),
                f"the {self.name} backend has no queue of its own (podbay queues its jobs): remove queue")
               for name, pool in cfg.pools.items() if pool.queue and name not in cfg.pool_engines(self.name)]
        out += [(("volumes", i), f"the {self.name} backend mounts a directory: give source")
                for i, vol in enumerate(cfg.volumes) if not vol.source and not self._mounts_without_source(cfg, vol)]
        return out

    def _mounts_without_source(self, cfg: "PodbayConfig", vol) -> bool:
        """Whether this engine provides `vol` its own way (its section of podbay.yaml)."""
        return False

    def placement(self, cfg: "PodbayConfig", inventory: "Inventory") -> "Placement | None":
        """Who picks devices: podbay from its inventory, or nobody here (the engine does)."""
        if not self.places(cfg):
            return None
        from ..quota.placement import DevicePlacement

        return DevicePlacement(inventory)

    def capacity(self, cfg: "PodbayConfig", inventory: "Inventory") -> "CapacitySource":
        """What is free, for the form, the API and the TUI: on one machine, the inventory
        minus the quota book's claims. A cluster backend returns its cluster's view."""
        from ..quota.capacity import InventoryCapacity

        return InventoryCapacity(inventory)

    def configure(self, c, cfg: "PodbayConfig") -> None:
        """Settings of the JupyterHub configuration this backend's spawner needs."""

    def prepare_volumes(self, cfg: "PodbayConfig", portal: "Portal") -> None:
        """Relative volume sources are podbay's own (the demo's): create them."""
        for vol in cfg.volumes:
            if vol.source and not Path(vol.source).is_absolute():
                portal.volume_source(vol).mkdir(parents=True, exist_ok=True)

    async def serve(self, portal: "Portal") -> None:
        """What the backend keeps running while a process serves (the REST service runs it
        for its lifetime): watches that keep the capacity source current. Nothing on one
        machine."""

    def follow_proxies(self, env: "Mapping[str, str]", found: set) -> "Callable[[], Awaitable[None]] | None":
        """Where the proxy in front of the service moves (a pod on a cluster), a task for the
        service to run that keeps `found` at the proxy's current addresses, whose
        X-Forwarded-For is then believed; None where the trusted networks say it all."""
        return None

    def job_pod_prefix(self, cfg: "PodbayConfig") -> str | None:
        """The prefix of the names of job pods, where jobs are pods that DCGM's exporter
        labels (usage matches them to jobs); None elsewhere."""
        return None

    def start_hub(self, cfg: "PodbayConfig", portal: "Portal", hub_port: int) -> HubSide:
        """Check the engine and reconcile the quota book; raise BackendError to refuse to start."""
        raise NotImplementedError

    async def doctor(self, cfg: "PodbayConfig") -> "list[Finding]":
        """`podbay doctor`'s checks of this engine's prerequisites on the real thing (the
        engine answers, podbay may do what it does there, what podbay.yaml names exists),
        each failure with its fix. The core's own checks (the hub's API, the utilisation
        source) are hub/doctor.py's."""
        return []

    def training(self, portal: "Portal") -> "TrainingBackend":
        raise NotImplementedError

    def layouts(self, portal: "Portal") -> "list[tuple[SimGpu, list[str]]]":
        """The GPUs `podbay advise` advises on, each with the layout it has now and what runs
        on it (a line per workspace or job). Here: the inventory podbay places on, and the
        quota book's claims on each GPU. An engine that places returns its cluster's view."""
        if not self.places(portal.cfg):
            return []
        from ..advice.render import PLACING_ENGINES
        from ..advice.replay import gpus_from_devices

        inv = portal.inventory
        # The pools podbay places on, not the declared nodes of a pool Slurm runs (its nodes
        # are Slurm's to say: pool_layouts).
        devices = [d for d in inv.devices if self.engine_of(portal.cfg, d.pool) in PLACING_ENGINES]
        gpu_of = {(d.node, d.key): d.gpu_index for d in devices}
        holders: dict[tuple[str, int], list[str]] = {}
        for a in portal.book.allocations():
            for index in dict.fromkeys(gpu_of.get((a.node, k)) for k in a.device_keys):
                if index is not None:
                    holders.setdefault((a.node, index), []).append(holder_line(a.key, a.user, a.profile))
        return [(g, holders.get((g.node, g.index), [])) for g in gpus_from_devices(devices)]

    def engine_of(self, cfg: "PodbayConfig", pool: str) -> str:
        """The engine whose nodes run `pool`'s work: another engine where the pool names one
        (pools.<name>.engine), else this backend's (the slurm backend: local for the pools
        without a partition)."""
        return cfg.pools[pool].engine or self.name

    def pool_layouts(self, portal: "Portal", pools: list[str]) -> "list[tuple[SimGpu, list[str]]]":
        """What `layouts` says, for pools this engine runs beside another backend's
        workspaces (pools.<name>.engine). Here: none (an engine that says nothing of its
        nodes gets no advice)."""
        return []

    def layout_modes(self, cfg: "PodbayConfig") -> frozenset[str]:
        """The GPU layouts advice may propose here, per GPU: whole, shared (time-sliced, as
        podbay.yaml's `replicas:`) and fixed MIG layouts."""
        return frozenset({"whole", "shared", "mig"})

    def cannot_apply_layouts(self, portal: "Portal") -> str | None:
        """Why this engine applies no layout now (asked before an advice is made for it), or
        None. Here: podbay changes no GPU's settings on one machine."""
        return (f"podbay does not change GPU layouts on the {self.name} backend: apply them with "
                "nvidia-mig-parted, as `podbay advise` prints it")

    async def apply_layout(self, portal: "Portal", node: str, config: str) -> str:
        """Have the engine give `node` the mig-parted config `config`, where it can and
        nothing runs on the node's GPUs; say what was done. LayoutNotApplied says why not and
        what to do instead. Here: podbay changes no GPU's settings on one machine."""
        from ..advice.advise import LayoutNotApplied

        raise LayoutNotApplied(self.cannot_apply_layouts(portal) or f"the {self.name} backend applies no layouts")

    def runs_as_person(self, cfg: "PodbayConfig") -> bool:
        """Whether this engine runs people's jobs as their own cluster accounts (slurm's
        run_as: person): workspaces beside it then run as them too, in their cluster homes,
        so that a job moved from one finds its files, and they are the person's."""
        return False

    def check_pools(self, cfg: "PodbayConfig", pools: list[str], backend: str) -> list[tuple[tuple, str]]:
        """What is wrong in podbay.yaml for `pools`, whose jobs this engine runs while
        `backend` runs the workspaces (pools.<name>.engine). Here: an engine that cannot run
        another backend's pools."""
        return [(("pools", pool, "engine"), f"the {self.name} engine runs no pool beside the {backend} backend's "
                                            "workspaces: leave engine out, or choose slurm") for pool in pools]


