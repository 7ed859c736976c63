"""The environment podbay gives a workspace or a job, on every backend, built in one place.

Workspaces and jobs see the same names: their GPUs (`CUDA_VISIBLE_DEVICES`, and
`NVIDIA_VISIBLE_DEVICES` for the NVIDIA container runtime, "void" when there are none, so
NGC images, which ask for every GPU in their own environment, see none), `PODBAY_IMAGE`,
`PODBAY_TEAM`, `PODBAY_GPU_UNITS`, `PODBAY_VOLUMES`; a workspace adds its profile and where
podbay's service is, a job its id and name.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

# Names podbay sets, or that decide what a workspace is (its devices, its identity towards
# the hub): nobody sets them through podbay.yaml's env:, a secret or a job's env.
RESERVED_ENV = re.compile(r"^(HOME|USER|PATH|CUDA_VISIBLE_DEVICES|NVIDIA_VISIBLE_DEVICES|NVIDIA_.*|PODBAY_.*"
                          r"|JUPYTERHUB_.*|JPY_.*|OAUTH_ACCESS_TOKEN)$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def check_env_name(name: str) -> None:
    """ValueError saying why a variable of this name cannot be set by a person or a team."""
    if not ENV_NAME.match(name):
        raise ValueError(f"{name!r} is not an environment variable name (letters, digits, _)")
    if RESERVED_ENV.match(name):
        raise ValueError(f"{name} is set by podbay and cannot be given")


def settings_env(image_env: dict[str, str], team_env: dict[str, str], secrets: dict[str, str]) -> dict[str, str]:
    """What the platform team and the person add to every workspace and job: the image's
    settings, the team's over them (WANDB_ENTITY), the person's secrets over both
    (WANDB_API_KEY)."""
    return {**image_env, **team_env, **secrets}

# code-server has no login of its own (jupyter-vscode-proxy runs it with --auth none): on a
# TCP port anyone who reaches that port would get the user's editor and terminal. A unix
# socket (mode 0600, in a private directory) is reachable only through the workspace's own
# Jupyter server, behind the hub's login.
VSCODE_ON_SOCKET = {"JUPYTER_VSCODE_PROXY_USE_SOCKET": "1"}


def gpu_env(devices: Iterable[str] | None) -> dict[str, str]:
    """The devices podbay placed (local, docker). None: the engine places them itself
    (Kubernetes' device plugin, Slurm's GRES) and sets these; podbay sets none of them."""
    if devices is None:
        return {}
    ids = ",".join(dict.fromkeys(devices))
    return {"CUDA_VISIBLE_DEVICES": ids, "NVIDIA_VISIBLE_DEVICES": ids or "void"}


def _common(image: str, team: str | None, units: str, volumes: Iterable[str]) -> dict[str, str]:
    return {
        "PODBAY_IMAGE": image,
        "PODBAY_TEAM": team or "",
        "PODBAY_GPU_UNITS": units,
        "PODBAY_VOLUMES": ",".join(volumes),
    }


def workspace_env(*, profile: str, image: str, team: str | None, units: str, volumes: Iterable[str],
                  devices: Iterable[str] | None, service_url: str = "") -> dict[str, str]:
    return {
        **gpu_env(devices),
        **_common(image, team, units, volumes),
        "PODBAY_PROFILE": profile,
        **VSCODE_ON_SOCKET,
        **({"PODBAY_SERVICE_URL": service_url} if service_url else {}),
    }


def job_env(*, job_id: int, name: str, image: str, team: str | None, volumes: Iterable[str],
            devices: Iterable[str] | None, gpus: int, home: str,
            user_env: dict[str, str] | None = None) -> dict[str, str]:
    """A job's environment: the user's own variables first, podbay's over them (the
    service refuses user variables with podbay's names). HOME is the persistent home the
    job's ~/data/<volume> paths live under, as in the workspace it came from. `gpus` is
    what it holds in all (PODBAY_GPU_UNITS), `devices` what podbay placed (None where the
    engine places)."""
    return {
        **(user_env or {}),
        "HOME": home,
        **gpu_env(devices),
        **_common(image, team, str(gpus), volumes),
        "PODBAY_JOB_ID": str(job_id),
        "PODBAY_JOB_NAME": name,
    }
