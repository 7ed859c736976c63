"""`podbay-docker`: workspaces as containers of the catalog's images on one GPU server.

The podbay mixin over DockerSpawner. What podbay decides, Docker carries out:

- the image is the catalog entry the user chose (`allowed_images` maps catalog names to
  image references, so DockerSpawner itself refuses anything else too);
- the claimed GPUs go to Docker as a device request naming their exact UUIDs (`GPU-…`,
  `MIG-…`), which the NVIDIA container runtime turns into the devices the container
  sees; a CPU workspace gets `NVIDIA_VISIBLE_DEVICES=void` and no request;
- catalog volumes are bind mounts (or Docker named volumes) under the home, read-only
  where declared; the home is a named volume per user (or per workspace) that outlives
  the container, which is created afresh on every start so that it never keeps the
  devices of an earlier claim;
- each workspace in its own network namespace on the install's bridge network (see
  network.py): the hub reaches it at its address there, on port 8888, and it reaches the
  hub's API at the network's gateway. Nothing it or another workspace listens on at
  127.0.0.1 is visible to anyone else.
- beside a Slurm pool whose jobs run as the person (the hybrid: `slurm.run_as: person`),
  the workspace is the person's cluster account too: the container runs as its uid and
  groups, with an entry of its own in the container's password database, and the home is
  the account's on the site's shared filesystem, mounted where the nodes see it, so that a
  job moved to Slurm finds the same files at the same paths;
- host networking only where the operator opts in (one user on the server): each
  workspace then needs its own port on 127.0.0.1. DockerSpawner would add port bindings,
  which Docker refuses with the host network (dockerspawner issue 462); here no port is
  published and the workspace is told which loopback port to listen on.
"""

from __future__ import annotations

import asyncio
import sys

from docker.errors import APIError, DockerException, ImageNotFound, NotFound
from dockerspawner import DockerSpawner
from jupyterhub.spawner import SpawnException
from jupyterhub.utils import random_port
from traitlets import default

from ...identity import ClusterAccount, NoClusterAccount, home_missing
from ...quota import Allocation
from ...spawner import PodbaySpawnerMixin, spawn_may_be_under_way
from .accounts import groups_of, make_folders_as, write_account
from .network import DockerNetworkError, ensure_network, opaque_name, restricted_host_config

HOME = "/home/jovyan"


