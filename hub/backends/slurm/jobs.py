"""Training jobs as Slurm batch jobs (the slurm backend: hub/backends/slurm/).

Long because: it is one TrainingBackend (submit, status, logs, cancel, limits), and what it
makes of Slurm's commands' output belongs next to the calls.

A podbay job is one `sbatch`: named `<prefix>-<id>` (how podbay finds it again, in the
queue or in accounting, after a restart), with the person and the job's own name in its
comment, on the pool's partition and the team's account, with `--nodes`, `--gpus-per-node`,
one task per node, the working directory in the person's home and its output in
`~/.podbay/jobs/<prefix>-<id>/output.log`, where podbay follows it and the person can read
it (the prefix keeps two installs' job 7 apart: both may act as the same person). The
batch script runs the command once per node with `srun`, in the catalog image through Pyxis
(`--container-image`, the volumes as `--container-mounts`) or as a plain process, with what
`torchrun` needs across nodes: MASTER_ADDR (the allocation's first node), MASTER_PORT,
WORLD_SIZE and NNODES (nodes), NODE_RANK (this node's).

With `run_as: person` (the default) all of it is done as the person's cluster account
(hub/identity.py): sbatch, scancel, the job's folder and the reading of its output run
through sudo as them, so the Slurm job is theirs (squeue, sacct, fair share, limits) and so
are its files; their home is the account's. The account follows from the authenticated
user alone, never from anything in the request.

The job's environment (podbay's variables, the team's and image's settings, the person's
secrets) is handed to sbatch through a file descriptor (`--export-file`, with
`--export=ALL`), never written into the script or a file; nothing of the service's own
environment goes with it.

Slurm queues: a job is `pending` with Slurm's reason (Priority, Resources,
AssocGrpGRES, …) until it runs. Ended jobs are read from accounting (`sacct`): COMPLETED is
success, FAILED keeps its exit code, and the other ends (TIMEOUT, CANCELLED outside podbay,
NODE_FAIL, OUT_OF_MEMORY, PREEMPTED, …) fail with Slurm's state as the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shlex
import time
from pathlib import Path

from ...config import PodbayConfig
from ...identity import cluster_account, here, on_cluster
from ...launch import launcher
from ...training import (
    BackendStatus,
    BackendUnavailable,
    JobSpec,
    TrainingBackend,
    offset_of,
    read_from,
)
from .commands import Commands, NotPermitted, SlurmError, SlurmSettings, export_file, seconds

RUNNING = {"RUNNING", "CONFIGURING", "COMPLETING", "STAGE_OUT", "SIGNALING", "RESIZING"}
WAITING = {"PENDING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "SUSPENDED", "RESV_DEL_HOLD", "SPECIAL_EXIT"}
# Slurm's end states other than COMPLETED and FAILED, in words for the person.
ENDS = {
    "TIMEOUT": "it ran past its time limit",
    "CANCELLED": "it was cancelled in Slurm",
    "NODE_FAIL": "a node it ran on failed",
    "OUT_OF_MEMORY": "it ran out of memory",
    "PREEMPTED": "it was preempted",
    "BOOT_FAIL": "its nodes failed to boot",
    "DEADLINE": "it missed its deadline",
    "REVOKED": "another cluster took it",
}
# Why a job waits, as Slurm says (squeue %r), with what it means.
REASONS = {
    "Priority": "jobs of higher priority come first",
    "Resources": "waiting for the nodes it needs to free up",
    "AssocGrpGRES": "the team's account is at its GPU limit in Slurm",
    "AssocGrpGRESMinutes": "the team's account has used its GPU minutes",
    "AssocMaxJobsLimit": "the account runs as many jobs as it may",
    "QOSMaxGRESPerUser": "the QOS's per-user GPU limit is reached",
    "QOSGrpGRES": "the QOS's GPU limit is reached",
    "PartitionTimeLimit": "its time limit is above the partition's",
    "ReqNodeNotAvail": "the nodes it needs are not available (down, drained or reserved)",
    "Dependency": "waiting for the jobs it depends on",
    "BeginTime": "not to start yet",
    "JobHeldUser": "held",
    "JobHeldAdmin": "held by an administrator",
}


def enroot_image(image: str) -> str:
    """A registry reference as Enroot names it: `nvcr.io/nvidia/pytorch:25.08-py3` →
    `nvcr.io#nvidia/pytorch:25.08-py3` (the registry before a #)."""
    first, sep, rest = image.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return f"{first}#{rest}"
    return image


def reason_words(reason: str) -> str:
    reason = reason.strip().strip("()")
    if not reason or reason == "None":
        return "waiting in Slurm's queue"
    meaning = REASONS.get(reason)
    return f"{reason}: {meaning}" if meaning else reason


def account_gpus(text: str, account: str, gres: str = "gpu") -> tuple[int | None, int | None]:
    """(limit, in use) of an account's GPUs from `scontrol show assoc_mgr flags=assoc`: the
    account's own record (no user), its GrpTRES `gres/gpu=LIMIT(USED)`, N for no limit."""
    for record in re.split(r"\n(?=\S)", text):
        if not re.match(rf"ClusterName=\S+ Account={re.escape(account)} UserName= ", record):
            continue
        m = re.search(rf"GrpTRES=\S*?(?<![\w/:])gres/{re.escape(gres)}=(N|\d+)\((\d+)\)", record)
        if m:
            return (None if m.group(1) == "N" else int(m.group(1))), int(m.group(2))
        return None, None
    return None, None


def exit_code(text: str) -> tuple[int, int]:
    """sacct's ExitCode `code:signal`."""
    code, _, sig = (text or "0:0").partition(":")
    try:
        return int(code), int(sig or 0)
    except ValueError:
        return 1, 0  # unreadable: not a success


class SlurmJobs(TrainingBackend):
    name = "slurm"
    queues_jobs = True
    multi_node = True
    # A team's job GPUs are what Slurm enforces (an association's limits), not podbay's quota.
    enforces_job_quota = True
    # How long one look at the queue (one squeue for every job) is reused.
    QUEUE_TTL = 2.0
    # The most of a job's output one read returns as the person (the next reads on).
    LOG_CHUNK = 1 << 20
    LIMIT_TTL = 5.0

    def __init__(self, cfg: PodbayConfig, homes: Path):
        self.cfg = cfg
        self.settings: SlurmSettings = cfg.slurm
        self.homes = Path(homes)
        self.commands = Commands(self.settings)
        # As the person: their home is the account's, which the service may not see into (the
        # job checks its working directory itself).
        self.person = self.as_person = self.settings.run_as == "person"
        self.host_homes = not self.person
        self._queue: tuple[float, dict[str, tuple[str, str]]] = (-1e9, {})
        # Whose jobs the queue is asked about (run_as: person): the owners of jobs seen.
        self._accounts: set[str] = set()
        self._queue_lock = asyncio.Lock()
        self._limits: dict[str, tuple[float, tuple[int | None, int | None]]] = {}

    def queue_of(self, pool: str) -> str | None:
        return self.settings.partition(self.cfg, pool)

    def request_args(self, *, team: str | None, partition: str | None, gpus_per_node: int, nodes: int,
                 time_limit: str | None = None) -> list[str]:
        """The request's sbatch options. On sbatch's command line, which nothing in the job's
        environment (SBATCH_ACCOUNT, …) or its files can override."""
        s = self.settings
        args = [f"--partition={partition}", f"--nodes={nodes}", "--ntasks-per-node=1",
                f"--time={time_limit or s.time_limit}"]
        account = s.account_for(team)
        if account:
            args.append(f"--account={account}")
        if s.qos:
            args.append(f"--qos={s.qos}")
        if gpus_per_node:
            args += [f"--gres={s.gpus(gpus_per_node)}", *self.per_gpu()]
        return args

    def per_gpu(self) -> list[str]:
        """What each GPU comes with (CPUs, memory), where the site says."""
        s = self.settings
        return ([f"--cpus-per-gpu={s.cpus_per_gpu}"] if s.cpus_per_gpu else []) + (
            [f"--mem-per-gpu={s.mem_per_gpu}"] if s.mem_per_gpu else [])

    def sbatch_args(self, job: JobSpec, out: Path, export_fd: int) -> list[str]:
        """Everything sbatch is told, on its command line."""
        return [f"--job-name={self.slurm_name(job.id)}",
                *self.request_args(team=job.team, partition=job.queue, gpus_per_node=job.gpus_per_node, nodes=job.nodes,
                               time_limit=job.time_limit),
                f"--chdir={job.workdir}", f"--output={out}", f"--error={out}", "--open-mode=append",
                # Two copies of one job (a submit repeated after a lost answer) never run at once;
                # the later one is cancelled when found (_find).
                "--dependency=singleton",
                # The job's environment comes from the file descriptor, not from sbatch's own.
                "--export=ALL", f"--export-file={export_fd}",
                f"--comment=podbay job {job.id} of {job.user}: {job.name}"[:250], "--parsable"]

    def check_submit(self, *, team, pool, gpus_per_node, nodes, time_limit=None, user=None):
        partition = self.queue_of(pool)
        if not partition:
            raise ValueError(f"pool {pool} has no Slurm partition: ask your platform team")
        if time_limit is not None and seconds(time_limit) == 0:
            raise ValueError("time_limit 0 would be no limit at all: give one, like 12:00:00")
        most = self.settings.time_max
        if time_limit and most and seconds(time_limit) > seconds(most):
            raise ValueError(f"time_limit {time_limit} is above the most a job may ask for here, {most}")
        try:
            self.commands.run("sbatch", "--test-only",
                              *self.request_args(team=team, partition=partition, gpus_per_node=gpus_per_node, nodes=nodes,
                                             time_limit=time_limit),
                              "--wrap=true", timeout=10, user=self.account(user) if user else None)
        except NotPermitted as e:
            raise ValueError(f"{e}; ask your platform team") from None
        except BackendUnavailable:
            return  # the job waits for Slurm, which decides then
        except SlurmError as e:
            raise ValueError(f"Slurm refuses this job: {e.args[0].removeprefix('allocation failure: ')}") from None
        account = self.settings.account_for(team)
        limit, _ = self._account_limit(account) if account else (None, None)
        if limit is not None and gpus_per_node * nodes > limit:
            raise ValueError(f"the account {account} may hold at most {limit} GPUs at once in Slurm; this job asks for "
                             f"{gpus_per_node * nodes}, so it would never run")

    def _account_limit(self, account: str) -> tuple[int | None, int | None]:
        at, found = self._limits.get(account, (-1e9, (None, None)))
        if time.monotonic() - at < self.LIMIT_TTL:
            return found
        try:
            text = self.commands.run("scontrol", "show", "assoc_mgr", f"accounts={account}", "flags=assoc", timeout=10)
            found = account_gpus(text, account, self.settings.gres)
        except (BackendUnavailable, SlurmError):
            found = (None, None)
        self._limits[account] = (time.monotonic(), found)
        return found

    async def team_limit(self, team):
        account = self.settings.account_for(team)
        if not account:
            return None
        limit, used = await asyncio.to_thread(self._account_limit, account)
        return {"source": "slurm", "account": account, "gpus": limit, "gpus_in_use": used}

    # --- names and files -----------------------------------------------------------------

    def slurm_name(self, job_id: int) -> str:
        return f"{self.settings.job_prefix}-{job_id}"

    def account(self, user: str) -> str | None:
        """The cluster account a person's jobs run as; None: the service's own."""
        return cluster_account(self.cfg, user).name if self.person else None

    def home_of(self, user: str) -> Path | None:
        return cluster_account(self.cfg, user).home if self.person else None

    def job_dir(self, user: str, job_id: int) -> Path:
        """The job's folder as the nodes see it (what Slurm is told); `here` for this server."""
        return (self.home_of(user) or self.homes / user) / ".podbay" / "jobs" / self.slurm_name(job_id)

    def here(self, path: str | Path) -> str:
        """A path in a person's home (as the nodes see it), as this server opens it
        (cluster_accounts.paths). The service's own jobs' folders are podbay's, as they are."""
        return here(self.cfg, path) if self.person else str(path)

    def usage_ref(self, ref):
        return {"slurm_id": ref["slurm_id"]} if ref.get("slurm_id") else {}

    def mount_source(self, volume, path):
        # The catalog's source is this server's path: the nodes may mount the filesystem elsewhere.
        return on_cluster(self.cfg, path)

    def script(self, job: JobSpec, out: Path) -> str:
        """The batch script: the command once per node (sbatch's options are on its command
        line, never in this file, which holds nothing the person chose but the command)."""
        s = self.settings
        lines = ["#!/bin/bash", f"# podbay job {job.id}: sbatch's options are in `scontrol show job`.",
                 "",
                 "# What torchrun and srun need across nodes: the allocation's first node leads.",
                 'export MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"',
                 f"export MASTER_PORT={s.master_port}",
                 'export NNODES="$SLURM_JOB_NUM_NODES" WORLD_SIZE="$SLURM_JOB_NUM_NODES"',
                 "",
                 # Slurm starts in /tmp when it cannot enter --chdir: say so and stop instead.
                 f"cd -- {shlex.quote(job.workdir)} 2>/dev/null || "
                 f"{{ echo {shlex.quote(f'podbay: cannot enter the working directory {job.workdir}')} >&2; exit 2; }}"]
        srun = ["srun", "--ntasks-per-node=1", f"--chdir={job.workdir}"]
        command = list(job.command)
        if s.container == "pyxis":
            home = job.env.get("HOME", "")
            mounts = [f"{home}:{home}"] + [f"{src}:{dst}" + (":ro" if ro else "") for src, dst, ro in job.volumes]
            entry = self.cfg.image(job.image)  # the catalog's name → its registry reference
            srun += [f"--container-image={enroot_image(entry.image if entry else job.image)}",
                     f"--container-mounts={','.join(mounts)}", f"--container-workdir={job.workdir}",
                     "--no-container-mount-home"]
        elif job.volumes:
            # No container: the volumes appear under the home in a mount namespace of the task's.
            # As the person the job has no root, whoever submits it: a user namespace mounts.
            command = launcher(job.volumes, quiet=True, unprivileged=True if self.person else None) + command
        # NODE_RANK is each task's own: set where the task starts. Slurm names the GPUs it
        # gave in CUDA_VISIBLE_DEVICES; NVIDIA_VISIBLE_DEVICES says the same, as on podbay's
        # other backends (void: none), unless the runtime set it.
        per_node = ('export NODE_RANK="$SLURM_NODEID"; '
                    '[ -n "$NVIDIA_VISIBLE_DEVICES" ] || export NVIDIA_VISIBLE_DEVICES="${CUDA_VISIBLE_DEVICES:-void}"; '
                    'exec "$@"')
        lines.append(shlex.join([*srun, "bash", "-c", per_node, "podbay-job", *command]))
        return "\n".join(lines) + "\n"

    def export_env(self, job: JobSpec) -> bytes:
        """The job's environment for --export-file."""
        return export_file({"PATH": self.commands.env.get("PATH", "/usr/local/bin:/usr/bin:/bin"), **job.env})

    # --- the backend ---------------------------------------------------------------------

    async def submit(self, job: JobSpec) -> dict:
        if not job.queue:
            raise SlurmError(f"pool {job.pool} has no Slurm partition: give it one under slurm.partitions")
        # NoClusterAccount: the job fails saying why. Off the loop: NSS may be LDAP, and slow.
        account = await asyncio.to_thread(self.account, job.user)
        d = self.job_dir(job.user, job.id)
        if account:
            make = self.commands.arun("mkdir", "-p", "-m", "0700", "--", self.here(d), user=account)
        else:
            make = asyncio.to_thread(Path(self.here(d)).mkdir, parents=True, exist_ok=True)
        # The folder is made while the queue is asked whether the job is there already (the
        # person's mkdir costs a sudo: hidden behind the look, not added to it). Made for a
        # job found, it is that job's own folder anyway.
        found, made = await asyncio.gather(self._find(job.id, job.created, job.user), make, return_exceptions=True)
        if isinstance(found, BaseException):
            raise found
        if found is not None:
            return found  # handed over before the service stopped: never twice
        if isinstance(made, BaseException):
            raise made
        out = d / "output.log"
        try:
            slurm_id = await self.commands.sbatch(lambda fd: self.sbatch_args(job, out, fd), self.script(job, out),
                                                  self.export_env(job), account)
        except SlurmError as e:
            raise SlurmError(f"Slurm refused the job: {e}") from None
        self._queue = (-1e9, {})  # the next status looks again
        return {"slurm_id": slurm_id, "output": str(out), "user": job.user, **({"account": account} if account else {})}

    async def _find(self, job_id: int, since: float | None = None, user: str | None = None) -> dict | None:
        """The Slurm job of a podbay job: one of its owner's account (the person's, or this
        service's), by name, submitted after the podbay job was made (so an earlier install's
        job of the same name is not it). Several (a submit repeated after an answer was
        lost): the first one counts, the others are cancelled."""
        name = self.slurm_name(job_id)
        earliest = (since or 0) - 120  # the cluster's clock may be behind this node's a little
        try:
            account = self.account(user) if user and self.person else None
        except ValueError:
            account = None  # the account is gone: Slurm's job cannot be found as anyone's
        if self.person and not account:
            return None  # a job handed over before it was known whose: none of it reached Slurm
        owner = [f"--user={account}"] if account else ["--me"]
        found = []
        text = await self.commands.arun("squeue", *owner, "-h", "-t", "all", f"--name={name}", "-o", "%i|%V|%Z")
        if not text.strip():
            start = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(earliest)) if since else "now-60days"
            who = [f"--user={account}"] if account else []
            text = await self.commands.arun("sacct", *who, "-n", "-X", "-P", f"--name={name}", "-S", start,
                                            "-o", "JobID,Submit,WorkDir")
        for line in text.splitlines():
            slurm_id, submitted, workdir = (line.split("|", 2) + ["", ""])[:3]
            if not slurm_id.strip().isdigit():
                continue  # array and heterogeneous jobs are none of podbay's
            if since and _epoch(submitted) is not None and _epoch(submitted) < earliest:
                continue
            found.append((int(slurm_id), workdir))
        if not found:
            return None
        found.sort()
        for extra, _ in found[1:]:
            with contextlib.suppress(SlurmError, BackendUnavailable):
                await self.commands.arun("scancel", str(extra), user=account)
        if account:
            return {"slurm_id": str(found[0][0]), "user": user, "account": account,
                    "output": str(self.job_dir(user, job_id) / "output.log")}
        return self._ref(str(found[0][0]), found[0][1], job_id)

    def _ref(self, slurm_id: str, workdir: str, job_id: int) -> dict:
        """Its output file, found from its working directory, which is in its owner's home
        (the service's own jobs: podbay's homes)."""
        ref = {"slurm_id": slurm_id}
        try:
            user = Path(workdir).relative_to(self.homes).parts[0]
        except (ValueError, IndexError):
            return ref
        ref["output"] = str(self.job_dir(user, job_id) / "output.log")
        return ref

    async def _slurm_id(self, ref: dict) -> tuple[str | None, dict]:
        if ref.get("slurm_id"):
            return ref["slurm_id"], ref
        found = await self._find(ref["job_id"], ref.get("created"), ref.get("user"))
        return (found["slurm_id"], {**ref, **found}) if found else (None, ref)

    async def _queued(self) -> dict[str, tuple[str, str]]:
        """Slurm job id → (state, reason) of podbay's jobs slurmctld holds: one squeue for all
        of them, reused for QUEUE_TTL seconds (the scheduler asks about every job twice a
        second). As the person, jobs are many people's: podbay's are those of its prefix."""
        async with self._queue_lock:
            at, queue = self._queue
            if time.monotonic() - at >= self.QUEUE_TTL:
                # As the person: the accounts of podbay's jobs, not the whole cluster's queue.
                who = ["--me"] if not self.person else [f"--user={','.join(sorted(self._accounts))}"]
                if self.person and not self._accounts:
                    self._queue = (time.monotonic(), {})
                    return {}
                text = await self.commands.arun("squeue", *who, "-h", "-t", "all", "-o", "%i|%T|%j|%r")
                queue = {}
                for line in text.splitlines():
                    slurm_id, state, name, reason = (line.split("|", 3) + ["", "", ""])[:4]
                    if self.person and not name.startswith(self.settings.job_prefix + "-"):
                        continue
                    queue[slurm_id.strip()] = (state.strip(), reason.strip())
                self._queue = (time.monotonic(), queue)
            return queue

    async def status(self, ref: dict) -> BackendStatus:
        slurm_id, ref = await self._slurm_id(ref)
        if ref.get("account") and ref["account"] not in self._accounts:
            self._accounts.add(ref["account"])
            self._queue = (-1e9, {})  # a new owner: their jobs were not asked for
        if slurm_id is None:
            return BackendStatus("lost", message="Slurm has no job of this name (it was never submitted)")
        state, reason = (await self._queued()).get(slurm_id, ("", ""))
        if state in RUNNING:
            return BackendStatus("running")
        if state in WAITING:
            return BackendStatus("pending", message=reason_words(reason))
        return await self.ended(slurm_id, state)

    async def ended(self, slurm_id: str, queue_state: str) -> BackendStatus:
        """How it ended: from accounting, or from slurmctld where accounting has no word yet."""
        try:
            text = await self.commands.arun("sacct", "-n", "-X", "-P", "-j", slurm_id, "-o", "State,ExitCode,Reason")
            lines = [line for line in text.splitlines() if line.strip()]
        except SlurmError:
            lines = []  # accounting refused (not configured?): slurmctld's word, below
        if lines:
            state, code, reason = (lines[0].split("|") + ["", ""])[:3]
        elif queue_state:
            state, reason = queue_state, ""
            shown = await self.commands.arun("scontrol", "show", "job", slurm_id, "--oneliner")
            m = re.search(r"\bExitCode=(\d+:\d+)", shown)
            code = m.group(1) if m else "1:0"
        else:
            # Between the queue and accounting (slurmdbd hears a moment later): running to us.
            return BackendStatus("running")
        word = state.split()[0] if state.split() else ""  # "CANCELLED by 0"
        if word in RUNNING:
            return BackendStatus("running")
        if word in WAITING:
            return BackendStatus("pending", message=reason_words(reason))
        code_n, signal_n = exit_code(code)
        if word == "COMPLETED":
            return BackendStatus("exited", 0)
        if word == "FAILED":
            if signal_n:
                return BackendStatus("exited", 128 + signal_n, message=f"FAILED: killed by signal {signal_n}")
            # Slurm says it failed: never a success, whatever code it recorded.
            return BackendStatus("exited", code_n or 1, message=f"FAILED: exited with code {code_n or 1}")
        meaning = ENDS.get(word, "Slurm ended it")
        return BackendStatus("lost", message=f"{word}: {meaning}" + (f" ({reason})" if reason and reason != "None" else ""))

    async def cancel(self, ref: dict) -> None:
        slurm_id, ref = await self._slurm_id(ref)
        if slurm_id is None:
            return
        account = ref.get("account")
        if account is None and self.person and ref.get("user"):
            account = self.account(ref["user"])
        if account:
            self._accounts.add(account)  # the wait below asks the queue for its owner's jobs
        try:
            # As its owner: Slurm itself refuses to cancel anyone else's job.
            await self.commands.arun("scancel", slurm_id, user=account)
        except NotPermitted:
            raise
        except SlurmError as e:
            if "invalid job id" in str(e).lower():
                return  # it is gone already
            raise
        # scancel returns at once: wait (a little) until Slurm has it ended.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            self._queue = (-1e9, {})
            state, _ = (await self._queued()).get(slurm_id, ("", ""))
            if state not in RUNNING | WAITING:
                return
            await asyncio.sleep(0.3)

    async def read_logs(self, ref: dict, cursor: str | None = None) -> tuple[bytes, str | None]:
        offset = offset_of(cursor)
        path = ref.get("output")
        if path is None:
            try:
                _, ref = await self._slurm_id(ref)
            except BackendUnavailable:
                return b"", str(offset)
            path = ref.get("output")
        if path is None:
            return b"", str(offset)
        if ref.get("account"):
            data = await self._read_as(ref["account"], self.here(path), offset)
        else:
            data = await asyncio.to_thread(read_from, Path(self.here(path)), offset)
        return data, str(offset + len(data))

    async def _read_as(self, account: str, path: str, offset: int) -> bytes:
        """The output file from `offset` on, read as its owner (the service may not see
        into their home), a chunk at a time (the cursor reads on); nothing while it is not
        there."""
        return await self.commands.read_as(account, path, offset, self.LOG_CHUNK)


def _epoch(text: str) -> float | None:
    try:
        return time.mktime(time.strptime(text.strip(), "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return None
