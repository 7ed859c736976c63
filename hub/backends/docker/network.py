"""The docker backend's workspace network: one user-defined bridge network for every
workspace and job container of an install.

On it each container has its own network namespace: its loopback is its own, so nothing a
user starts on 127.0.0.1 (code-server, TensorBoard, a dev server) is visible to anyone else,
and the host's loopback services (the proxy's API, a database) are out of reach. The hub, on
the host, reaches each workspace at its address on the network; workspaces reach the hub's
API and podbay's service at the network's gateway, the host's own address on that bridge,
which is where these two listen (both ask for a token).

A network podbay creates has inter-container communication off
(`com.docker.network.bridge.enable_icc=false`), so on an engine that manages iptables (the
default) containers cannot connect to one another at all, only to the hub; and, where the
deployment says `outbound: false`, it is internal (no route beyond this server). Both are
enforced by Docker's iptables rules: an engine started with --iptables=false keeps
containers apart only by their own namespaces, and their Jupyter servers by the hub's
authentication.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import os
from typing import NamedTuple

from .settings import DockerSettings

log = logging.getLogger("podbay.docker.network")

ICC = "com.docker.network.bridge.enable_icc"


class DockerNetworkError(RuntimeError):
    """The workspace network cannot be used as configured; the message says what to do."""


class WorkspaceNetwork(NamedTuple):
    name: str
    gateway: str
    subnet: str
    internal: bool
    isolated: bool  # inter-container communication off


def opaque_name(prefix: str, kind: str, *parts: object) -> str:
    """A container name that does not say whose it is. Docker's embedded DNS answers every
    container's name on the workspace network to any other container there (no resolv.conf
    keeps a workspace from asking it directly): `podbay-alice--dev` would hand her address to
    everyone. A keyed hash of `parts` is the same at every start (a leftover is found again)
    and cannot be guessed; labels say whose the container is. The key is the hub's crypt key
    (the first, when several are given for a rotation), which the hub and podbay's service
    both hold."""
    return f"{prefix}-{kind}-{keyed_digest(*parts)}"


def keyed_digest(*parts: object) -> str:
    key = (os.environ.get("JUPYTERHUB_CRYPT_KEY") or os.environ.get("PODBAY_SECRETS_KEY") or "").split(";")[0]
    return hmac.new(f"podbay-container:{key}".encode(), "\n".join(map(str, parts)).encode(),
                    hashlib.sha256).hexdigest()[:20]


def restricted_host_config(base: dict | None = None) -> dict:
    """What every workspace and job container runs with: no capability (a deployment's own
    cap_add or security_opt in DockerSpawner.extra_host_config is kept), and no privilege
    gained through setuid programs."""
    base = base or {}
    return {"cap_drop": ["ALL"], "cap_add": list(base.get("cap_add") or []),
            "security_opt": list(dict.fromkeys([*(base.get("security_opt") or []), "no-new-privileges:true"]))}


def host_mode_warning(settings: DockerSettings) -> str:
    return (
        "podbay: WARNING: docker.network.mode is host. Every workspace and job shares this "
        "server's network: each can reach whatever any other workspace, and the server itself, "
        "listens on 127.0.0.1 — another user's VS Code, Jupyter kernels, TensorBoard, the "
        "proxy's API. Use it only on a server with one user; remove `mode: host` for a bridge "
        "network with one network namespace per container.")


def ensure_network(client, settings: DockerSettings) -> WorkspaceNetwork | None:
    """The workspace network, created as configured when it is missing; None in host mode.

    `client` is a docker SDK client or its low-level APIClient (DockerSpawner's)."""
    if settings.network.mode == "host":
        return None
    from docker.errors import APIError, NotFound

    api = getattr(client, "api", client)
    want = settings.network
    name = settings.network_name
    try:
        found = api.inspect_network(name)
    except NotFound:
        if not want.create:
            options = [f"-o {ICC}=false"] if want.isolated else []
            options += ["--internal"] if not want.outbound else []
            options += [f"--subnet {want.subnet}"] if want.subnet else []
            raise DockerNetworkError(
                f"the Docker network {name!r} (docker.network.name) does not exist, and "
                "docker.network.create is false. Create it (docker network create --driver bridge "
                f"{' '.join(options + [name])}) or let podbay create it (create: true).") from None
        found = None
    except APIError as e:
        raise DockerNetworkError(f"the Docker network {name!r} cannot be read: {e}") from None
    if found is None:
        found = _create(api, settings, name)
    return check_network(found, settings)


def _create(api, settings: DockerSettings, name: str) -> dict:
    from docker.errors import APIError, NotFound
    from docker.types import IPAMConfig, IPAMPool

    want = settings.network
    ipam = None
    if want.subnet:
        # Named, so that inspecting it says where the hub listens (Docker leaves it out otherwise).
        gateway = str(next(ipaddress.IPv4Network(want.subnet).hosts()))
        ipam = IPAMConfig(pool_configs=[IPAMPool(subnet=want.subnet, gateway=gateway)])
    try:
        api.create_network(
            name, driver="bridge", internal=not want.outbound, ipam=ipam, check_duplicate=True,
            options={ICC: "false" if want.isolated else "true"},
            labels={"podbay.prefix": settings.name_prefix, "podbay.network": "workspaces"})
        log.info("created the workspace network %s", name)
    except APIError as e:
        failure = e  # the hub and the REST service may both create it at once: the loser finds it made
    else:
        failure = None
    try:
        return api.inspect_network(name)
    except (NotFound, APIError) as e:
        raise DockerNetworkError(f"podbay could not create the Docker network {name!r}: "
                                 f"{getattr(failure or e, 'explanation', None) or failure or e}") from None


def check_network(found: dict, settings: DockerSettings) -> WorkspaceNetwork:
    want = settings.network
    name = found["Name"]
    if found.get("Driver") != "bridge":
        raise DockerNetworkError(
            f"the Docker network {name!r} uses the {found.get('Driver')} driver; podbay's "
            "workspace network must be a bridge network on this server.")
    internal = bool(found.get("Internal"))
    if internal == want.outbound:
        has = "is internal (no outbound access)" if internal else "has outbound access (it is not internal)"
        raise DockerNetworkError(
            f"the Docker network {name!r} {has}, but podbay.yaml says docker.network.outbound: "
            f"{str(want.outbound).lower()}. Remove the network (docker network rm {name}, with no "
            "container attached) for podbay to create it as configured, or change the setting.")
    configs = (found.get("IPAM") or {}).get("Config") or []
    v4 = [c for c in configs if c.get("Subnet") and ipaddress.ip_network(c["Subnet"]).version == 4]
    if not v4:
        raise DockerNetworkError(f"the Docker network {name!r} has no IPv4 subnet.")
    subnet = ipaddress.IPv4Network(v4[0]["Subnet"])
    gateway = v4[0].get("Gateway") or str(next(subnet.hosts()))
    if want.subnet and subnet != ipaddress.IPv4Network(want.subnet):
        raise DockerNetworkError(
            f"the Docker network {name!r} has the subnet {subnet}, but podbay.yaml says "
            f"docker.network.subnet: {want.subnet}. Remove the network (docker network rm "
            f"{name}) or change the setting.")
    isolated = (found.get("Options") or {}).get(ICC) == "false"
    if not isolated and want.isolated:
        raise DockerNetworkError(
            f"containers on the Docker network {name!r} can connect to one another ({ICC} is not "
            "false), so every workspace could reach what other users' workspaces open on it. "
            f"Remove the network (docker network rm {name}) for podbay to create it isolated, "
            "or set docker.network.isolated: false to accept that.")
    if not isolated:
        log.warning("containers on the Docker network %s can connect to one another (isolated: false): "
                    "workspaces' open ports are reachable by other users' workspaces", name)
    return WorkspaceNetwork(name, gateway, str(subnet), internal, isolated)
