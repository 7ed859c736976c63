"""The `docker:` section of podbay.yaml: what workspaces and jobs on one GPU server share
(names, the network, home volumes)."""

from __future__ import annotations

import ipaddress
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from ...config import Slug, _Model


def docker_escape(text: str) -> str:
    """A name part safe for Docker objects: DockerSpawner's default escaping (lowercase
    letters and digits kept, anything else as -XX), so that existing homes keep their names."""
    from escapism import escape

    return escape(text, set("abcdefghijklmnopqrstuvwxyz0123456789"), escape_char="-").lower()


class DockerNetwork(_Model):
    """Where workspace and job containers are on the network.

    `bridge` (the default): a user-defined bridge network. Each container has its own
    network namespace, so its loopback is its own; the hub reaches workspaces at their
    address on the network, and workspaces reach the hub's API at the network's gateway,
    the only address of the host the hub listens on for them.
    `host`: every container shares the host's network, its loopback included, so every
    workspace can reach whatever any other workspace, or the server itself, listens on at
    127.0.0.1. Only for a server with one user."""

    # bridge or host (above).
    mode: Literal["bridge", "host"] = "bridge"
    # The bridge network's name; "<name_prefix>-net" when unset.
    name: str | None = Field(default=None, pattern=r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
    # Create the network when it does not exist; false: it must exist (the operator's own).
    create: bool = True
    # false: an internal network, with no route beyond this server (Docker's --internal).
    outbound: bool = True
    # The IPv4 subnet of a network podbay creates, e.g. 10.213.0.0/24; Docker picks one when unset.
    subnet: str | None = None
    # Containers may not connect to one another (Docker's enable_icc=false, enforced by its
    # iptables rules); false accepts a network where they can, with a warning at start.
    isolated: bool = True

    @field_validator("name")
    @classmethod
    def _not_dockers_own(cls, v: str | None) -> str | None:
        if v in ("bridge", "host", "none"):
            raise ValueError(
                f"{v!r} is one of Docker's own networks, not a network of podbay's: name another "
                "(podbay creates it), or use mode: host for the host's network")
        return v

    @model_validator(mode="after")
    def _host_mode_has_no_bridge_settings(self):
        if self.mode == "host":
            extra = [k for k in ("name", "subnet") if getattr(self, k) is not None]
            if extra:
                raise ValueError(f"mode: host uses the host's network: {', '.join(extra)} would be ignored; remove it")
        return self

    @field_validator("subnet")
    @classmethod
    def _subnet_is_ipv4(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            net = ipaddress.IPv4Network(v, strict=True)
        except ValueError as e:
            raise ValueError(f"{v!r} is not an IPv4 subnet such as 10.213.0.0/24 ({e})") from None
        if net.prefixlen > 29:
            raise ValueError(f"{v} has room for too few containers: use a /29 or larger")
        return v


class DockerSettings(_Model):
    """The docker backend (one GPU server): what workspaces and jobs share."""

    # Containers are <prefix>-ws-<hash> and <prefix>-job-<id>-<hash> (names that do not say whose
    # they are: network.opaque_name); homes <prefix>-home-<user>.
    name_prefix: Slug = "podbay"
    # One home volume per user, or one per named workspace.
    home_per_workspace: bool = False
    # Device-request driver; the NVIDIA container toolkit registers "nvidia".
    gpu_driver: str = "nvidia"
    # Where workspace and job containers are on the network.
    network: DockerNetwork = DockerNetwork()
    # Jobs' network: the workspaces' (above), or none at all.
    job_network: Literal["workspaces", "none"] = "workspaces"
    # Catalog volumes mounted from a Docker named volume instead of their source directory:
    # {volume's name: Docker volume's name} (a name, never a path; not one of podbay's own).
    named_volumes: dict[str, Annotated[str, Field(pattern=r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+$")]] = {}

    @field_validator("job_network", mode="before")
    @classmethod
    def _job_network_host_moved(cls, v):
        if v == "host":
            raise ValueError("job_network: host is gone: jobs share the workspaces' network "
                             "(docker.network; mode: host puts both on the host's network), or none")
        return v
    # Seconds a cancelled job gets between SIGTERM and SIGKILL.
    stop_grace: int = Field(default=10, ge=0)

    @model_validator(mode="after")
    def _named_volumes_are_not_podbays(self):
        # podbay's own volumes (people's homes) are <name_prefix>-…: a catalog volume naming
        # one would hand someone's home to everyone it is allowed to.
        own = [f"{k}: {v}" for k, v in self.named_volumes.items() if v.startswith(f"{self.name_prefix}-")]
        if own:
            raise ValueError(f"named_volumes may not name podbay's own volumes ({self.name_prefix}-…): "
                             + ", ".join(own))
        return self

    @property
    def network_name(self) -> str:
        """What containers are attached to: Docker's "host", or the bridge network's name."""
        if self.network.mode == "host":
            return "host"
        return self.network.name or f"{self.name_prefix}-net"

    @property
    def job_network_name(self) -> str:
        return "none" if self.job_network == "none" else self.network_name

    def home_volume(self, user: str, workspace: str | None = None) -> str:
        """The Docker volume of a user's home (or of one workspace's, where configured), the
        same for the spawner and for jobs."""
        name = f"{self.name_prefix}-home-{docker_escape(user)}"
        if self.home_per_workspace and workspace:
            name += f"--{docker_escape(workspace.lower())}"
        return name
