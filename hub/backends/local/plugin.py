"""The local backend's plugin, the embedded default: workspaces are JupyterLab processes of
the hub's own user on this machine, jobs are processes too, and podbay's quota book picks
the devices (nobody else does here)."""

from __future__ import annotations

import os
import pwd
import sys
from pathlib import Path

from ..base import Backend, HubSide


class LocalBackend(Backend):
    name = "local"
    spawner = "podbay-local"
    isolates_users = False

    def describe(self, cfg):
        return "local: workspaces run as this hub's user and are NOT isolated from each other (one person only)"

    def isolates(self, cfg):
        # Beside an engine that runs people's jobs as their cluster accounts (slurm's run_as:
        # person), each workspace is its person's account too (Portal.workspace_account).
        from .. import runs_as_people

        return runs_as_people(cfg, self.name)

    def workspace_login(self):
        return pwd.getpwuid(os.getuid()).pw_name

    def workspace_home(self, data_dir, user):
        # PodbayLocalSpawner's home_dir_template.
        return str(Path(data_dir) / "homes" / user)

    def person_home(self, cfg, account):
        # A process on this server: the home where this server mounts it.
        return str(account.home_here)

    def configure(self, c, cfg):
        # The hub's own environment's jupyterhub-singleuser: the workspace runs this Python.
        singleuser = Path(sys.executable).parent / "jupyterhub-singleuser"
        c.Spawner.cmd = [str(singleuser) if singleuser.exists() else "jupyterhub-singleuser"]

    def start_hub(self, cfg, portal, hub_port):
        from .spawner import PodbayLocalSpawner

        return HubSide("127.0.0.1", portal.book.reconcile(PodbayLocalSpawner.is_alive, kinds=("workspace",)))

    def training(self, portal):
        from .jobs import LocalBackend as LocalJobs

        return LocalJobs(portal.data_dir / "jobs")


