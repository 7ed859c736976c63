"""`podbay-slurm`: workspaces as Slurm jobs on the partition of their profile's pool
(`slurm.workspaces: slurm`), as at Slurm-only sites, reached through the hub.

On batchspawner's model (a batch job that runs jupyterhub-singleuser on a node, found again
by its job id after a hub restart), but podbay's own: batchspawner needs its own package
inside every image (its `batchspawner-singleuser` reports the port to an API handler of the
hub's), and submits as the person with `sudo -E`, which hands the hub's environment on.
Here the job needs nothing but jupyterhub-singleuser, which every workspace image has, and
is submitted as the slurm backend submits jobs (jobs.py): as the person's cluster account
through the site's sudoers, its environment through `--export-file`, every option on sbatch's
command line.

How the hub finds the workspace: the job picks a free port on its node and writes it to
`~/.podbay/workspaces/<job name>/port` (as the person, in their home, read back through
`dd` as them); the node is the one Slurm says the job runs on, its address Slurm's
NodeAddr. The hub routes there only once what answers is this workspace's own server (it
answers under the workspace's URL), whatever the person wrote in the file.

While the job waits, its pending reason (Resources, Priority, AssocGrpGRES…) is the spawn's
progress (the spawn page, `podbay ws new`, the TUI). The job's end is the server's: stopping
the server cancels the job (as the person), and a job Slurm ends (walltime, preemption, a
node failure) stops the server, with Slurm's word for why kept in the spawner's state and
said at the next start.

Long because: it is one spawner (the job's options and script, submit, the wait with its
reasons, poll, stop, the state kept across restarts), and what it makes of Slurm's answers
belongs next to the calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shlex
import sys
import time
from functools import lru_cache
from pathlib import Path

from jupyterhub.spawner import Spawner, SpawnException
from traitlets import Float, Unicode, default

from ...identity import NoClusterAccount, here, on_cluster
from ...launch import launcher
from ...quota import Allocation
from ...spawner import PodbaySpawnerMixin, spawn_may_be_under_way
from ...training import BackendUnavailable
from ...workspace import quiet_jupyter
from .commands import Commands, SlurmError, export_file
from .jobs import RUNNING, WAITING, SlurmJobs, enroot_image, reason_words

# Picks a free port where the job runs and writes it where the hub reads it: plain Python,
# which every workspace image has (jupyterhub-singleuser is Python).
_FREE_PORT = ("import socket; s = socket.socket(); s.bind(('', 0)); print(s.getsockname()[1])")
_WRAPPER = ('set -e; port="$("$PODBAY_PYTHON" -c "$PODBAY_FREE_PORT")"; '
            'printf "%s %s\\n" "$SLURM_JOB_ID" "$port" > "$PODBAY_PORT_FILE.new"; mv -f "$PODBAY_PORT_FILE.new" "$PODBAY_PORT_FILE"; '
            'exec "$@" --ip="$PODBAY_BIND_IP" --port="$port"')


# Why a job waits that waiting will not change: a workspace's start fails at once, saying so,
# rather than when its wait runs out.
NEVER = ("PartitionTimeLimit", "PartitionNodeLimit", "InvalidAccount", "InvalidQOS", "AssocMaxWallDurationPerJobLimit",
         "QOSMaxWallDurationPerJobLimit", "PartitionConfig", "BadConstraints")


@lru_cache(maxsize=None)
def _jobs(portal) -> SlurmJobs:
    """One view of Slurm per portal (the hub's): the queue is asked once for every workspace."""
    return SlurmJobs(portal.cfg, portal.data_dir / "homes")


def live_jobs(commands: Commands, ids: list[str]) -> set[str] | None:
    """Which of these Slurm jobs still run or wait, in one squeue; None where Slurm cannot
    say (out of reach, or refusing): then every one is taken to live."""
    if not ids:
        return set()
    try:
        text = commands.run("squeue", "-h", "-t", "all", "-j", ",".join(ids), "-o", "%i %T", timeout=10)
    except SlurmError as e:
        # Every id unknown: slurmctld has forgotten them all (they ended long ago).
        return set() if "invalid job id" in str(e).lower() else None
    except BackendUnavailable:
        return None
    return {line.split()[0] for line in text.splitlines()
            if len(line.split()) == 2 and line.split()[1] in RUNNING | WAITING}


def slurm_job_alive(live: set[str] | None, allocation: Allocation) -> bool:
    """Whether the Slurm job recorded for a workspace's claim still runs or waits (the hub's
    reconciliation at start)."""
    slurm_id = allocation.ref.get("slurm_id")
    if not slurm_id:
        return spawn_may_be_under_way(allocation)
    return live is None or str(slurm_id) in live


# What the hub keeps of a workspace's job across its restarts (get_state).
STATE = ("slurm_id", "node", "account", "job_dir", "home", "ended")


class SlurmJobSpawner(Spawner):
    """The workspace as a Slurm job; PodbaySlurmSpawner puts podbay's mixin in front."""

    slurm_poll_interval = Float(1.0, config=True,
                                help="Seconds between looks at a starting workspace's job in Slurm's queue.")
    python = Unicode("python3", config=True,
                     help="""The Python the job picks its port with, on the node or in the image
                     (slurm.container: none uses the hub's own: the nodes share its software tree).""")

    # What Slurm said of the job, kept in the hub's database (get_state) across restarts.
    slurm_id: str = ""
    node: str = ""
    account: str = ""
    job_dir: str = ""
    home: str = ""
    # Why the last job ended, when Slurm ended it: said at the next start.
    ended: str = ""
    _reason: str = ""
    _last_end: str = ""
    _stopping: bool = False

    @property
    def jobs(self) -> SlurmJobs:
        return _jobs(self.portal)

    @property
    def commands(self) -> Commands:
        return self.jobs.commands

    @property
    def job_name(self) -> str:
        # The prefix keeps podbay's jobs together in the queue (jobs.py's _queued reads them).
        return f"{self.jobs.settings.job_prefix}-ws-{self.user.name}" + (f"-{self.name}" if self.name else "")

    # --- state ---------------------------------------------------------------------

    def load_state(self, state):
        super().load_state(state)
        for key in STATE:
            setattr(self, key, state.get(key, ""))

    def get_state(self):
        state = super().get_state()
        state.update({k: v for k in STATE if (v := getattr(self, k))})
        return state

    def clear_state(self):
        super().clear_state()
        # `ended` stays: the next start says why the last workspace stopped.
        self.slurm_id = self.node = self.account = self.job_dir = self.home = ""

    # --- the job ---------------------------------------------------------------------

    def _partition(self, request) -> str:
        for pool in request.pools:
            partition = self.jobs.queue_of(pool)
            if partition:
                return partition
        raise SpawnException(f"Profile {request.profile.id} runs in no pool with a Slurm partition "
                             f"({', '.join(request.pools)}): ask your platform team.", reason="options")

    def _slice(self, request) -> list[str]:
        spec, s = request.profile.spec, self.jobs.settings
        if spec.kind == "mig":
            # A MIG slice is a GRES type of its own (slurm.mig_types: the site's name for it).
            return [f"--gres={s.gres}:{s.mig_type(spec.mig_profile)}:1"]
        if spec.kind == "shared":
            raise SpawnException("Slurm hands out whole GPUs and MIG slices, not time-sliced shares: choose another "
                                 "profile, or ask your platform team to remove this one from the pool.", reason="options")
        return []

    def sbatch_args(self, request, out: Path, export_fd: int) -> list[str]:
        s, spec = self.jobs.settings, request.profile.spec
        # A job's own request (partition, one node and task, time, account, QOS, whole GPUs);
        # a MIG slice is a GRES of its own type.
        args = [f"--job-name={self.job_name}",
                *self.jobs.request_args(team=request.team, partition=self._partition(request), nodes=1,
                                        gpus_per_node=spec.count if spec.kind == "full" else 0,
                                        time_limit=s.workspace_time), *self._slice(request)]
        if s.workspace_cpus:
            args.append(f"--cpus-per-task={s.workspace_cpus}")
        if s.workspace_mem:
            args.append(f"--mem={s.workspace_mem}")
        # One run's output (the last lines a failed start shows are its own); never requeued
        # (after a node failure or preemption the server is gone: the hub must see it end, not
        # keep a route to where it was).
        return [*args, f"--chdir={self.home}", f"--output={out}", f"--error={out}", "--open-mode=truncate",
                "--no-requeue", "--export=ALL", f"--export-file={export_fd}",
                f"--comment=podbay workspace {self.user.name}/{self.name or 'default'}"[:250], "--parsable"]

    def script(self, request) -> str:
        s = self.jobs.settings
        home = self.home
        lines = ["#!/bin/bash", f"# podbay workspace {self.user.name}/{self.name or 'default'}: "
                                "sbatch's options are in `scontrol show job`.",
                 f"cd -- {shlex.quote(home)} 2>/dev/null || "
                 f"{{ echo {shlex.quote(f'podbay: cannot enter the home {home}')} >&2; exit 2; }}"]
        # Sources as the nodes see them (cluster_accounts.paths).
        binds = [(on_cluster(self.portal.cfg, self.portal.volume_source(v)), str(Path(home) / v.target), v.read_only)
                 for v in request.volumes]
        command = [*self.cmd, *self.get_args()]
        if s.container == "pyxis":
            mounts = [f"{home}:{home}"] + [f"{src}:{dst}" + (":ro" if ro else "") for src, dst, ro in binds]
            prefix = ["srun", "--ntasks=1", f"--container-image={enroot_image(request.image.image)}",
                      f"--container-mounts={','.join(mounts)}", f"--container-workdir={home}",
                      "--no-container-mount-home"]
        else:
            # No container: the volumes appear under the home in a mount namespace of the job's
            # own (a user namespace: the job is the person's, not root's).
            prefix = launcher(binds, quiet=True, unprivileged=True) if binds else []
        lines.append(shlex.join(["exec", *prefix, "bash", "-c", _WRAPPER, "podbay-workspace", *command]))
        return "\n".join(lines) + "\n"

    def export_env(self) -> bytes:
        env = self.get_env()
        if self._python() == sys.executable:
            # The hub's own JupyterLab (the nodes share its software tree), started quiet.
            env = quiet_jupyter(env)
        return export_file({
            "PATH": self.commands.env.get("PATH", "/usr/local/bin:/usr/bin:/bin"), **env,
            "HOME": self.home, "USER": self.account, "LOGNAME": self.account,
            "PODBAY_PORT_FILE": str(Path(self.job_dir) / "port"), "PODBAY_FREE_PORT": _FREE_PORT,
            "PODBAY_PYTHON": self._python(), "PODBAY_BIND_IP": self.jobs.settings.workspace_bind})

    def _python(self) -> str:
        if self.jobs.settings.container == "none" and self.python == "python3":
            return sys.executable
        return self.python

    # --- start, poll, stop --------------------------------------------------------------

    async def _submit(self) -> None:
        request, user = self._request, self.account
        self.job_dir = str(Path(self.home) / ".podbay" / "workspaces" / self.job_name)
        await self.commands.arun("mkdir", "-p", "-m", "0700", "--", here(self.portal.cfg, self.job_dir), user=user)
        # A job of this name left by a start the hub lost track of (it stopped, or its sbatch
        # timed out after Slurm took the job) is never left running beside this one.
        await self.commands.arun("scancel", f"--name={self.job_name}", user=user)
        out = Path(self.job_dir) / "output.log"
        self.slurm_id = await self.commands.sbatch(lambda fd: self.sbatch_args(request, out, fd), self.script(request),
                                                   self.export_env(), user)
        await asyncio.to_thread(self.portal.book.set_ref, self.podbay_key,
                                {"slurm_id": self.slurm_id, "account": self.account, "job_dir": self.job_dir})

    async def _look(self) -> tuple[str, str, str]:
        """(state, reason, node) of the job, from the queue; ("", "", "") once it has left."""
        try:
            text = await self.commands.arun("squeue", "-h", "-j", self.slurm_id, "-o", "%T|%r|%B", timeout=15)
        except SlurmError as e:
            if "invalid job id" in str(e).lower():
                return "", "", ""  # slurmctld has forgotten it: accounting says how it ended
            raise
        line = (text.strip().splitlines() or [""])[0]
        state, reason, node = (line.split("|") + ["", ""])[:3]
        return state.strip(), reason.strip(), node.strip()

    async def _ending(self, state: str = "") -> tuple[int, str] | None:
        """(exit status, why in words) once the job has ended; None while it runs."""
        status = await self.jobs.ended(self.slurm_id, state)
        if status.state in ("running", "pending"):
            return None
        if status.state == "exited":
            code = status.exit_code or 0
            return code, status.message or f"the workspace exited with status {code}"
        return 1, status.message or "Slurm ended it"

    async def _port(self) -> int | None:
        data = await self.commands.read_as(self.account, here(self.portal.cfg, Path(self.job_dir) / "port"), 0, 32)
        # "<job id> <port>": a port an earlier job of this name left is not this one's.
        job, _, port = data.decode(errors="replace").strip().partition(" ")
        if job != self.slurm_id or not port.isdigit() or not 1024 <= int(port) <= 65535:
            return None
        return int(port)

    async def _address(self, node: str) -> str:
        text = await self.commands.arun("scontrol", "show", "node", node, "--oneliner", timeout=15)
        m = re.search(r"\bNodeAddr=(\S+)", text)
        return m.group(1) if m else node

    async def _output_tail(self) -> str:
        if not self.job_dir:
            return ""
        data = await self.commands.read_as(self.account, here(self.portal.cfg, Path(self.job_dir) / "output.log"),
                                           0, 1 << 16)
        return "\n".join(data.decode(errors="replace").splitlines()[-self.log_tail_lines:])

    async def start(self):
        """Submit, wait in the queue, then for the server's port."""
        # What ended the last one is said once, by this start's progress.
        self._reason, self._last_end, self.ended, self._stopping = "", self.ended, "", False
        try:
            await self._submit()
        except NoClusterAccount as e:
            raise SpawnException(f"{e}.", reason="account", status_code=403) from None
        except (SlurmError, BackendUnavailable) as e:
            raise SpawnException(f"Slurm did not take the workspace's job: {e}", reason="slurm", status_code=503) from None
        self.log.info("%s is Slurm job %s (as %s)", self.podbay_key, self.slurm_id, self.account)
        queued_at = time.monotonic()
        try:
            while True:
                try:
                    state, reason, node = await self._look()
                except BackendUnavailable as e:
                    self._reason = str(e)
                    await asyncio.sleep(self.slurm_poll_interval)
                    continue
                if state in WAITING and reason.strip("()") in NEVER:
                    raise SpawnException(f"Slurm will never start this workspace's job {self.slurm_id} as asked: "
                                         f"{reason_words(reason)}. Ask your platform team (slurm.workspace_time, "
                                         "the partition's limits).", reason="slurm", status_code=503)
                if state in WAITING:
                    self._reason = f"Waiting in Slurm's queue (job {self.slurm_id}): {reason_words(reason)}"
                    if time.monotonic() - queued_at > self.jobs.settings.workspace_wait:
                        raise SpawnException(
                            f"The workspace waited {self.jobs.settings.workspace_wait:g}s in Slurm's queue without "
                            f"starting ({reason_words(reason)}); its job is cancelled. Try again later, or a smaller "
                            "profile.", reason="slurm", status_code=503)
                elif state in RUNNING:
                    self.node = node
                    port = await self._port()
                    if port is not None:
                        break
                    self._reason = f"Starting on {node} (job {self.slurm_id})"
                else:
                    why = await self._died()
                    if why:
                        raise SpawnException(why, reason="exited", status_code=500)
                await asyncio.sleep(self.slurm_poll_interval)
            ip = await self._address(self.node)
            await asyncio.to_thread(self.portal.book.set_ref, self.podbay_key,
                                    {"slurm_id": self.slurm_id, "account": self.account, "job_dir": self.job_dir,
                                     "node": self.node})
            await self.wait_listening(ip, port, self._died)
            await self._is_hers(ip, port)
        except BaseException:
            # Never a job left in the queue or on a node for a start that failed or timed out.
            with contextlib.suppress(Exception):
                await asyncio.shield(self._cancel())
            raise
        return ip, port

    async def _is_hers(self, ip: str, port: int) -> None:
        """What listens at the port the job wrote is this workspace's Jupyter server: it answers
        under this server's own URL (another person's server on the node, or anything else a
        port file could point at, does not)."""
        from tornado.httpclient import AsyncHTTPClient

        url = f"http://{ip}:{port}{self.server.base_url}api"
        r = await AsyncHTTPClient().fetch(url, raise_error=False, request_timeout=10, follow_redirects=False)
        if r.code != 200 or b'"version"' not in (r.body or b""):
            raise SpawnException(f"What answers at {ip}:{port} is not this workspace's server (HTTP {r.code}); its job "
                                 "is cancelled. Ask your platform team.", reason="exited", status_code=500)

    async def _died(self) -> str | None:
        try:
            state, _, _ = await self._look()
        except (BackendUnavailable, SlurmError):
            return None
        if state in RUNNING or state in WAITING:
            return None
        ending = await self._ending(state)
        if ending is None:
            return None
        why = ending[1]
        tail = await self._output_tail()
        return f"The workspace's Slurm job {self.slurm_id} ended while starting: {why}." + (
            f" Last lines of its output:\n{tail}" if tail else "")

    async def progress(self):
        if self._last_end:
            yield {"progress": 5, "message": f"The last workspace stopped: {self._last_end}"}
        said = ""
        while True:
            if self._reason and self._reason != said:
                said = self._reason
                yield {"progress": 60 if said.startswith("Starting") else 30, "message": said}
            await asyncio.sleep(self.slurm_poll_interval / 2)

    async def poll(self):
        if not self.slurm_id:
            return 0 if not self._spawn_pending else None
        try:
            state, _, _ = await self._look()
        except BackendUnavailable:
            return None  # Slurm out of reach: the workspace is taken to run until it says otherwise
        if state == "COMPLETING" and self._stopping:
            # Cancelled by this stop: Slurm is ending its processes, and frees its GPUs itself
            # (it places nothing else there meanwhile): the claim need not wait for it.
            return 0
        if state in RUNNING or (state in WAITING and self._spawn_pending):
            return None
        if state in WAITING:
            # Back in the queue after it ran (requeued by an administrator): the server is gone.
            code, why = 1, f"Slurm put it back in its queue ({state})"
        else:
            ending = await self._ending(state)
            if ending is None and state:
                return None
            # Neither the queue nor accounting knows it any more: it ended long ago.
            code, why = ending or (1, "Slurm no longer knows its job")
        if not self._stopping:
            self.ended = why
            self.log.warning("%s: its Slurm job %s ended: %s", self.podbay_key, self.slurm_id, why)
        return code

    async def _cancel(self) -> None:
        if self.slurm_id:
            await self.jobs.cancel({"slurm_id": self.slurm_id, "account": self.account})
        elif self.account:
            # Its id never came back (sbatch cut short): the job of this name, if Slurm took it.
            await self.commands.arun("scancel", f"--name={self.job_name}", user=self.account)

    async def stop(self, now=False):
        self._stopping = True  # the stop's own CANCELLED is no end to tell of
        await self._cancel()


class PodbaySlurmSpawner(PodbaySpawnerMixin, SlurmJobSpawner):
    @default("podbay_backend")
    def _default_podbay_backend(self):
        return "slurm"

    def podbay_claim_ref(self) -> dict:
        return {"slurm": True}

    async def start(self):
        try:
            found = await asyncio.to_thread(self.portal.workspace_account, self.user.name)
        except NoClusterAccount as e:
            raise SpawnException(f"{e}.", reason="account", status_code=403) from None
        if found is None:
            # podbay.yaml's check refuses workspaces: slurm with run_as: service.
            raise SpawnException("Workspaces as Slurm jobs run as each person's cluster account (slurm.run_as: "
                                 "person). Ask your platform team.", reason="account", status_code=503)
        self.account, self.home = found.name, str(found.home)
        # The mixin validates and claims, then calls podbay_prepare and Spawner.start (ours below).
        return await super().start()

    def podbay_prepare(self, request):
        self._request = request
