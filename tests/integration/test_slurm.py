"""The slurm backend against a real Slurm (tests/standins/slurm_cluster.py: munge, MariaDB and slurmdbd,
slurmctld, two slurmd nodes with four GPUs each as GRES, accounts with GPU limits).

Pyxis cannot run here: these jobs run with `container: none`, and the container flags are
checked on the batch script the backend writes (tests/unit/test_slurm.py)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from podbay.hub.config import parse_config
from podbay.hub.backends.slurm.commands import SlurmError
from podbay.hub.backends.slurm.plugin import NodeView, SlurmCapacity
from podbay.hub.training import BackendUnavailable, JobSpec
from podbay.hub.backends.slurm.jobs import SlurmJobs


def config(cluster, **slurm):
    return parse_config({
        "backend": "slurm",
        "images": [{"name": "pytorch", "display_name": "PyTorch", "image": "nvcr.io/nvidia/pytorch:25.08-py3"}],
        "profiles": [{"id": "cpu"}, {"id": "gpu-1", "pools": ["training"]}, {"id": "gpu-4", "pools": ["training"]}],
        "pools": {"dev": {}, "training": {"queue": "gpu"}, "short": {"queue": "debug"}},
        "teams": {"vision": {"members": ["alice"], "quota": {"gpu_units": 4, "job_gpus": 0}},
                  "nlp": {"members": ["bob"], "quota": {"gpu_units": 1, "job_gpus": 0}}},
        "slurm": {"conf": str(cluster.conf), "run_as": "service", "container": "none", "gpu_type": "a100", "time_limit": "10",
                  "job_prefix": f"t{uuid.uuid4().hex[:6]}", **slurm},
    })


@pytest.fixture
def jobs(slurm_cluster, tmp_path):
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
    script = slurm_cluster.run("scontrol", "write", "batch_script", ref["slurm_id"], "-").stdout
    assert "s3cret" not in script and "#SBATCH" not in script and "srun" in script
    shown = slurm_cluster.run("scontrol", "show", "job", ref["slurm_id"]).stdout
    assert f"JobName={jobs.slurm_name(job.id)}" in shown and "Partition=gpu" in shown and "Account=vision" in shown
    assert "gres:gpu:a100:2" in shown or "gres/gpu:a100=2" in shown, shown
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
    assert status.message == "Resources: waiting for the nodes it needs to free up"
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
        assert (await until(jobs, ref, {"lost", "exited"})).message.startswith("CANCELLED")


@pytest.mark.timing
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


@pytest.mark.timing
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


# --- through podbay's REST API, CLI and hub ------------------------------------------------



@pytest.fixture(scope="module")
def shub(slurm_cluster, tmp_path_factory):
    """A hub on the slurm backend (the contract's podbay.yaml), with Slurm's commands behind a
    folder of their own whose sbatch takes two seconds, as a busy controller does: long enough
    to stop the service in the middle of a submit. Bob's team has an account Slurm does not
    know, and a pool names a partition it does not have."""
    import shutil

    from tests.harness import have_proxy, require
    from tests.standins.slurm_cluster import start_hub

    require(have_proxy(), "configurable-http-proxy is not installed")
    tmp = tmp_path_factory.mktemp("slurm-hub")
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    for name in ("squeue", "sacct", "scancel", "scontrol", "sinfo", "sacctmgr"):
        (bin_dir / name).symlink_to(shutil.which(name))
    (bin_dir / "sbatch").write_text(f"#!/bin/sh\ncase \"$*\" in *--test-only*) ;; *) touch {tmp}/sbatch-started; "
                                    f"sleep 2;; esac\nexec {shutil.which('sbatch')} \"$@\"\n")
    (bin_dir / "sbatch").chmod(0o755)

    # Its own job names: this hub's job ids start at 1 like every hub's of the run on this
    # cluster (the timing tests' hub comes after the others'), and Slurm remembers them all.
    prefix = f"api{uuid.uuid4().hex[:6]}"

    def edit(cfg):
        cfg["pools"]["ghost"] = {}
        cfg["slurm"] = {**cfg["slurm"], "bin_dir": str(bin_dir), "job_prefix": prefix, "time_max": "1-00:00:00",
                        "partitions": {"training": "gpu", "ghost": "nosuch"},
                        "accounts": {"vision": "contract-vision", "nlp": "no-such-account"}}
    hub = start_hub(slurm_cluster, tmp, edit)
    hub.sbatch_started = tmp / "sbatch-started"
    hub.job_name = lambda job: f"{prefix}-{job['id']}"
    yield hub
    hub.stop()


def service(hub, user="alice"):
    from tests.harness import http_client

    return http_client(base_url=f"{hub.url}/services/podbay/api/v1",
                        headers={"Authorization": f"token {hub.token(user)}"}, timeout=60)


def slurm_jobs_named(cluster, name: str) -> list[str]:
    """Every Slurm job of that name, ended ones included: what slurmctld holds and what
    accounting recorded (it hears of a job a moment after slurmctld)."""
    held = cluster.run("squeue", "-h", "-t", "all", f"--name={name}", "-o", "%i").stdout
    recorded = cluster.run("sacct", "-n", "-X", "-P", f"--name={name}", "-S", "now-1days", "-o", "JobID").stdout
    return sorted(set(held.split()) | set(recorded.split()))


def test_what_slurm_would_reject_is_refused_at_submit_in_its_words(shub):
    with service(shub, "bob") as bob:
        r = bob.post("/jobs", json={"name": "x", "image": "base", "gpus": 1, "command": ["true"]})
        assert r.status_code == 400, r.text
        assert r.json()["message"] == ("Slurm refuses this job: Invalid account or account/partition "
                                       "combination specified")
    with service(shub) as alice:
        r = alice.post("/jobs", json={"name": "x", "image": "base", "gpus": 1, "pool": "ghost", "command": ["true"]})
        assert r.status_code == 400 and "Invalid partition name specified" in r.json()["message"], r.text
        r = alice.post("/jobs", json={"name": "x", "image": "base", "gpus": 1, "time_limit": "2-00:00:00",
                                      "command": ["true"]})
        assert r.status_code == 400 and "above the most a job may ask for here, 1-00:00:00" in r.json()["message"]
        # Over the team's limit is not refused: Slurm queues it (and says why).
        me = alice.get("/me").json()
        assert me["job_limit"] == {"source": "slurm", "account": "contract-vision", "gpus": 2, "gpus_in_use": 0}
    # And `podbay quota` says so, in Slurm's name.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PODBAY_", "JUPYTERHUB_"))}
    said = subprocess.run([sys.executable, "-m", "podbay.hub.cli", "quota"], capture_output=True, text=True, timeout=60,
                          env={**env, "PODBAY_URL": shub.url, "PODBAY_TOKEN": shub.token("alice")})
    assert said.returncode == 0, said.stderr
    assert "job GPUs     0 in use, limit 2 (set by slurm for account contract-vision)" in said.stdout, said.stdout


@pytest.mark.timing
def test_a_time_limit_overrun_fails_with_slurms_reason(shub, slurm_cluster):
    from tests.harness import wait_job

    with service(shub) as api:
        job = api.post("/jobs", json={"name": "long", "image": "base", "gpus": 1, "time_limit": "2",
                                      "command": ["sleep", "300"]}).json()
        assert job["time_limit"] == "2"
        job = wait_job(api, job["id"], {"running"}, timeout=60)
        (slurm_id,) = slurm_jobs_named(slurm_cluster, shub.job_name(job))
        assert "TimeLimit=00:02:00" in slurm_cluster.run("scontrol", "show", "job", slurm_id).stdout
        deadline = time.monotonic() + 15  # podbay asks Slurm again after a few seconds
        while api.get("/me").json()["job_limit"]["gpus_in_use"] != 1:
            assert time.monotonic() < deadline, api.get("/me").json()
            time.sleep(0.5)
        slurm_cluster.run("scontrol", "update", f"JobId={slurm_id}", "EndTime=now")
        done = wait_job(api, job["id"], {"failed", "succeeded"}, timeout=90)
        assert done["state"] == "failed" and done["message"].startswith("TIMEOUT: it ran past its time limit"), done


@pytest.mark.timing
def test_jobs_wait_while_slurm_is_down_and_nothing_is_lost(shub, slurm_cluster):
    from tests.harness import wait_job

    slurm_cluster.stop_daemon("slurmctld")
    try:
        with service(shub) as api:
            r = api.post("/jobs", json={"name": "patient", "image": "base", "gpus": 1, "command": ["echo", "done"]})
            assert r.status_code == 201, r.text
            deadline = time.monotonic() + 60
            while "Slurm is not reachable" not in (job := api.get(f"/jobs/{r.json()['id']}").json())["message"]:
                assert time.monotonic() < deadline, job
                time.sleep(0.5)
            assert job["state"] == "queued" and job["message"].startswith("waiting: Slurm is not reachable")
    finally:
        slurm_cluster.start_daemon_again("slurmctld")
    with service(shub) as api:
        done = wait_job(api, job["id"], {"succeeded", "failed"}, timeout=90)
        assert done["state"] == "succeeded" and api.get(f"/jobs/{job['id']}/logs").text == "done\n"
    assert len(slurm_jobs_named(slurm_cluster, shub.job_name(job))) == 1


@pytest.mark.timing
def test_a_service_killed_during_a_submit_and_a_run_leaves_one_slurm_job_each(shub, slurm_cluster):
    import os
    import signal

    from tests.harness import environ_of, wait_job

    def service_pid() -> int:
        for entry in Path("/proc").iterdir():
            try:
                if entry.name.isdigit() and b"podbay.hub.service" in (entry / "cmdline").read_bytes() and \
                        environ_of(int(entry.name)).get("PODBAY_DATA_DIR") == str(shub.data_dir):
                    return int(entry.name)
            except OSError:
                continue
        raise AssertionError("podbay's service is not running")

    with service(shub) as api:
        running = api.post("/jobs", json={"name": "runs", "image": "base", "gpus": 1, "command": [
            "sh", "-c", "echo start; sleep 6; echo end"]}).json()
        wait_job(api, running["id"], {"running"}, timeout=60)
        shub.sbatch_started.unlink(missing_ok=True)
        handed = api.post("/jobs", json={"name": "handed", "image": "base", "gpus": 1, "command": ["echo", "once"]}).json()
        deadline = time.monotonic() + 30
        while not shub.sbatch_started.exists():
            assert time.monotonic() < deadline, "sbatch never started"
            time.sleep(0.05)
        old = service_pid()
        os.kill(old, signal.SIGKILL)  # sbatch is still submitting: nothing recorded its Slurm id
    # The hub starts the service again (it looks every 30 s); it asks Slurm by name.
    deadline = time.monotonic() + 90
    with service(shub) as api:
        while True:
            try:
                if service_pid() != old and api.get("/me").status_code == 200:
                    break
            except (AssertionError, OSError, ValueError, httpx.HTTPError):
                pass  # not yet: no service, or the proxy's route to it not yet there
            assert time.monotonic() < deadline, "the hub did not start the service again"
            time.sleep(0.5)
        first = wait_job(api, running["id"], {"succeeded", "failed"}, timeout=90)
        second = wait_job(api, handed["id"], {"succeeded", "failed"}, timeout=90)
        assert (first["state"], second["state"]) == ("succeeded", "succeeded"), (first, second)
        assert api.get(f"/jobs/{running['id']}/logs").text == "start\nend\n"
        assert api.get(f"/jobs/{handed['id']}/logs").text == "once\n"
    for job in (running, handed):
        assert len(slurm_jobs_named(slurm_cluster, shub.job_name(job))) == 1, job


@pytest.mark.timing
def test_the_cli_shows_slurms_reason_and_the_pools_nodes(shub, slurm_cluster, tmp_path):
    import subprocess
    import sys

    from tests.harness import wait_job

    env = {"PODBAY_URL": shub.url, "PODBAY_TOKEN": shub.token("alice"), "XDG_CONFIG_HOME": str(tmp_path)}

    def podbay(*args):
        import os

        return subprocess.run([sys.executable, "-m", "podbay.hub.cli", *args], capture_output=True, text=True,
                              env={**os.environ, **env}, timeout=60)

    with service(shub) as api:
        wide = api.post("/jobs", json={"name": "wide", "image": "base", "gpus": 2, "command": ["sleep", "60"]}).json()
        wait_job(api, wide["id"], {"running"}, timeout=60)
        nxt = api.post("/jobs", json={"name": "next", "image": "base", "gpus": 1, "command": ["true"]}).json()
        deadline = time.monotonic() + 30
        while "AssocGrpGRES" not in api.get(f"/jobs/{nxt['id']}").json()["message"]:
            assert time.monotonic() < deadline
            time.sleep(0.5)
    listing = podbay("job", "ls")
    line = next(x for x in listing.stdout.splitlines() if x.split()[:2] == [str(nxt["id"]), "next"])
    assert "queued" in line and "queued in slurm: AssocGrpGRES: the team's account is at its GPU limit" in line
    slurm_cluster.run("scontrol", "update", "NodeName=n2", "State=DRAIN", "Reason=fan swap")
    try:
        # podbay asks Slurm about its nodes every few seconds: until it has.
        deadline = time.monotonic() + 30
        while "fan swap" not in (cap := podbay("capacity")).stdout:
            assert time.monotonic() < deadline, cap.stdout
            time.sleep(0.5)
        assert "Nodes that take no jobs now" in cap.stdout, cap.stdout
    finally:
        slurm_cluster.run("scontrol", "update", "NodeName=n2", "State=RESUME")
        with service(shub) as api:
            for job in (nxt, wide):
                api.delete(f"/jobs/{job['id']}")


def test_podbay_doctor_checks_slurm_as_the_service_calls_it(slurm_cluster):
    """The slurm backend's `podbay doctor` against the real Slurm: commands, the controller,
    munge on the socket slurm.conf names, each pool's partition and its GPU GRES, the teams'
    accounts; a partition or an account podbay.yaml names and Slurm lacks is reported with
    its fix."""
    import asyncio

    from podbay.hub.backends.slurm.doctor import diagnose

    healthy = asyncio.run(diagnose(config(slurm_cluster, accounts={"vision": "contract-vision"})))
    assert [f for f in healthy if f.level != "ok"] == [], healthy
    said = [f.what for f in healthy]
    assert "munge makes and reads credentials" in said and any(s.startswith("slurmctld answers") for s in said)
    assert any(s.startswith("pool training: partition gpu, ") for s in said), said
    broken = asyncio.run(diagnose(config(slurm_cluster, partitions={"short": "nosuch"},
                                         accounts={"vision": "no-such-account"})))
    failed = {f.what: f.fix for f in broken if f.level == "fail"}
    assert any(w.startswith("pool short: Slurm has no partition 'nosuch'") for w in failed), failed
    assert "Slurm has no account no-such-account (slurm.accounts): those teams' jobs are refused" in failed


def test_layout_advice_reads_slurms_nodes_and_the_jobs_on_them(shub, slurm_cluster):
    """`podbay advise` on a Slurm pool: each node's GPUs from its GRES, and what runs there from
    squeue, as the real Slurm says them."""
    from tests.harness import wait_job

    with service(shub) as api:
        job = api.post("/jobs", json={"name": "hold", "image": "base", "gpus": 1, "command": ["sleep", "120"]}).json()
        try:
            job = wait_job(api, job["id"], {"running"}, timeout=60)
            (slurm_id,) = slurm_jobs_named(slurm_cluster, shub.job_name(job))
            with service(shub, "admin") as admin:
                r = admin.get("/advice", params={"days": 1, "pool": "training"})
                assert r.status_code == 200, r.text
                out = r.json()
                # Not an admin: refused.
                assert api.get("/advice").status_code == 403
            nodes = {n["node"]: n for n in out["nodes"]}
            assert set(nodes) == {"n1", "n2"} and out["engine"] == "slurm", out
            assert all([g["current"] for g in n["gpus"]] == ["whole"] * 4 for n in nodes.values())
            where = slurm_cluster.run("squeue", "-h", "-j", slurm_id, "-o", "%N").stdout.strip()
            held = {name: {h for g in n["gpus"] for h in g["holders"]} for name, n in nodes.items()}
            [line] = held[where]
            assert line.startswith(f"Slurm job {slurm_id} of ") and line.endswith(f"({shub.job_name(job)})"), line
            assert held[{"n1": "n2", "n2": "n1"}[where]] == set()
        finally:
            api.delete(f"/jobs/{job['id']}")