class PodbayDockerSpawner(PodbaySpawnerMixin, DockerSpawner):
    @default("podbay_backend")
    def _default_podbay_backend(self):
        return "docker"

    @default("format_volume_name")
    def _literal_volume_names(self):
        # podbay names every mount itself (homes, sources, named volumes): DockerSpawner's
        # {username} templating would make a source mean one thing for a workspace and
        # another for a job (which mounts it as written), and a brace in a path an error.
        return lambda name, spawner: name

    # Names, homes and the GPU driver come from `docker:` in podbay.yaml, which the
    # service's docker training backend reads too.
    @property
    def docker_settings(self):
        return self.portal.cfg.docker

    @default("prefix")
    def _default_prefix(self):
        return self.docker_settings.name_prefix

    @default("network_name")
    def _default_network_name(self):
        return self.docker_settings.network_name

    @default("use_internal_ip")
    def _default_use_internal_ip(self):
        # With the host network there is nothing to publish: skip DockerSpawner's port
        # bindings (issue 462); get_ip_and_port below answers instead.
        return self.network_name == "host" or super()._default_use_ip()

    @default("object_name")
    def _object_name_default(self):
        """Not `<prefix>-<user>--<workspace>`, which Docker's DNS would hand to every other
        workspace (network.opaque_name). A running container keeps the name it had
        (DockerSpawner's state)."""
        return opaque_name(self.docker_settings.name_prefix, "ws", self.user.name, self.name)

    @default("remove")
    def _default_remove(self):
        # A stopped container would come back with the devices of its first claim.
        return True

    @default("ip")
    def _default_ip(self):
        return "127.0.0.1" if self.network_name == "host" else "0.0.0.0"

    @default("allowed_images")
    def _default_allowed_images(self):
        return {image.name: image.image for image in self.portal.cfg.images}

    @default("image")
    def _default_image(self):
        return self.portal.cfg.default_image.image

    @default("notebook_dir")
    def _default_notebook_dir(self):
        return HOME

    @default("pull_policy")
    def _default_pull_policy(self):
        # Workspace images are built on the server (podbay images build); a missing one is
        # reported with that advice rather than looked for in a registry by default.
        return "never"

    # --- start -------------------------------------------------------------------------

    def home_volume(self) -> str:
        # Named by podbay's settings, not this spawner's (configurable) escape: the docker
        # training backend mounts the same home for the same user without a spawner.
        return self.docker_settings.home_volume(self.user.name, self.name or None)

    # The person's cluster account, where workspaces run as people, and its groups (start).
    _account: ClusterAccount | None = None
    _groups_of_account: list[int] = []
    _group_names: dict[int, str] = {}

    @property
    def home(self) -> str:
        """The home inside the container: the image's, or the account's where the nodes have it."""
        return str(self._account.home) if self._account is not None else HOME

    def podbay_prepare(self, request):
        if self.network_name == "host":
            # Every workspace shares the host's ports: each needs its own.
            self.port = random_port()
        self.image = request.image.image
        home, account = self.home, self._account
        if account is None:
            volumes = {self.home_volume(): {"bind": HOME, "mode": "rw"}}
        else:
            # The account's own home, which the Slurm nodes see at the same path: what she
            # writes here a job of hers reads there.
            volumes = {str(account.home_here): {"bind": home, "mode": "rw"}}
        self.notebook_dir = home
        for vol in request.volumes:
            source = self.docker_settings.named_volumes.get(vol.name)
            if not source:
                src = self.portal.volume_source(vol)
                if not src.is_dir():
                    raise SpawnException(
                        f"Volume {vol.name} is not available: its source {src} does not exist on "
                        "this server. Ask your platform team.", reason="volume", status_code=503)
                source = str(src)
            volumes[source] = {"bind": f"{home}/{vol.target}", "mode": "ro" if vol.read_only else "rw"}
        self.volumes = volumes
        self.read_only_volumes = {}
        # Should this spawner object serve a second start (JupyterHub 6.1 makes a new one per
        # start, older versions kept one after a failed spawn), podbay's own settings, the
        # devices above all, are redone from what was configured, never inherited.
        if not hasattr(self, "_base_host_config"):
            self._base_host_config = dict(self.extra_host_config)
            self._base_create_kwargs = dict(self.extra_create_kwargs)
        host_config = {**self._base_host_config, "auto_remove": False,  # keep a dead workspace's output
                       # Nothing in a workspace needs a capability (it runs as jovyan): none,
                       # NET_RAW included (no ARP or spoofing games on the shared bridge), and
                       # no setuid program gains any.
                       **restricted_host_config(self._base_host_config)}
        devices = list(dict.fromkeys(self.podbay_allocation.devices)) if self.podbay_allocation else []
        if devices:
            host_config["device_requests"] = [
                {"driver": self.docker_settings.gpu_driver, "device_ids": devices, "capabilities": [["gpu"]]}]
        self.extra_host_config = host_config
        labels = {**self._base_create_kwargs.get("labels", {}),
                  "podbay.prefix": self.docker_settings.name_prefix, "podbay.workspace": self.podbay_key,
                  "podbay.user": self.user.name,
                  "podbay.profile": request.profile.id, "podbay.image": request.image.name}
        self.extra_create_kwargs = {**self._base_create_kwargs, "labels": labels}
        if account is not None:
            # Her uid and groups, never the image's user: files on the shared filesystem are hers.
            self.extra_create_kwargs["user"] = f"{account.uid}:{account.gid}"
            self.extra_create_kwargs["working_dir"] = home  # not the image's /home/jovyan
            self.extra_host_config["group_add"] = [str(g) for g in self._groups_of_account if g != account.gid]

    def get_env(self):
        env = super().get_env()
        if self._account is not None:
            # Jupyter's runtime files (kernels' connection files, sockets) stay in the container:
            # the shared filesystem's locking is no place for them.
            env.update(HOME=self.home, USER=self._account.name, LOGNAME=self._account.name,
                       JUPYTER_RUNTIME_DIR="/tmp/jupyter-runtime")
        return env

    async def create_object(self):
        if self._account is not None and self.podbay_request is not None and self.podbay_request.volumes:
            paths = [self._account.home_here / vol.target for vol in self.podbay_request.volumes]
            try:
                await asyncio.to_thread(make_folders_as, self._account, self._groups_of_account, paths)
            except OSError as e:
                raise SpawnException(f"Cannot make the volumes' folders in your home: {e}. Ask your platform "
                                     "team if it persists.", reason="volume", status_code=503) from None
        obj = await super().create_object()
        if self._account is not None:
            try:
                await asyncio.to_thread(write_account, self.client, obj["Id"], self._account, self.home,
                                        self._group_names)
            except Exception as e:  # noqa: BLE001 - whatever it was, no container is left behind
                self.log.exception("%s: writing %s's account into the container failed", self.podbay_key,
                                   self._account.name)
                try:
                    await self.docker("remove_container", obj["Id"], force=True)
                except Exception:  # noqa: BLE001 - the engine gone too: the hub's sweep at start removes it
                    pass
                raise SpawnException(f"The workspace could not be given your account ({e}): is /etc/passwd in "
                                     "the image a plain file?", reason="docker", status_code=503) from None
        return obj

    async def pull_image(self, image):
        try:
            await super().pull_image(image)
        except ImageNotFound:
            name = self.podbay_request.image.name if self.podbay_request else image
            raise SpawnException(
                f"The image {image} of workspace image {name!r} is not on this server. "
                f"The platform team builds it with: podbay images build {name}",
                reason="image", status_code=503) from None
        except (APIError, DockerException) as e:
            raise SpawnException(f"The image {image} could not be pulled: {e}", reason="image",
                                 status_code=503) from None

    async def start(self):
        # Where people are their cluster accounts (a Slurm pool runs jobs as them): this one's,
        # and her home on this server, before anything is claimed.
        try:
            self._account = await asyncio.to_thread(self.portal.workspace_account, self.user.name)
        except NoClusterAccount as e:
            raise SpawnException(f"{e}.", reason="account", status_code=403) from None
        if self._account is not None:
            missing = await asyncio.to_thread(home_missing, self._account)
            if missing:
                raise SpawnException(f"{missing}.", reason="home", status_code=503)
            # NSS may be LDAP or SSSD, and slow: off the hub's loop.
            self._groups_of_account, self._group_names = await asyncio.to_thread(groups_of, self._account)
        await self._check_network()
        try:
            ip, port = await super().start()
        except SpawnException:
            raise
        except (APIError, DockerException) as e:
            await self._remove_quietly()
            raise SpawnException(f"Docker could not start the workspace: {_docker_words(e)}",
                                 reason="docker", status_code=503) from None
        await asyncio.to_thread(self.portal.book.set_ref, self.podbay_key,
                                {"container": self.object_id, "name": self.object_name})
        try:
            await self.wait_listening(ip, port, self._died)
        except BaseException:
            await self.stop(now=True)
            raise
        return ip, port

    async def _check_network(self) -> None:
        """The workspace network is there (created again if it was removed), and the hub's
        API, which listens on its gateway, is where the workspace will look for it."""
        if self.network_name == "host":
            return
        settings = self.docker_settings
        if self.network_name != settings.network_name:
            return  # an operator's own DockerSpawner.network_name: theirs to keep right
        try:
            net = await asyncio.to_thread(ensure_network, self.client, settings)
        except DockerNetworkError as e:
            raise SpawnException(f"The workspace network is not usable: {e}", reason="network",
                                 status_code=503) from None
        if net is None or self.hub_connect_url or self.hub.connect_url:
            return  # an operator's own connect URL: theirs to keep right
        if self.hub.ip != net.gateway:
            raise SpawnException(
                f"The hub's API listens at {self.hub.ip}, not at {net.gateway}, the gateway of the "
                f"workspace network {net.name} (was the network created again?): the workspace could "
                "not reach it. Ask your platform team to restart the hub.", reason="network", status_code=503)

    async def get_ip_and_port(self):
        if self.network_name == "host":
            return "127.0.0.1", self.port
        return await super().get_ip_and_port()

    async def _remove_quietly(self):
        try:
            if await self.get_object():
                await self.remove_object()
        except (APIError, DockerException):
            pass

    async def _died(self) -> str | None:
        obj = await self.get_object()
        state = obj["State"] if obj else None
        if state is not None and state["Running"]:
            return None
        code = state["ExitCode"] if state else "unknown"
        return (f"The workspace container exited with status {code} while starting. "
                f"Last lines of its output:\n{await self._logs_tail()}")

    async def _logs_tail(self) -> str:
        try:
            out = await self.docker("logs", self.object_id or self.object_name, tail=self.log_tail_lines)
        except (APIError, DockerException):
            return "(no output: the container is gone)"
        return out.decode(errors="replace").rstrip()

    # --- the quota book at hub start -----------------------------------------------------

    @classmethod
    def is_alive(cls, allocation: Allocation, client=None, network: str | None = None) -> bool:
        """Whether the container recorded for this allocation still runs.

        With `network`, a running container on any other network (one started before the
        workspace network was set up, on the host's network) is stopped and removed: kept, it
        would stay reachable by every other workspace, and could not reach the hub, which no
        longer listens where it looks. Its home is a volume and stays."""
        container = allocation.ref.get("container")
        if not container:
            return spawn_may_be_under_way(allocation)
        if client is None:
            from .images import docker_client
            client = docker_client()
        try:
            found = client.api.inspect_container(container)
        except NotFound:
            return False
        if not found["State"]["Running"]:
            return False
        if network and found["HostConfig"]["NetworkMode"] != network:
            print(f"podbay: stopping {allocation.key}: its container is on the network "
                  f"{found['HostConfig']['NetworkMode']!r}, not {network!r} (its home is kept)", file=sys.stderr)
            client.api.remove_container(container, force=True)
            return False
        return True


def _docker_words(e: Exception) -> str:
    text = getattr(e, "explanation", None) or str(e)
    if "could not select device driver" in str(text):
        return (f"{text}. This Docker engine has no GPU support: install the NVIDIA container "
                "toolkit on the server (nvidia-ctk runtime configure --runtime=docker) and restart Docker.")
    return str(text)
