"""`podbay doctor` for the docker backend, against the engine itself: it answers, the
workspace network is as podbay.yaml says (or can be made), the catalog's images are built,
the volumes' host folders exist, and a container asking for a GPU the way podbay asks gets
one (the engine's NVIDIA device driver is there: the container toolkit's hook).
"""

from __future__ import annotations

import asyncio
import os

from ...config import PodbayConfig
from ...doctor import Finding
from .images import DockerUnavailable, docker_client, present
from .network import DockerNetworkError, check_network


async def diagnose(cfg: PodbayConfig) -> list[Finding]:
    return await asyncio.to_thread(_diagnose, cfg)


def _diagnose(cfg: PodbayConfig) -> list[Finding]:
    settings = cfg.docker
    try:
        client = docker_client(timeout=30)
    except DockerUnavailable as e:
        return [Finding.fail(f"Docker's engine: {e}", "start the engine, or set DOCKER_HOST where podbay runs")]
    try:
        out = [Finding.ok(f"Docker's engine answers (version {client.version().get('Version', '?')})")]
        out += _network(client, settings)
        built = present(client, list(cfg.images))
        missing = sorted(name for name, ok in built.items() if not ok)
        if missing:
            out.append(Finding.fail(f"images not built on this engine: {', '.join(missing)} (a start on them fails)",
                                    f"podbay images build {' '.join(missing)}"))
        else:
            out.append(Finding.ok(f"the catalog's {len(built)} images are on the engine"))
        for vol in cfg.volumes:
            # A relative source is podbay's own, made under its data folder at start.
            if vol.source and os.path.isabs(vol.source) and vol.name not in settings.named_volumes \
                    and not os.path.isdir(vol.source):
                out.append(Finding.fail(f"volume {vol.name}: its source {vol.source} is not a folder on this host",
                                        "create it (or mount the share there), or fix volumes[].source"))
        out += _gpu_runtime(client, cfg, [n for n, ok in built.items() if ok])
        return out
    finally:
        client.close()


def _network(client, settings) -> list[Finding]:
    from docker.errors import APIError, NotFound

    if settings.network.mode == "host":
        return [Finding.warn("workspaces are on the host's network: not isolated from each other (one person only)",
                             "docker.network.mode: bridge for a shared server")]
    name = settings.network_name
    try:
        found = client.api.inspect_network(name)
    except NotFound:
        if settings.network.create:
            return [Finding.ok(f"the workspace network {name} does not exist yet: podbay makes it at start")]
        return [Finding.fail(f"the workspace network {name} does not exist and docker.network.create is false",
                             "create it (docker network create --driver bridge …) or set docker.network.create: true")]
    except APIError as e:
        return [Finding.fail(f"the workspace network {name} cannot be read: {e}", "check the engine")]
    try:
        check_network(found, settings)
    except DockerNetworkError as e:
        return [Finding.fail(str(e), "remove the network (docker network rm) so podbay makes it as configured, "
                                     "or change docker.network to match it")]
    return [Finding.ok(f"the workspace network {name} is as configured")]


def _gpu_runtime(client, cfg: PodbayConfig, images: list[str]) -> list[Finding]:
    """One throwaway container that asks for a GPU as the spawner does (the engine's device
    driver must be there: it is only where the container toolkit's hook was on dockerd's
    PATH when it started, which nothing else tells)."""
    from docker.errors import APIError, ContainerError, ImageNotFound

    gpus = [g for node in cfg.nodes for g in node.gpus]
    if not gpus:
        return [Finding.ok("no GPUs declared (nodes:): the GPU runtime was not checked")]
    if not images:
        return [Finding.warn("the GPU runtime was not checked: no catalog image is built", "podbay images build")]
    image = cfg.image(images[0]).image
    driver = cfg.docker.gpu_driver
    from docker.types import DeviceRequest

    container = None
    try:
        container = client.containers.create(image, ["true"], entrypoint=[], network_mode="none",
                                             labels={"podbay.doctor": "gpu-runtime"},
                                             device_requests=[DeviceRequest(driver=driver, device_ids=[gpus[0].uuid],
                                                                            capabilities=[["gpu"]])])
        container.start()  # the engine picks the device driver here
        try:
            code = container.wait(timeout=60).get("StatusCode")
        except Exception as e:  # noqa: BLE001 - requests' timeouts: it started, which is the check
            return [Finding.warn(f"a container asking for GPU {gpus[0].uuid} started but did not end in 60 s ({e})")]
        if code:
            raise ContainerError(container, code, ["true"], image, container.logs())
    except (APIError, ContainerError, ImageNotFound) as e:
        text = str(getattr(e, "explanation", None) or e)
        if "could not select device driver" in text:
            return [Finding.fail(f"Docker's engine has no {driver!r} device driver: GPU workspaces and jobs cannot "
                                 "start", "install the NVIDIA container toolkit and restart dockerd "
                                          "(nvidia-ctk runtime configure --runtime=docker), or fix docker.gpu_driver")]
        return [Finding.fail(f"a container asking for GPU {gpus[0].uuid} did not run: {text}",
                             "check the NVIDIA driver and container toolkit on this host (nvidia-smi, "
                             "nvidia-ctk), and that nodes: declares this host's GPUs")]
    finally:
        if container is not None:  # made but not started (the driver's refusal) is removed too
            try:
                container.remove(force=True)
            except APIError:
                pass
    return [Finding.ok(f"a container gets GPU {gpus[0].uuid} through the {driver!r} device driver")]
