"""The slurm backend against a real Slurm (tests/slurm_cluster.py: munge, MariaDB and slurmdbd,
slurmctld, two slurmd nodes with four GPUs each as GRES, accounts with GPU limits).

Pyxis cannot run here: these jobs run with `container: none`, and the container flags are
checked on the batch script the backend writes (tests/unit/test_slurm.py)."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from podbay.hub.config import parse_config
from podbay.hub.slurm import NodeView, SlurmCapacity, SlurmError
from podbay.hub.training import BackendUnavailable, JobSpec
from podbay.hub.training.slurm import SlurmJobs


def config(cluster, **slurm):
    return parse_config({
        "backend": "slurm",
        "images": [{"name": "pytorch", "display_name": "PyTorch", "image": "nvcr.io/nvidia/pytorch:25.08-py3"}],
        "profiles": [{"id": "cpu"}, {"id": "gpu-1", "pools": ["training"]}, {"id": "gpu-4", "pools": ["training"]}],
        "pools": {"dev": {}, "training": {"queue": "gpu"}, "short": {"queue": "debug"}},
        "teams": {"vision": {"members": ["alice"], "quota": {"gpu_units": 4, "job_gpus": 0}},
                  "nlp": {"members": ["bob"], "quota": {"gpu_units": 1, "job_gpus": 0}}},
        "slurm": {"conf": str(cluster.conf), "container": "none", "gpu_type": "a100", "time_limit": "10",
                  "job_prefix": f"t{uuid.uuid4().hex[:6]}", **slurm},
    })


@pytest.fixture
def jobs(slurm_cluster, slurm_installed, tmp_path):
    backend = SlurmJobs(config(slurm_cluster), tmp_path / "homes")
    yield backend
    # Nothing of one test's left running for the next.
    mine = [line.split()[0] for line in slurm_cluster.run("squeue", "-h", "-o", "%i %j").stdout.splitlines()
            if line.split()[1].startswith(backend.settings.job_prefix + "-")]
    if mine:
        slurm_cluster.run("scancel", *mine, check=False)


_ids = iter(range(1, 10_000))


def spec(backend: SlurmJobs, command: list[str], *, user="alice", team="vision", gpus=0, nodes=1, pool="training",
         queue="gpu", env: dict | None = None) -> JobSpec:
    job_id = next(_ids)
    home = backend.homes / user
    home.mkdir(parents=True, exist_ok=True)
    return JobSpec(id=job_id, name=f"job{job_id}", user=user, image="pytorch", command=command, workdir=str(home),
                   env={"HOME": str(home), "PODBAY_JOB_ID": str(job_id), **(env or {})}, gpus_per_node=gpus,
                   nodes=nodes, pool=pool, queue=queue, team=team)


async def until(backend: SlurmJobs, ref: dict, states: set[str], timeout: float = 60):
    deadline = time.monotonic() + timeout
    while True:
        status = await backend.status(ref)
        if status.state in states:
            return status
        assert time.monotonic() < deadline, f"still {status} after {timeout}s"
        await asyncio.sleep(0.3)


async def output(backend: SlurmJobs, ref: dict) -> str:
    data, _ = await backend.read_logs(ref)
    return data.decode()


async def test_a_job_runs_on_its_gpus_and_its_output_is_followed(jobs, slurm_cluster):
    job = spec(jobs, ["sh", "-c", 'echo "gpus=$CUDA_VISIBLE_DEVICES job=$PODBAY_JOB_ID key=$WANDB_API_KEY"; '
                                  'sleep 1; echo second-line'],
               gpus=2, env={"WANDB_API_KEY": "s3cret"})
    ref = await jobs.submit(job)
    assert ref["slurm_id"].isdigit()
    script = (jobs.job_dir("alice", job.id) / "job.sh").read_text()
    assert "s3cret" not in script and "--gres=gpu:a100:2" in script and "--account=vision" in script
    shown = slurm_cluster.run("scontrol", "show", "job", ref["slurm_id"]).stdout
    assert f"JobName={jobs.slurm_name(job.id)}" in shown and "Partition=gpu" in shown and "Account=vision" in shown
    assert f"podbay job {job.id} of alice" in shown
    first, cursor = b"", None
    deadline = time.monotonic() + 60
    while b"gpus=" not in first:
        assert time.monotonic() < deadline
        chunk, cursor = await jobs.read_logs(ref, cursor)
        first += chunk
        await asyncio.sleep(0.2)
    status = await until(jobs, ref, {"exited"})
    assert status.exit_code == 0
    rest, _ = await jobs.read_logs(ref, cursor)
    assert (first + rest).decode().splitlines() == [f"gpus=0,1 job={job.id} key=s3cret", "second-line"]


async def test_two_nodes_get_what_torchrun_needs(jobs):
    job = spec(jobs, ["sh", "-c", 'echo "rank=$NODE_RANK of=$WORLD_SIZE nnodes=$NNODES master=$MASTER_ADDR:$MASTER_PORT '
                                  'node=$SLURMD_NODENAME"'], gpus=4, nodes=2)
    ref = await jobs.submit(job)
    assert (await until(jobs, ref, {"exited"})).exit_code == 0
    lines = sorted((await output(jobs, ref)).splitlines())
    assert lines == ["rank=0 of=2 nnodes=2 master=n1:29500 node=n1", "rank=1 of=2 nnodes=2 master=n1:29500 node=n2"]


async def test_a_failing_command_keeps_its_exit_code(jobs):
    ref = await jobs.submit(spec(jobs, ["sh", "-c", "echo about to fail; exit 3"]))
    status = await until(jobs, ref, {"exited", "lost"})
    assert (status.state, status.exit_code) == ("exited", 3) and "FAILED" in status.message
    assert "about to fail" in await output(jobs, ref)


async def test_waiting_jobs_say_slurms_reason(jobs):
    # All eight GPUs taken: the next job (of a team with room in its account) waits for Resources.
    holder = await jobs.submit(spec(jobs, ["sleep", "60"], gpus=4, nodes=2))
    await until(jobs, holder, {"running"})
    waiting = await jobs.submit(spec(jobs, ["true"], user="bob", team="nlp", gpus=1))
    status = await until(jobs, waiting, {"pending"})
    deadline = time.monotonic() + 30
    while "Resources" not in status.message and time.monotonic() < deadline:
        await asyncio.sleep(0.5)  # Priority first, until the scheduler has looked at it
        status = await jobs.status(waiting)
    assert status.message == "Resources: waiting for GPUs to free up"
    # A team over its account's limit in Slurm (nlp: one GPU at a time) waits for that.
    over = await jobs.submit(spec(jobs, ["true"], user="bob", team="nlp", gpus=2))
    status = await until(jobs, over, {"pending"})
    deadline = time.monotonic() + 30
    while not status.message.startswith("AssocGrpGRES") and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        status = await jobs.status(over)
    assert status.message == "AssocGrpGRES: the team's account is at its GPU limit in Slurm"
    for ref in (waiting, over, holder):  # the waiting ones first: they would run once the holder ends
        await jobs.cancel(ref)
        st = await jobs.status(ref); assert st.state == "lost", (ref, st)


async def test_cancel_ends_a_running_job(jobs):
    ref = await jobs.submit(spec(jobs, ["sleep", "300"], gpus=1))
    await until(jobs, ref, {"running"})
    t0 = time.monotonic()
    await jobs.cancel(ref)
    assert time.monotonic() - t0 < 20
    status = await until(jobs, ref, {"lost", "exited"})
    assert status.message.startswith("CANCELLED")


async def test_a_time_limit_overrun_fails_as_timeout(jobs, slurm_cluster):
    ref = await jobs.submit(spec(jobs, ["sleep", "300"]))
    await until(jobs, ref, {"running"})
    # The shortest limit Slurm takes is a minute; end it now instead of a minute on. Slurm's
    # own limit check (every 30 s) then ends the job as it does at any limit.
    slurm_cluster.run("scontrol", "update", f"JobId={ref['slurm_id']}", "EndTime=now")
    status = await until(jobs, ref, {"lost", "exited"}, timeout=90)
    assert status.state == "lost" and status.message.startswith("TIMEOUT: it ran past its time limit")


async def test_the_same_job_is_never_submitted_twice_and_is_found_by_its_id(jobs, slurm_cluster):
    job = spec(jobs, ["sleep", "30"])
    first = await jobs.submit(job)
    # A service that stopped after sbatch but before recording it submits again.
    again = await jobs.submit(job)
    assert again["slurm_id"] == first["slurm_id"]
    named = slurm_cluster.run("squeue", "-h", "--name", jobs.slurm_name(job.id), "-o", "%i").stdout.split()
    assert named == [first["slurm_id"]]
    # Only its podbay id recorded: the backend finds it, and its output, by name.
    assert (await jobs.status({"job_id": job.id})).state in ("pending", "running")
    assert (await jobs.status({"job_id": 99_999})).state == "lost"
    await jobs.cancel({"job_id": job.id})
    assert (await until(jobs, {"job_id": job.id}, {"lost"})).message.startswith("CANCELLED")


async def test_what_slurm_refuses_is_quoted(jobs):
    with pytest.raises(SlurmError, match="Invalid account"):
        await jobs.submit(spec(jobs, ["true"], team="nosuch"))
    with pytest.raises(SlurmError, match="(?i)invalid partition"):
        await jobs.submit(spec(jobs, ["true"], queue="nosuch"))


async def test_jobs_wait_while_slurm_is_down(jobs, slurm_cluster):
    running = await jobs.submit(spec(jobs, ["sleep", "20"]))
    await until(jobs, running, {"running"})
    slurm_cluster.stop_daemon("slurmctld")
    try:
        with pytest.raises(BackendUnavailable, match="Slurm is not reachable"):
            await jobs.submit(spec(jobs, ["true"]))
        with pytest.raises(BackendUnavailable):
            await jobs.status(running)
    finally:
        slurm_cluster.start_daemon_again("slurmctld")
    # Nothing lost: the job it ran before is still known.
    assert (await jobs.status(running)).state in ("running", "exited")
    await jobs.cancel(running)


async def test_the_pools_capacity_is_slurms(jobs, slurm_cluster):
    cfg = jobs.cfg
    from podbay.hub.inventory import Inventory

    capacity = SlurmCapacity(cfg, Inventory.from_config(cfg), NodeView(jobs.commands, refresh=0.5))
    assert capacity.most_gpus_per_node("training") == 4
    assert capacity.devices("training", None)["gpu"].total == 8
    ref = await jobs.submit(spec(jobs, ["sleep", "60"], gpus=3))
    await until(jobs, ref, {"running"})
    time.sleep(0.6)
    gpu = capacity.devices("training", None)["gpu"]
    assert (gpu.used, gpu.free) == (3, 5), capacity.node_states("training")
    slurm_cluster.run("scontrol", "update", "NodeName=n2", "State=DRAIN", "Reason=cooling fan")
    try:
        time.sleep(0.6)
        states = {n.name: (n.state, n.reason, n.usable) for n in capacity.node_states("training")}
        assert states["n2"][1:] == ("cooling fan", False) and "DRAIN" in states["n2"][0]
        gpu = capacity.devices("training", None)["gpu"]
        assert (gpu.total, gpu.free) == (8, 1)  # n2's four are not free while it drains
        assert capacity.counts(cfg.profile("gpu-1").spec, ["training"], None) == (8, 1)
    finally:
        slurm_cluster.run("scontrol", "update", "NodeName=n2", "State=RESUME")
        await jobs.cancel(ref)
