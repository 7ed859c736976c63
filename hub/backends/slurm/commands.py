"""The slurm backend: workspaces on this development node (as the local backend runs them),
training pools on a Slurm cluster (a DGX SuperPOD's, with Pyxis and Enroot for containers).

A pool whose `queue` names a Slurm partition is Slurm's: its jobs are `sbatch`ed there
(jobs.py), and its capacity is what Slurm says of its nodes (GRES configured and
allocated, nodes down or drained), not podbay's inventory. Slurm queues, so podbay does not:
its fair share, accounts, QOS and partitions decide when a job runs; a team's job-GPU quota
is the limit the site sets in Slurm (an association's GrpTRES), which podbay shows.

How podbay reaches Slurm: Slurm's own commands on this node, authenticated by munge, as on
any login node of the cluster. What a job does is done as the person (`run_as: person`, the
default): the service runs `sbatch`, `scancel`, and `mkdir`/`dd` for the job's folder in
their home, as the person's cluster account through `sudo -n -u <account>`, which the site's
sudoers allows for exactly those commands and only as its people's accounts (config/slurm/
sudoers; docs/howto/slurm.md compares this with slurmrestd's per-user tokens). Reading the
queue and accounting needs no one's identity. They are Slurm's stable interface across its releases (the
REST API's versions change with each), need no token to rotate, and are what a SuperPOD's
login nodes have anyway. Errors that mean the controller is out of reach make jobs wait
(BackendUnavailable); anything else Slurm refuses is quoted to the person.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from ...config import PodbayConfig, _Model
from ...training import BackendUnavailable

# What Slurm's commands say when the controller (or slurmdbd) cannot be reached.
UNREACHABLE = ("Unable to contact slurm controller", "Socket timed out", "Connection refused", "Zero Bytes were transmitted",
               "Unable to connect to database", "slurmdbd: Connection", "Connection timed out", "Slurm backup controller")
# What sudo says when it will not run a command (not its warnings, "unable to resolve host").
SUDO_REFUSALS = ("a password is required", "is not allowed to", "not in the sudoers file", "unknown user",
                 "you are not permitted to use the -C option", "sorry, you are not allowed")
TIME = re.compile(r"^(\d{1,3}-)?\d{1,5}(:\d{2}){0,2}$")


class SlurmSettings(_Model):
    model_config = ConfigDict(extra="forbid", frozen=True)
    # person: each job is submitted, cancelled and read as the person's own cluster account
    # (cluster_accounts:), through sudo, so its files, Slurm's accounting, fair share and
    # per-user limits are theirs. service: every job is the service's own (one trust domain:
    # a test cluster, never a shared one).
    run_as: Literal["person", "service"] = "person"
    # The sudo that runs Slurm's commands as the person.
    sudo: str = "sudo"
    # Where workspaces run. local: processes on this node, the hub's. slurm: Slurm jobs on the
    # partition of their profile's pool (a Slurm-only site's development partition), each
    # running JupyterLab on a node, reached through the hub (backends/slurm/spawner.py).
    workspaces: Literal["local", "slurm"] = "local"
    # A workspace job's time limit (its walltime: Slurm ends it then, and the person is told).
    workspace_time: str = "08:00:00"
    # How long a workspace's start may wait in Slurm's queue (seconds) before it is given up.
    workspace_wait: float = Field(600, ge=30, le=86400)
    # What a workspace job gets besides its GPUs (--cpus-per-task, --mem); unset: the
    # partition's defaults (often one CPU).
    workspace_cpus: int | None = Field(None, ge=1, le=1024)
    # A workspace job's memory (--mem: 64G); unset: the partition's default.
    workspace_mem: str | None = Field(None, pattern=r"^\d+[KMGT]?$")
    # Where the nodes reach this hub and podbay's service (the hub listens there): this node's
    # address on the cluster's network. 127.0.0.1 only where the nodes are this host.
    hub_address: str | None = None
    # Where a workspace listens on its node: all its addresses by default (the hub reaches it
    # at its NodeAddr); the server demands its user's login whoever connects.
    workspace_bind: str = "0.0.0.0"
    # The pools whose jobs Slurm runs, each with its partition (a pool's `queue` names one
    # too); the others are this node's (workspaces).
    partitions: dict[str, str] = {}
    # slurm.conf for the commands (SLURM_CONF); None: SLURM_CONF, else the node's own.
    conf: str | None = None
    # Where sbatch, squeue, sacct, scancel, scontrol live, if not on PATH.
    bin_dir: str | None = None
    # A team's Slurm account (default: the team's name); users in no team use default_account
    # (None: their default in Slurm).
    accounts: dict[str, str] = {}
    # The account of users in no team (unset: their default in Slurm).
    default_account: str | None = None
    # The QOS jobs are submitted with (--qos), if any.
    qos: str | None = None
    # --time of a job that asks for none, and the most one may ask for (Slurm's format:
    # minutes, HH:MM:SS, D-HH:MM:SS; None: the partition's own maximum decides).
    time_limit: str = "04:00:00"
    # The most a job may ask for (unset: the partition's maximum decides).
    time_max: str | None = None
    # The GRES that counts GPUs, and a type to ask for (gpu:a100:N), if any.
    gres: str = Field("gpu", pattern=r"^[a-z][a-z0-9_]*$")
    # The GPU type to ask for (gpu:<type>:N), if any.
    gpu_type: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+$")
    # The GPU model each GRES type of whole GPUs is, as NVML names it (a100: NVIDIA
    # A100-SXM4-80GB): which MIG profiles and geometry `podbay advise` gives a node's GPUs.
    # Unset, the type's name says (a100 → A100 40GB: name the 80 GB model here). The prefix
    # of AutoDetect's MIG types (a100 in a100_3g.39gb) is looked up here too.
    gpu_models: dict[str, str] = {}
    # The GRES type each MIG profile has in this cluster's gres.conf, where it is not the
    # profile's own name: AutoDetect=nvml names slices <gpu>_<profile> with the memory in
    # whole GiB as the driver reports it (3g.40gb: a100_3g.39gb). Workspaces on Slurm ask for
    # it; advice reads it (and recognises <gpu>_<N>g.<M>gb by the nearest profile).
    mig_types: dict[str, str] = {}
    # What each GPU comes with (--cpus-per-gpu, --mem-per-gpu, e.g. 16 and 200G): without
    # them a job gets one CPU per node and the partition's default memory.
    cpus_per_gpu: int | None = Field(None, ge=1, le=1024)
    # Memory per GPU (--mem-per-gpu: 200G).
    mem_per_gpu: str | None = Field(None, pattern=r"^\d+[KMGT]?$")
    # pyxis: the job runs in the catalog image (srun --container-image, Enroot); none: as a
    # process on the nodes, for sites whose software is a shared tree.
    container: Literal["pyxis", "none"] = "pyxis"
    # Slurm job names are <job_prefix>-<podbay job id>.
    job_prefix: str = Field("podbay", pattern=r"^[a-z][a-z0-9-]{0,30}$")
    # The port of a multi-node job's rendezvous (MASTER_PORT).
    master_port: int = Field(29500, ge=1024, le=65535)
    # How long what Slurm says of its nodes is reused before it is asked again (seconds).
    refresh: float = Field(5.0, ge=0.5, le=300)
    # Seconds a Slurm command may take.
    timeout: float = Field(30.0, ge=1, le=600)

    @field_validator("time_limit", "time_max", "workspace_time")
    @classmethod
    def _slurm_time(cls, v: str | None) -> str | None:
        if v is not None and not TIME.match(v):
            raise ValueError("a Slurm time: minutes, HH:MM:SS or D-HH:MM:SS")
        return v

    @field_validator("hub_address", "workspace_bind")
    @classmethod
    def _address(cls, v: str | None) -> str | None:
        try:
            if v is not None:
                ipaddress.IPv4Address(v)
        except ValueError:
            raise ValueError("an IPv4 address (the hub's URLs are built from it)") from None
        return v

    @model_validator(mode="after")
    def _default_within_max(self):
        if self.workspaces == "slurm" and self.run_as != "person":
            raise ValueError("workspaces: slurm runs each workspace as its person's account: it needs run_as: person")
        if self.workspaces == "slurm" and not self.hub_address:
            raise ValueError("workspaces: slurm needs hub_address: where the nodes reach this hub (its address on "
                             "the cluster's network)")
        if seconds(self.workspace_time) == 0:
            raise ValueError("workspace_time 0 would be no limit at all in Slurm: give one, like 08:00:00")
        if seconds(self.time_limit) == 0 or (self.time_max and seconds(self.time_max) == 0):
            raise ValueError("a time limit of 0 is no limit at all in Slurm: give one")
        if self.time_max and seconds(self.time_limit) > seconds(self.time_max):
            raise ValueError(f"time_limit {self.time_limit} is above time_max {self.time_max}")
        return self

    def partition(self, cfg: PodbayConfig, pool: str) -> str | None:
        if pool in self.partitions:
            return self.partitions[pool]
        p = cfg.pools.get(pool)
        return p.queue if p else None

    def account_for(self, team: str | None) -> str | None:
        return self.accounts.get(team, team) if team else self.default_account

    def gpus(self, n: int) -> str:
        """The GRES request for n GPUs on each node."""
        return f"{self.gres}:{self.gpu_type}:{n}" if self.gpu_type else f"{self.gres}:{n}"

    def mig_type(self, profile: str) -> str:
        """The GRES type of a MIG profile's slices here (gpu:<type>:1)."""
        return self.mig_types.get(profile, profile)


