"""Plain JupyterHub spawners for the benchmarks' comparisons, in place of podbay's:
`podbay up --spawner benchmarks.plain_spawners:simple` (PODBAY_PLAIN_SPAWNER) with this folder's
parent on PYTHONPATH. Each gets the hub's config, podbay.yaml's path and the data directory."""

from __future__ import annotations

import os
from pathlib import Path


def simple(c, config_file: str, data_dir: Path) -> None:
    """Plain JupyterHub (benchmarks/spawn_latency.py)."""
    c.JupyterHub.spawner_class = "simple"
    c.SimpleLocalProcessSpawner.home_dir_template = str(Path(data_dir) / "plain-homes" / "{username}")
    c.Spawner.args = ["--allow-root"] if os.getuid() == 0 else []


def kubernetes(c, config_file: str, data_dir: Path) -> None:
    """Plain KubeSpawner on the catalog's default image (benchmarks/k8s_spawn_latency.py)."""
    from podbay.hub.config import load_config

    cfg = load_config(config_file, "kubernetes")
    c.JupyterHub.spawner_class = "kubespawner.KubeSpawner"
    c.KubeSpawner.namespace = cfg.kubernetes.namespace
    c.KubeSpawner.image = cfg.default_image.image
    c.KubeSpawner.uid = 1000
    c.KubeSpawner.fs_gid = 100


def docker(c, config_file: str, data_dir: Path) -> None:
    """Plain DockerSpawner on the catalog's default image (benchmarks/docker_spawn_latency.py):
    host networking needs what podbay-docker does by itself."""
    from dockerspawner import DockerSpawner
    from jupyterhub.utils import random_port

    from podbay.hub.config import load_config

    class PlainHostDockerSpawner(DockerSpawner):
        async def start(self):
            self.port = random_port()
            return await super().start()

        async def get_ip_and_port(self):
            return "127.0.0.1", self.port

    c.JupyterHub.spawner_class = PlainHostDockerSpawner
    c.DockerSpawner.image = load_config(config_file).default_image.image
    c.DockerSpawner.network_name = "host"
    c.DockerSpawner.use_internal_ip = True
    c.DockerSpawner.remove = True
    c.DockerSpawner.pull_policy = "never"
    c.DockerSpawner.ip = "127.0.0.1"
    c.DockerSpawner.prefix = "plain"
    c.DockerSpawner.volumes = {"plain-home-{username}": "/home/jovyan"}
