"""`podbay-local`: workspaces as local JupyterLab processes, the embedded default.

Based on JupyterHub's SimpleLocalProcessSpawner: the demo users need no system
accounts. Each user has a persistent home under the data directory. Volumes appear under
the home through bind mounts in a private mount namespace (`unshare`), so a read-only
volume is read-only even for root, and one workspace's mounts are invisible to others.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time
from pathlib import Path

from jupyterhub.spawner import SimpleLocalProcessSpawner, SpawnException
from traitlets import Float, Integer, default

from ..ledger import Allocation
from ..procs import proc_start_time
from .mixin import PodbaySpawnerMixin


def _tail(path: Path, lines: int) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class PodbayLocalSpawner(PodbaySpawnerMixin, SimpleLocalProcessSpawner):
    log_tail_lines = Integer(
        12, config=True,
        help="How many lines of a workspace's log to show when it dies while starting.",
    )
    ready_poll_interval = Float(
        0.05, config=True,
        help="Seconds between checks that a starting workspace listens or has died.",
    )

    @default("home_dir_template")
    def _default_home_dir_template(self):
        return str(Path(self.data_dir) / "homes" / "{username}")

    @default("notebook_dir")
    def _default_notebook_dir(self):
        return self.home_dir_template.format(username=self.user.name)

    @default("args")
    def _default_args(self):
        # The single-user server refuses root without it; CI and small servers run as root.
        return ["--allow-root"] if os.getuid() == 0 else []

    @property
    def log_path(self) -> Path:
        return Path(self.data_dir) / "logs" / self.user.name / f"{self.name or 'default'}.log"

    @classmethod
    def is_alive(cls, allocation: Allocation) -> bool:
        """Whether the process recorded for this allocation is still the one we started."""
        pid, started = allocation.ref.get("pid"), allocation.ref.get("start_time")
        if not pid:
            # Claimed but not launched yet: a spawn may be in progress in the hub right now
            # (this also runs in `jupyterhub token` and other hub commands). Only a claim
            # older than any start could be is known to be dead.
            return time.time() - allocation.created < 300
        return started is not None and proc_start_time(pid) == started

    async def start(self):
        # podbay_prepare puts the volume launcher in front of self.cmd; keep the configured
        # command so a second start of this spawner does not wrap it twice.
        if not hasattr(self, "_base_cmd"):
            self._base_cmd = list(self.cmd)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        log.write(f"--- podbay: starting at {time.ctime()}\n".encode())
        log.flush()
        self.popen_kwargs = {**self.popen_kwargs, "stdout": log, "stderr": log}
        try:
            # The mixin claims devices (and sets podbay_request) before this reaches Popen.
            ip, port = await super().start()
        finally:
            log.close()
        ref = {"pid": self.pid, "start_time": proc_start_time(self.pid), "log": str(self.log_path)}
        await asyncio.to_thread(self.portal.ledger.set_ref, self.podbay_key, ref)
        try:
            await self._wait_listening(ip, port)
        except BaseException:
            await self.stop(now=True)
            raise
        return ip, port

    def podbay_prepare(self, request):
        # Volumes are per workspace: wrap the configured command in the mount launcher.
        self.cmd = self._launch_prefix() + self._base_cmd

    def _launch_prefix(self) -> list[str]:
        req = self.podbay_request
        if req is None or not req.volumes:
            return []
        home = Path(self.home_dir_template.format(username=self.user.name))
        binds = []
        for vol in req.volumes:
            src = self.portal.volume_source(vol)
            if not src.is_dir():
                raise SpawnException(
                    f"Volume {vol.name} is not available: its source {src} does not exist. "
                    "Ask your platform team.", reason="volume", status_code=503)
            binds += ["--bind", f"{src}:{home / vol.target}:{'ro' if vol.read_only else 'rw'}"]
        unshare = ["unshare", "--mount", "--propagation", "private"]
        if os.getuid() != 0:
            # Without root, a user namespace grants the right to mount, as the same uid.
            unshare[1:1] = ["--user", "--map-current-user"]
        return unshare + [sys.executable, "-m", "podbay.hub.launch", *binds, "--"]

    async def _wait_listening(self, ip: str, port: int) -> None:
        """Return once the workspace accepts connections; fail at once if it exits.

        Without this the hub only notices a dead workspace when its HTTP timeout runs out
        (JupyterHub 6.1 may even answer 500 "Exception is not set"). Here the user gets the
        real cause: the last lines of the workspace's log.
        """
        deadline = time.monotonic() + self.http_timeout
        while time.monotonic() < deadline:
            status = self.proc.poll() if self.proc is not None else None
            if status is not None:
                tail = _tail(self.log_path, self.log_tail_lines)
                raise SpawnException(
                    f"The workspace exited with status {status} while starting. "
                    f"Last lines of its log ({self.log_path}):\n{tail}",
                    reason="exited", status_code=500)
            try:
                with socket.create_connection((ip, port), timeout=0.5):
                    return
            except OSError:
                await asyncio.sleep(self.ready_poll_interval)
        # Let the hub's own wait report the timeout in its usual words.

