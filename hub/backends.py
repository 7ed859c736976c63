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

import os
import pwd
import socket
import sys
from dataclasses import dataclass
from functools import lru_cache
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the hub-side modules load only in the process that uses them
    from pydantic import BaseModel

    from .config import PodbayConfig
    from .inventory import Inventory
    from .portal import Portal
    from .quota.capacity import CapacitySource
    from .quota.placement import Placement
    from .training import TrainingBackend

GROUP = "podbay.backends"


class BackendError(RuntimeError):
    """A backend that cannot be used (unknown, or its engine is not there); the message
    says what to do."""


@dataclass(frozen=True)
class HubSide:
    """What a backend tells the hub configuration at start."""

    # The address where workspaces reach the hub's API and podbay's service.
    workspace_side: str
    # Ledger keys of workspaces whose devices were released because they no longer run.
    released: list[str]


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

    def workspace_login(self) -> str:
        """The account a workspace runs as, which `podbay ssh` logs in to: the images' user
        (images/common/install-workspace.sh makes jovyan, uid 1000)."""
        return "jovyan"

    def workspace_home(self, data_dir: Path, user: str) -> str:
        """Where a person's persistent home is, seen from inside their workspace."""
        return "/home/jovyan"

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
               for name, pool in cfg.pools.items() if pool.queue]
        out += [(("volumes", i), f"the {self.name} backend mounts a directory: give source (pvc is for kubernetes)")
                for i, vol in enumerate(cfg.volumes) if not vol.source and not self._mounts_without_source(vol)]
        return out

    def _mounts_without_source(self, vol) -> bool:
        return False

    def placement(self, inventory: "Inventory") -> "Placement | None":
        """Who picks devices: podbay from its inventory, or nobody here (the engine does)."""
        if not self.places_devices:
            return None
        from .quota.placement import DevicePlacement

        return DevicePlacement(inventory)

    def capacity(self, cfg: "PodbayConfig", inventory: "Inventory") -> "CapacitySource":
        """What is free, for the form, the API and the TUI: on one machine, the inventory
        minus the quota book's claims. A cluster backend returns its cluster's view."""
        from .quota.capacity import InventoryCapacity

        return InventoryCapacity(inventory)

    def configure(self, c) -> None:
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

    def start_hub(self, cfg: "PodbayConfig", portal: "Portal", hub_port: int) -> HubSide:
        """Check the engine and reconcile the quota book; raise BackendError to refuse to start."""
        raise NotImplementedError

    def training(self, portal: "Portal") -> "TrainingBackend":
        raise NotImplementedError


class LocalBackend(Backend):
    name = "local"
    spawner = "podbay-local"
    isolates_users = False

    def describe(self, cfg):
        return "local: workspaces run as this hub's user and are NOT isolated from each other (one person only)"

    def workspace_login(self):
        return pwd.getpwuid(os.getuid()).pw_name

    def workspace_home(self, data_dir, user):
        # PodbayLocalSpawner's home_dir_template.
        return str(Path(data_dir) / "homes" / user)

    def configure(self, c):
        # The hub's own environment's jupyterhub-singleuser: the workspace runs this Python.
        singleuser = Path(sys.executable).parent / "jupyterhub-singleuser"
        c.Spawner.cmd = [str(singleuser) if singleuser.exists() else "jupyterhub-singleuser"]

    def start_hub(self, cfg, portal, hub_port):
        from .spawners.local import PodbayLocalSpawner

        return HubSide("127.0.0.1", portal.book.reconcile(PodbayLocalSpawner.is_alive, kinds=("workspace",)))

    def training(self, portal):
        from .training.local import LocalBackend as LocalJobs

        return LocalJobs(portal.data_dir / "jobs")


class DockerBackend(Backend):
    name = "docker"
    spawner = "podbay-docker"

    @classmethod
    def settings_model(cls):
        from .config import DockerSettings

        return DockerSettings

    def _mounts_without_source(self, vol) -> bool:
        return bool(vol.docker_volume)

    def describe(self, cfg):
        if cfg.docker.network.mode == "host":
            return "docker, on the host network: workspaces are NOT isolated from each other (one user only)"
        return f"docker, each workspace in its own network namespace on {cfg.docker.network_name}"

    def prepare_volumes(self, cfg, portal):
        for vol in cfg.volumes:
            if vol.docker_volume or Path(vol.source).is_absolute():
                continue
            src = portal.volume_source(vol)
            src.mkdir(parents=True, exist_ok=True)
            if not vol.read_only:
                # Containers run as jovyan (uid 1000): a shared writable volume is
                # writable by all, sticky like /tmp so nobody deletes others' files.
                src.chmod(0o1777)

    def start_hub(self, cfg, portal, hub_port):
        from .images import DockerUnavailable, docker_client

        try:
            client = docker_client()
        except DockerUnavailable as e:
            raise BackendError(f"refusing to start the docker backend: {e}") from None
        from .spawners.docker import PodbayDockerSpawner

        side = docker_workspace_side(client, cfg.docker, hub_port)
        released = portal.book.reconcile(
            lambda a: PodbayDockerSpawner.is_alive(a, client, cfg.docker.network_name), kinds=("workspace",))
        return HubSide(side, released)

    def training(self, portal):
        from .images import DockerUnavailable, require_docker_extra

        try:
            require_docker_extra()
        except DockerUnavailable as e:
            raise BackendError(str(e)) from None
        from .training.docker import DockerBackend as DockerJobs

        return DockerJobs(portal.cfg, portal.data_dir / "jobs")


def docker_workspace_side(client, settings, hub_port: int) -> str:
    """The address where, on the docker backend, the hub's API and podbay's service listen
    for the workspaces: the workspace network's gateway, an address of this server on the
    bridge, not a public one (the loopback, in host mode, with a warning of what that
    exposes). Both ask every caller for a token."""
    from .dockernet import DockerNetworkError, ensure_network, host_mode_warning

    try:
        net = ensure_network(client, settings)
    except DockerNetworkError as e:
        raise BackendError(f"refusing to start the docker backend: {e}") from None
    if net is None:
        print(host_mode_warning(settings), file=sys.stderr)
        return "127.0.0.1"
    try:
        with socket.socket() as s:
            s.bind((net.gateway, 0))
    except OSError as e:
        raise BackendError(
            f"refusing to start the docker backend: the hub must listen on {net.gateway}, "
            f"the gateway of the workspace network {net.name}, but cannot ({e.strerror}). Run the hub "
            "on the Docker host itself (not through a remote DOCKER_HOST), in its network namespace "
            "(network_mode: host, as docker/compose.yaml does).") from None
    print(f"podbay: workspaces run on the Docker network {net.name} ({net.subnet}"
          f"{', internal' if net.internal else ''}); the hub's API listens at {net.gateway}:{hub_port}",
          file=sys.stderr)
    return net.gateway


@lru_cache(maxsize=1)
def available() -> dict[str, object]:
    """Installed backends by name (their entry points, not loaded yet)."""
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def load(name: str) -> Backend:
    found = available().get(name)
    if found is None:
        raise BackendError(f"unknown backend {name!r}: the installed ones are {', '.join(sorted(available()))}")
    plugin = found.load()
    return plugin() if isinstance(plugin, type) else plugin


def chosen(cfg: "PodbayConfig", override: str | None = None) -> str:
    """The backend of this run: the override (PODBAY_BACKEND, --backend), else podbay.yaml's."""
    return override or cfg.backend
