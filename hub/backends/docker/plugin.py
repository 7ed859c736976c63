"""The docker backend's plugin (one GPU server): workspaces and jobs are containers on a
network of podbay's, the quota book picks the devices, images are built here."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

from .. import BackendError
from ..base import Backend, HubSide


class DockerBackend(Backend):
    name = "docker"
    spawner = "podbay-docker"

    @classmethod
    def settings_model(cls):
        from .settings import DockerSettings

        return DockerSettings

    def _mounts_without_source(self, cfg, vol) -> bool:
        return vol.name in cfg.docker.named_volumes

    def check(self, cfg):
        out = super().check(cfg)
        out += [(("docker", "named_volumes", name), f"no volume named {name!r} under volumes:")
                for name in cfg.docker.named_volumes if cfg.volume(name) is None]
        return out

    async def doctor(self, cfg):
        from .doctor import diagnose

        return await diagnose(cfg)

    def describe(self, cfg):
        if cfg.docker.network.mode == "host":
            return "docker, on the host network: workspaces are NOT isolated from each other (one user only)"
        return f"docker, each workspace in its own network namespace on {cfg.docker.network_name}"

    def prepare_volumes(self, cfg, portal):
        for vol in cfg.volumes:
            if vol.name in cfg.docker.named_volumes or Path(vol.source).is_absolute():
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
        from .spawner import PodbayDockerSpawner

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
        from .jobs import DockerBackend as DockerJobs

        return DockerJobs(portal.cfg, portal.data_dir / "jobs")


def docker_workspace_side(client, settings, hub_port: int) -> str:
    """The address where, on the docker backend, the hub's API and podbay's service listen
    for the workspaces: the workspace network's gateway, an address of this server on the
    bridge, not a public one (the loopback, in host mode, with a warning of what that
    exposes). Both ask every caller for a token."""
    from .network import DockerNetworkError, ensure_network, host_mode_warning

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


