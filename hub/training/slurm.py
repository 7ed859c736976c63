"""Training jobs as Slurm batch jobs (the slurm backend, hub/slurm.py).

A podbay job is one `sbatch`: named `<prefix>-<id>` (how podbay finds it again, in the
queue or in accounting, after a restart), with the person and the job's own name in its
comment, on the pool's partition and the team's account, with `--nodes`, `--gpus-per-node`,
one task per node, the working directory in the person's home and its output in
`~/.podbay/jobs/<id>/output.log`, where podbay follows it and the person can read it. The
batch script runs the command once per node with `srun`, in the catalog image through Pyxis
(`--container-image`, the volumes as `--container-mounts`) or as a plain process, with what
`torchrun` needs across nodes: MASTER_ADDR (the allocation's first node), MASTER_PORT,
WORLD_SIZE and NNODES (nodes), NODE_RANK (this node's).

The job's environment (podbay's variables, the team's and image's settings, the person's
secrets) is handed to sbatch as its environment with `--export=ALL`, never written into the
script; nothing of the service's own environment goes with it.

Slurm queues: a job is `pending` with Slurm's reason (Priority, Resources,
AssocGrpGRES, …) until it runs. Ended jobs are read from accounting (`sacct`): COMPLETED is
success, FAILED keeps its exit code, and the other ends (TIMEOUT, CANCELLED outside podbay,
NODE_FAIL, OUT_OF_MEMORY, PREEMPTED, …) fail with Slurm's state as the reason.
"""

from __future__ import annotations

import asyncio
import re
import shlex
from pathlib import Path

from ..config import PodbayConfig
from ..launch import launcher
from ..slurm import Commands, SlurmError, SlurmSettings, seconds
from . import BackendStatus, BackendUnavailable, JobSpec, TrainingBackend, offset_of, read_from

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
    "Resources": "waiting for GPUs to free up",
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


def commands_for(settings: SlurmSettings) -> Commands:
    return Commands(settings)


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
        return 0, 0