def seconds(text: str) -> int:
    """A Slurm time in seconds: minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS."""
    days, _, rest = text.rpartition("-") if "-" in text else ("", "", text)
    parts = [int(p) for p in rest.split(":")]
    if days:
        h, m, s = (parts + [0, 0])[:3]
        return ((int(days) * 24 + h) * 60 + m) * 60 + s
    if len(parts) == 1:
        return parts[0] * 60
    if len(parts) == 2:
        return parts[0] * 60 + parts[1]
    return (parts[0] * 60 + parts[1]) * 60 + parts[2]


class SlurmError(RuntimeError):
    """Slurm refused (its words, for the person)."""


class NotPermitted(SlurmError):
    """sudo would not let the service act as the person: the site's set-up, not the job."""


# What Slurm's commands get of the service's environment: nothing else (the service holds
# secrets, and SBATCH_*/SLURM_* variables would change what sbatch does).
PASSED_ENV = ("PATH", "LANG", "LANGUAGE", "TZ", "SLURM_CONF")


@dataclass
class Commands:
    """Slurm's commands, with this deployment's slurm.conf."""

    settings: SlurmSettings

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k in PASSED_ENV or k.startswith("LC_")}
        if self.settings.conf:
            env["SLURM_CONF"] = self.settings.conf
        return env

    def program(self, name: str) -> str:
        return os.path.join(self.settings.bin_dir, name) if self.settings.bin_dir else name

    def argv(self, name: str, args: tuple[str, ...], user: str | None, pass_fds: tuple[int, ...] = ()) -> list[str]:
        """The command line, through sudo as `user` where one is given. sudo closes every
        descriptor above 2 unless told (-C, which sudoers must allow: closefrom_override)."""
        # mkdir and dd are the system's, never from Slurm's bin_dir.
        program = name if name in ("mkdir", "dd") else self.program(name)
        if user is None:
            return [program, *args]
        # sudo matches the rules' full paths, and its secure_path may not hold Slurm's
        # (/cm/shared/apps/slurm/…, /opt/slurm/bin): name the file the service would run.
        program = shutil.which(program, path=self.env.get("PATH")) or program
        keep = ["-C", str(max(pass_fds) + 1)] if pass_fds else []
        return [self.settings.sudo, "-n", *keep, "-u", user, "--", program, *args]

    def _result(self, argv: list[str], code: int, out: str, err: str) -> str:
        if code == 0:
            return out
        words = " ".join(err.split()) or f"{argv[0]} exited with status {code}"
        if argv[0] == self.settings.sudo and any(refusal in words for refusal in SUDO_REFUSALS):
            user = argv[argv.index("-u") + 1] if "-u" in argv else "?"
            raise NotPermitted(f"podbay may not act as {user} on this node ({words}): the site's sudoers must let "
                               "the service run Slurm's commands as its people (docs/howto/slurm.md)")
        if any(u.lower() in words.lower() for u in UNREACHABLE):
            raise BackendUnavailable(f"Slurm is not reachable ({words}); waiting for it")
        raise SlurmError(words.removeprefix("sbatch: error: ").removeprefix("error: "))

    def run(self, name: str, *args: str, timeout: float | None = None, user: str | None = None) -> str:
        argv = self.argv(name, args, user)
        timeout = timeout or self.settings.timeout
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=self.env,
                               stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            raise BackendUnavailable(f"{argv[0]} is not installed on this node (Slurm's client, slurm-client)") from None
        except subprocess.TimeoutExpired:
            raise BackendUnavailable(f"{name} did not answer in {timeout:g}s; waiting for Slurm") from None
        return self._result(argv, r.returncode, r.stdout, r.stderr)

    async def read_as(self, user: str, path: str, offset: int, cap: int, timeout: float = 10) -> bytes:
        """At most `cap` bytes of a file from `offset` on, read as `user`; nothing when it is
        not there, or does not answer in `timeout` (a FIFO): a log the person made endless
        (a link to /dev/zero) costs the service `cap` bytes, no more."""
        # dd stops by itself after `cap` bytes: nothing to signal through sudo.
        argv = self.argv("dd", (f"if={path}", "iflag=skip_bytes,count_bytes", f"skip={offset}", f"count={cap}",
                                "bs=65536", "status=none"), user)
        proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.PIPE, env=self.env, cwd="/")
        data, cut = b"", False
        try:
            while len(data) < cap:
                chunk = await asyncio.wait_for(proc.stdout.read(cap - len(data)), timeout)
                if not chunk:
                    break
                data += chunk
            cut = len(data) >= cap
        except asyncio.TimeoutError:
            data, cut = b"", True
        if cut:
            # SIGTERM, which sudo hands on to dd (a SIGKILL would end sudo alone).
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
        try:
            err = (await asyncio.wait_for(proc.stderr.read(), timeout)).decode(errors="replace")
            code = await asyncio.wait_for(proc.wait(), timeout)
        except asyncio.TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            return b""
        if not cut and code != 0 and any(r in err for r in SUDO_REFUSALS):
            self._result(argv, code, "", err)  # raises NotPermitted
        return data

    async def sbatch(self, args_for: "Callable[[int], list[str]]", script: str, env: bytes, user: str | None) -> str:
        """sbatch `script` (as `user`) with `env` (export_file's) as the job's environment,
        handed over a file descriptor (`--export-file`: never in the script, a file or sbatch's
        own environment); `args_for(fd)` gives sbatch's options for that descriptor. The job's id."""
        read, write = os.pipe()
        try:
            writer = asyncio.get_running_loop().run_in_executor(None, _write_all, write, env)
            try:
                text = await self.arun("sbatch", *args_for(read), stdin=script, pass_fds=(read,), user=user)
            finally:
                os.close(read)
                read = -1
                await writer
        finally:
            if read != -1:
                os.close(read)
        return text.strip().split(";")[0]

    async def arun(self, name: str, *args: str, stdin: str | None = None, pass_fds: tuple[int, ...] = (),
                   timeout: float | None = None, user: str | None = None) -> str:
        """Run a command (as `user`, through sudo); its output."""
        argv = self.argv(name, args, user, pass_fds)
        timeout = timeout or self.settings.timeout
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=self.env, pass_fds=pass_fds)
        except FileNotFoundError:
            raise BackendUnavailable(f"{argv[0]} is not installed on this node (Slurm's client, slurm-client)") from None
        try:
            out, err = await asyncio.wait_for(proc.communicate(stdin.encode() if stdin is not None else None), timeout)
        except BaseException as e:
            # Timed out, or the caller gave up (a start cancelled): SIGTERM, which sudo hands on
            # to the command (a SIGKILL would end sudo alone, and sbatch would go on to submit).
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            if not isinstance(e, asyncio.TimeoutError):
                raise
            await proc.wait()
            raise BackendUnavailable(f"{name} did not answer in {timeout:g}s; waiting for Slurm") from None
        return self._result(argv, proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"))


def export_file(env: dict[str, str]) -> bytes:
    """An environment as sbatch's --export-file reads it: NAME=value, each ended by a NUL."""
    return b"".join(f"{k}={v}".encode() + b"\0" for k, v in env.items())


def _write_all(fd: int, data: bytes) -> None:
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    except BrokenPipeError:
        pass  # sbatch ended before reading it all: its own error says why
    finally:
        os.close(fd)
