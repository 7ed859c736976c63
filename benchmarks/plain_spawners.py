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


def batchspawner(c, config_file: str, data_dir: Path) -> None:
    """batchspawner's SlurmSpawner as its README sets it up (benchmarks/slurm_workspace_start.py),
    on podbay.yaml's workspace partition: the job runs `batchspawner-singleuser
    jupyterhub-singleuser` from the hub's environment (the nodes share it here), as the hub's
    account (exec_prefix: the demo's people have no Unix accounts of their own)."""
    from batchspawner import SlurmSpawner
    from traitlets import default

    from podbay.hub.config import load_config

    homes = Path(data_dir) / "plain-homes"

    class PlainSlurmSpawner(SlurmSpawner):
        # Its own default asks the password database for the hub's user name.
        @default("req_homedir")
        def _homedir(self):
            return str(homes)

        def user_env(self, env):
            env.update(USER=self.user.name, HOME=str(homes), SHELL="/bin/bash")
            return env

    cfg = load_config(config_file, "slurm")
    c.JupyterHub.spawner_class = PlainSlurmSpawner
    c.BatchSpawnerBase.exec_prefix = ""
    c.BatchSpawnerBase.req_partition = cfg.slurm.partition(cfg, "dev")
    c.BatchSpawnerBase.req_runtime = cfg.slurm.workspace_time
    homes.mkdir(parents=True, exist_ok=True)
    # Its first look at the queue is after this many seconds (the default is 30 s between).
    c.BatchSpawnerBase.startup_poll_interval = 0.5
    c.Spawner.args = ["--allow-root"] if os.getuid() == 0 else []
    c.Spawner.start_timeout = 300
    # The test cluster's node names do not resolve: its nodes are this host (NodeAddr 127.0.0.1,
    # which podbay-slurm reads from Slurm); batchspawner's own way to map a host to an address.
    c.SlurmSpawner.state_exechost_re = r"^.*$"
    c.SlurmSpawner.state_exechost_exp = "127.0.0.1"
    # sbatch runs with the spawner's environment, not the hub's, and the job keeps only that
    # (--export): the cluster's slurm.conf, and the PATH to batchspawner-singleuser.
    c.Spawner.environment = {k: os.environ[k] for k in ("SLURM_CONF", "PATH") if k in os.environ}