class SlurmJobs(TrainingBackend):
    name = "slurm"
    queues_jobs = True
    multi_node = True
    # A team's job GPUs are what Slurm enforces (an association's limits), not podbay's quota.
    enforces_job_quota = True

    def __init__(self, cfg: PodbayConfig, homes: Path):
        self.cfg = cfg
        self.settings: SlurmSettings = cfg.slurm
        self.homes = Path(homes)
        self.commands = commands_for(self.settings)

    def queue_of(self, pool: str) -> str | None:
        return self.settings.partition(self.cfg, pool)

    def _request(self, *, team: str | None, partition: str | None, gpus_per_node: int, nodes: int,
                 time_limit: str | None = None) -> list[str]:
        """The request's sbatch options (the script's #SBATCH lines say the same)."""
        s = self.settings
        args = [f"--partition={partition}", f"--nodes={nodes}", "--ntasks-per-node=1",
                f"--time={time_limit or s.time_limit}"]
        account = s.account_for(team)
        if account:
            args.append(f"--account={account}")
        if s.qos:
            args.append(f"--qos={s.qos}")
        if gpus_per_node:
            args.append(f"--gres={s.gpus(gpus_per_node)}")
        return args

    def check_submit(self, *, team, pool, gpus_per_node, nodes, time_limit=None):
        partition = self.queue_of(pool)
        if not partition:
            raise ValueError(f"pool {pool} has no Slurm partition: ask your platform team")
        most = self.settings.time_max
        if time_limit and most and seconds(time_limit) > seconds(most):
            raise ValueError(f"time_limit {time_limit} is above the most a job may ask for here, {most}")
        try:
            self.commands.run("sbatch", "--test-only",
                              *self._request(team=team, partition=partition, gpus_per_node=gpus_per_node, nodes=nodes,
                                             time_limit=time_limit),
                              "--wrap=true")
        except BackendUnavailable:
            return  # the job waits for Slurm, which decides then
        except SlurmError as e:
            raise ValueError(f"Slurm refuses this job: {e.args[0].removeprefix('allocation failure: ')}") from None

    async def team_limit(self, team):
        account = self.settings.account_for(team)
        if not account:
            return None
        try:
            text = await self.commands.arun("scontrol", "show", "assoc_mgr", f"accounts={account}", "flags=assoc")
        except (BackendUnavailable, SlurmError):
            return {"source": "slurm", "account": account, "gpus": None, "gpus_in_use": None}
        limit, used = account_gpus(text, account, self.settings.gres)
        return {"source": "slurm", "account": account, "gpus": limit, "gpus_in_use": used}

    # --- names and files -----------------------------------------------------------------

    def slurm_name(self, job_id: int) -> str:
        return f"{self.settings.job_prefix}-{job_id}"

    def job_dir(self, user: str, job_id: int) -> Path:
        return self.homes / user / ".podbay" / "jobs" / str(job_id)

    def script(self, job: JobSpec, out: Path) -> str:
        """The batch script: the #SBATCH lines, then the command once per node."""
        s = self.settings
        request = self._request(team=job.team, partition=job.queue, gpus_per_node=job.gpus_per_node, nodes=job.nodes,
                                time_limit=job.time_limit)
        lines = ["#!/bin/bash", f"#SBATCH --job-name={self.slurm_name(job.id)}"]
        lines += [f"#SBATCH {arg}" for arg in request]
        lines += [f"#SBATCH --chdir={job.workdir}", f"#SBATCH --output={out}", f"#SBATCH --error={out}",
                  "#SBATCH --open-mode=append", "#SBATCH --export=ALL"]
        lines += [
            "",
            "# What torchrun and srun need across nodes: the allocation's first node leads.",
            'export MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"',
            f"export MASTER_PORT={s.master_port}",
            'export NNODES="$SLURM_JOB_NUM_NODES" WORLD_SIZE="$SLURM_JOB_NUM_NODES"',
        ]
        srun = ["srun", "--ntasks-per-node=1", f"--chdir={job.workdir}"]
        command = list(job.command)
        if s.container == "pyxis":
            home = job.env.get("HOME", "")
            mounts = [f"{home}:{home}"] + [f"{src}:{dst}" + (":ro" if ro else "") for src, dst, ro in job.volumes]
            entry = self.cfg.image(job.image)  # the catalog's name → its registry reference
            srun += [f"--container-image={enroot_image(entry.image if entry else job.image)}", f"--container-mounts={','.join(mounts)}",
                     f"--container-workdir={job.workdir}", "--no-container-mount-home"]
        elif job.volumes:
            # No container: the volumes appear under the home in a mount namespace of the task's.
            command = launcher(job.volumes, quiet=True) + command
        # NODE_RANK is each task's own: set where the task starts. Slurm names the GPUs it
        # gave in CUDA_VISIBLE_DEVICES; NVIDIA_VISIBLE_DEVICES says the same, as on podbay's
        # other backends (void: none), unless the runtime set it.
        per_node = ('export NODE_RANK="$SLURM_NODEID"; '
                    '[ -n "$NVIDIA_VISIBLE_DEVICES" ] || export NVIDIA_VISIBLE_DEVICES="${CUDA_VISIBLE_DEVICES:-void}"; '
                    'exec "$@"')
        lines.append(shlex.join([*srun, "bash", "-c", per_node, "podbay-job", *command]))
        return "\n".join(lines) + "\n"

    # --- the backend ---------------------------------------------------------------------

    async def submit(self, job: JobSpec) -> dict:
        if not job.queue:
            raise SlurmError(f"pool {job.pool} has no Slurm partition: give it queue: <partition> in podbay.yaml")
        found = await self._find(job.id)
        if found is not None:
            return found  # handed over before the service stopped: never twice
        d = self.job_dir(job.user, job.id)
        await asyncio.to_thread(d.mkdir, parents=True, exist_ok=True)
        out = d / "output.log"
        script = self.script(job, out)
        await asyncio.to_thread((d / "job.sh").write_text, script)
        env = {**self.commands.env, **job.env}
        try:
            text = await self.commands.arun(
                "sbatch", "--parsable", f"--comment=podbay job {job.id} of {job.user}: {job.name}"[:250],
                env=env, stdin=script)
        except SlurmError as e:
            raise SlurmError(f"Slurm refused the job: {e}") from None
        slurm_id = text.strip().split(";")[0]
        return {"slurm_id": slurm_id, "output": str(out)}

    async def _find(self, job_id: int) -> dict | None:
        """The Slurm job of a podbay job, by its name: in the queue, or in accounting."""
        name = self.slurm_name(job_id)
        # Jobs slurmctld still holds, ended ones too (for MinJobAge), then accounting.
        text = await self.commands.arun("squeue", "-h", "-t", "all", f"--name={name}", "-o", "%i|%Z")
        if not text.strip():
            text = await self.commands.arun("sacct", "-n", "-X", "-P", f"--name={name}", "-S", "now-60days",
                                            "-o", "JobID,WorkDir")
        for line in reversed(text.splitlines()):
            slurm_id, _, workdir = line.partition("|")
            if slurm_id.strip():
                return self._ref(slurm_id.strip(), workdir, job_id)
        return None

    def _ref(self, slurm_id: str, workdir: str, job_id: int) -> dict:
        """Its output file, found from its working directory, which is in its owner's home."""
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
        found = await self._find(ref["job_id"])
        return (found["slurm_id"], {**ref, **found}) if found else (None, ref)

    async def status(self, ref: dict) -> BackendStatus:
        slurm_id, _ = await self._slurm_id(ref)
        if slurm_id is None:
            return BackendStatus("lost", message="Slurm has no job of this name (it was never submitted)")
        try:
            text = await self.commands.arun("squeue", "-h", "-j", slurm_id, "-o", "%T|%r")
        except SlurmError:
            text = ""  # "Invalid job id": it left the queue; accounting knows how it ended
        for line in text.splitlines():
            state, _, reason = line.partition("|")
            if state in RUNNING:
                return BackendStatus("running")
            if state in WAITING:
                return BackendStatus("pending", message=reason_words(reason))
        return await self._ended(slurm_id)

    async def _ended(self, slurm_id: str) -> BackendStatus:
        text = await self.commands.arun("sacct", "-n", "-X", "-P", "-j", slurm_id, "-o", "State,ExitCode,Reason")
        lines = [line for line in text.splitlines() if line.strip()]
        if not lines:
            # Between the queue and accounting (slurmdbd takes a moment): still running to us.
            return BackendStatus("running")
        state, code, reason = (lines[0].split("|") + ["", ""])[:3]
        word = state.split()[0]  # "CANCELLED by 0"
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
            return BackendStatus("exited", code_n, message=f"FAILED: exited with code {code_n}")
        meaning = ENDS.get(word, "Slurm ended it")
        return BackendStatus("lost", message=f"{word}: {meaning}" + (f" ({reason})" if reason and reason != "None" else ""))

    async def cancel(self, ref: dict) -> None:
        slurm_id, _ = await self._slurm_id(ref)
        if slurm_id is None:
            return
        await self.commands.arun("scancel", slurm_id)
        # scancel returns at once: wait until Slurm has it ended (or it is known to be).
        for _ in range(100):
            text = ""
            try:
                text = await self.commands.arun("squeue", "-h", "-j", slurm_id, "-o", "%T")
            except SlurmError:
                pass
            if not text.strip() or text.split()[0] not in RUNNING | WAITING:
                return
            await asyncio.sleep(0.2)

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
        data = await asyncio.to_thread(read_from, Path(path), offset)
        return data, str(offset + len(data))
