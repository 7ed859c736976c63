"""The environment podbay gives a workspace or a job, on every backend, built in one place.

Workspaces and jobs see the same names: their GPUs (`CUDA_VISIBLE_DEVICES`, and
`NVIDIA_VISIBLE_DEVICES` for the NVIDIA container runtime, "void" when there are none, so
NGC images, which ask for every GPU in their own environment, see none), `PODBAY_IMAGE`,
`PODBAY_TEAM`, `PODBAY_GPU_UNITS`, `PODBAY_VOLUMES`; a workspace adds its profile and where
podbay's service is, a job its id and name.
"""

from __future__ import annotations

from collections.abc import Iterable

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
