"""`podbay-local`: workspaces as local JupyterLab processes, the embedded default.

Based on JupyterHub's SimpleLocalProcessSpawner: the demo users need no system
accounts. Each user has a persistent home under the data directory. Where an engine of the
deployment runs people's jobs as their cluster accounts (slurm's run_as: person), the
workspace does too: it becomes the person's account once its volumes are mounted, in the
account's own home, so a job moved from it finds its files, and they are the person's. Volumes appear under
the home through bind mounts in a private mount namespace (`unshare`), so a read-only
volume is read-only even for root, and one workspace's mounts are invisible to others.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from jupyterhub.spawner import SimpleLocalProcessSpawner, SpawnException
from traitlets import default

from ...identity import NoClusterAccount, home_missing
from ...launch import launcher
from ...procs import proc_start_time
from ...quota import Allocation
from ...spawner import PodbaySpawnerMixin, spawn_may_be_under_way
from ...workspace import quiet_jupyter


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
    @default("podbay_backend")
    def _default_podbay_backend(self):
        return "local"

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
            return spawn_may_be_under_way(allocation)
        return started is not None and proc_start_time(pid) == started

    async def start(self):
        # podbay_prepare puts the volume launcher in front of self.cmd; keep the configured
        # command so a second start of this spawner does not wrap it twice.
        if not hasattr(self, "_base_cmd"):
            self._base_cmd = list(self.cmd)
            self._configured_port = self.port
        try:
            # An account to look up (a lookup that may block) only where workspaces run as
            # people; elsewhere no hop to a thread and back through the hub's busy loop.
            self._account = (await asyncio.to_thread(self.portal.workspace_account, self.user.name)
                             if self.portal.runs_as_people else None)
        except NoClusterAccount as e:
            raise SpawnException(f"{e}.", reason="account", status_code=403) from None
        if self._account is not None:
            if os.geteuid() != 0:
                raise SpawnException(
                    "Workspaces run as each person's cluster account here, and only a hub running as root can start "
                    "them so. Ask your platform team (docs/howto/slurm.md).", reason="account", status_code=503)
            missing = await asyncio.to_thread(home_missing, self._account)  # a stat on the shared FS
            if missing:
                raise SpawnException(f"{missing}.", reason="home", status_code=503)
            self.home_dir = self.notebook_dir = str(self._account.home_here)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        log.write(f"--- podbay: starting at {time.ctime()}\n".encode())
        log.flush()
        self._watch_log_from(log.tell())
        # This start's own (its log, podbay_prepare's), on what is configured now (a
        # pre_spawn_hook's included), which they never replace for the next start.
        self._configured_popen_kwargs = configured = self.popen_kwargs
        self.popen_kwargs = {**configured, "stdout": log, "stderr": log}
        recording = launched = None
        try:
            # The mixin claims devices (and sets podbay_request) before this reaches Popen.
            ip, port = await super().start()
            launched = True
            for tries_left in range(self.port_tries - 1, -1, -1):
                ref = {"pid": self.pid, "start_time": proc_start_time(self.pid), "log": str(self.log_path)}
                # Recorded while the workspace comes up, and before start returns.
                recording = asyncio.ensure_future(asyncio.to_thread(self.portal.book.set_ref, self.podbay_key, ref))
                try:
                    await self.wait_listening(ip, port, self._died)
                    break
                except SpawnException:
                    if not tries_left or self._configured_port or not self._port_taken(port):
                        raise
                await recording
                # JupyterHub's port was free when it chose it (bind, close, hand the number
                # over) and taken by the time the server bound it: an outgoing connection
                # got it from the same ephemeral range meanwhile (jupyterhub/jupyterhub#3005),
                # the likelier the busier the machine. The same claim, another port.
                self.log.warning("%s: port %s was taken before its server bound it; starting again on another",
                                 self.podbay_key, port)
                # The server, not the claim; and the token JupyterHub made for this start, which
                # the stop forgets (clear_state) and the next try's server must present.
                token = self.api_token
                await super(PodbaySpawnerMixin, self).stop(now=True)
                self.api_token = token
                log.write(f"--- podbay: port {port} was taken meanwhile; starting again on another\n".encode())
                log.flush()
                self._watch_log_from(log.tell())
                self.port = 0
                ip, port = await super(PodbaySpawnerMixin, self).start()
            await recording
        except BaseException:
            if recording is not None:
                await asyncio.gather(recording, return_exceptions=True)
            if launched:
                await self.stop(now=True)
            raise
        finally:
            log.close()
            self.popen_kwargs = configured
        return ip, port

    port_tries = 3

    def _watch_log_from(self, offset: int) -> None:
        """Where this try's output starts in the log (_port_taken reads on from there)."""
        self._log_seen, self._log_carry, self._port_lost = offset, b"", None

    def _port_taken(self, port: int) -> bool:
        """Whether the server found its port taken, in jupyter-server's own words (it says so,
        and may linger for seconds before it exits). It runs at every poll of a starting
        workspace, on the hub's loop: a stat while the log has not grown, and never more than
        its last 64 KiB read (a person's startup files may print without end)."""
        if self._port_lost != port:
            try:
                size = os.stat(self.log_path).st_size
                if size < self._log_seen:  # cut short (an operator's logrotate): read it anew
                    self._log_seen, self._log_carry = 0, b""
                if size <= self._log_seen:
                    return False
                with self.log_path.open("rb") as f:
                    start = max(self._log_seen, size - 65536)
                    f.seek(start)
                    new = f.read(size - start)
            except OSError:
                return False
            carry = self._log_carry if start == self._log_seen else b""
            text, self._log_seen = carry + new, start + len(new)
            self._log_carry = text[-80:]  # a line cut between two looks
            if f"The port {port} is already in use".encode() in text:
                self._port_lost = port
        return self._port_lost == port

    def podbay_prepare(self, request):
        # Volumes are per workspace: wrap the configured command in the mount launcher.
        self.cmd = self._launch_prefix() + self._base_cmd
        if (self._account is None and not {"preexec_fn", "cwd"} & set(self._configured_popen_kwargs)
                and type(self).make_preexec_fn is SimpleLocalProcessSpawner.make_preexec_fn):
            # The home is the hub's own: made here and entered through Popen's cwd, as
            # JupyterHub's preexec_fn does in the child. With no Python to run in the child,
            # Popen uses vfork instead of copying the hub's memory (fork): 8-16 ms less of the
            # hub's loop per start, more as the hub grows (benchmarks/spawn_storm.py). Only
            # where nobody configured what the child does (popen_kwargs, a subclass's preexec).
            try:
                os.makedirs(self.home_dir, 0o755, exist_ok=True)
            except OSError:
                return  # JupyterHub's preexec_fn tries again, and says why not
            if not os.access(self.home_dir, os.X_OK):
                return  # the same: Popen's cwd would fail with a message that names the program
            self.popen_kwargs = {**self.popen_kwargs, "preexec_fn": None, "cwd": self.home_dir}

    def get_env(self):
        # The hub's own JupyterLab, started quiet (workspace/__init__.py).
        env = quiet_jupyter(super().get_env())
        account = getattr(self, "_account", None)
        if account is None:
            return env
        # The launcher runs as root until it becomes the person: it gets no variable of
        # theirs (LD_PRELOAD, a secret's name, would be root's), and reads the workspace's
        # environment from a file only root may read, which it removes.
        path = self._env_file
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(b"".join(f"{k}={v}".encode() + b"\0" for k, v in env.items()))
        return {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}

    @property
    def _env_file(self) -> Path:
        return Path(self.data_dir) / "run" / self.user.name / f"{self.name or 'default'}.env"

    def user_env(self, env):
        env = super().user_env(env)
        account = getattr(self, "_account", None)
        if account is not None:
            env.update(USER=account.name, LOGNAME=account.name, HOME=str(account.home_here))
        return env

    def _launch_prefix(self) -> list[str]:
        req = self.podbay_request
        account = getattr(self, "_account", None)
        if req is None or not req.volumes:
            return launcher([], user=account.name, env_file=str(self._env_file), home=self.home_dir) \
                if account is not None else []
        home = Path(self.home_dir)
        binds = []
        for vol in req.volumes:
            src = self.portal.volume_source(vol)
            if not src.is_dir():
                raise SpawnException(
                    f"Volume {vol.name} is not available: its source {src} does not exist. "
                    "Ask your platform team.", reason="volume", status_code=503)
            binds.append((str(src), str(home / vol.target), vol.read_only))
        if account is None:
            return launcher(binds)
        return launcher(binds, user=account.name, env_file=str(self._env_file), home=self.home_dir)

    async def _died(self) -> str | None:
        status = self.proc.poll() if self.proc is not None else None
        if status is None:
            if not self._port_taken(self.port):
                return None
            return (f"The workspace could not listen on port {self.port}: another program has it. "
                    f"Last lines of its log ({self.log_path}):\n{_tail(self.log_path, self.log_tail_lines)}")
        return (f"The workspace exited with status {status} while starting. "
                f"Last lines of its log ({self.log_path}):\n{_tail(self.log_path, self.log_tail_lines)}")
