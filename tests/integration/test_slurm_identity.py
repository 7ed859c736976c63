"""Slurm jobs run as the person: real Unix accounts (pbt-alice, pbt-bob, with 0700 homes on a
folder the portal and the nodes share), the site's sudoers rules (config/slurm/sudoers), and
the tests' real Slurm (tests/standins/slurm_cluster.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import pwd
import time
import uuid
from pathlib import Path

import pytest

from podbay.hub.backends.slurm.jobs import SlurmJobs
from podbay.hub.config import parse_config
from podbay.hub.training import JobSpec
from tests.harness import http_client, wait_job
from tests.integration.test_slurm import service, until


def config(cluster, **top):
    return parse_config({
        "backend": "slurm",
        "images": [{"name": "pytorch", "display_name": "PyTorch", "image": "nvcr.io/nvidia/pytorch:25.08-py3"}],
        "profiles": [{"id": "cpu"}, {"id": "gpu-1", "pools": ["training"]}],
        "pools": {"dev": {}, "training": {"queue": "gpu"}},
        "teams": {"vision": {"members": ["alice"]}, "nlp": {"members": ["bob"]}},
        "cluster_accounts": {"table": {"alice": "pbt-alice", "bob": "pbt-bob"}},
        "slurm": {"conf": str(cluster.conf), "container": "none", "gpu_type": "a100", "time_limit": "10",
                  "job_prefix": f"i{uuid.uuid4().hex[:6]}"},
        **top,
    })


@pytest.fixture(autouse=True)
def podbay_as_the_site_installed_it(monkeypatch):
    """The engine in this process starts podbay's launcher as the person (sys.executable -m
    podbay.hub.launch): from the site's install, which every account may run, as a hub
    installed for its people does; not from this checkout, which may be private."""
    import sys

    from tests.standins.site_install import site_python

    monkeypatch.setattr(sys, "executable", str(site_python()))


@pytest.fixture
def jobs(slurm_cluster, slurm_people, tmp_path):
    backend = SlurmJobs(config(slurm_cluster), tmp_path / "unused")
    assert backend.person
    yield backend
    slurm_cluster.run("scancel", f"--name={backend.settings.job_prefix}", check=False)
    mine = [line.split()[0] for line in slurm_cluster.run("squeue", "-h", "-o", "%i %j").stdout.splitlines()
            if line.split()[1].startswith(backend.settings.job_prefix + "-")]
    if mine:
        slurm_cluster.run("scancel", *mine, check=False)


_ids = iter(range(1, 10_000))


def spec(backend: SlurmJobs, command: list[str], *, user="alice", team="vision", workdir=None, env=None,
         name=None, image="pytorch") -> JobSpec:
    job_id = next(_ids)
    home = backend.home_of(user)
    return JobSpec(id=job_id, name=name or f"job{job_id}", user=user, image=image, command=command,
                   workdir=str(workdir or home), env={"HOME": str(home), **(env or {})}, pool="training",
                   queue="gpu", team=team)


def moved_job(api, script: str) -> tuple[dict, list[str]]:
    """A one-GPU job moved from alice's workspace `dev`, working in ~/proj: it succeeds; its
    output's lines."""
    r = api.post("/jobs", json={"name": "train", "from_workspace": "dev", "gpus": 1, "workdir": "proj",
                                "command": ["sh", "-c", script]})
    assert r.status_code == 201, r.text
    job = wait_job(api, r.json()["id"], {"succeeded", "failed"})
    assert job["state"] == "succeeded", job
    return job, api.get(f"/jobs/{job['id']}/logs").text.splitlines()


def owner(path) -> str:
    return pwd.getpwuid(os.stat(path).st_uid).pw_name


def lab_writes_her_config(hub, home) -> None:
    """alice's workspace `dev` writes ~/proj/cfg through JupyterLab's own contents API (by the
    workspace's process): in her cluster home, and hers."""
    with http_client(base_url=f"{hub.url}/user/alice/dev/api/contents",
                      headers={"Authorization": f"token {hub.token('alice')}"}, timeout=30) as lab:
        assert lab.put("/proj", json={"type": "directory"}).status_code in (200, 201)
        r = lab.put("/proj/cfg", json={"type": "file", "format": "text", "content": "lr=0.1\n"})
        assert r.status_code in (200, 201), r.text
    assert (home / "proj" / "cfg").read_text() == "lr=0.1\n" and owner(home / "proj" / "cfg") == "pbt-alice"


async def test_a_job_runs_as_the_person_with_their_files_accounting_and_queue(jobs, slurm_cluster, slurm_people):
    home = slurm_people.home("pbt-alice")
    assert jobs.home_of("alice") == home and oct(home.stat().st_mode & 0o777) == "0o700"
    # The job holds on until the test lets it go, so that it is surely in the queue when
    # squeue is asked (a fixed sleep lost that race on a slow CI machine).
    release = home / f"go-{uuid.uuid4().hex[:8]}"
    script = f"id -un; echo weights > model.pt; while [ ! -e {release.name} ]; do sleep 0.1; done"
    ref = await jobs.submit(spec(jobs, ["sh", "-c", script]))
    assert ref["account"] == "pbt-alice"
    # squeue -u shows it while it runs, as hers.
    assert (await until(jobs, ref, {"running", "exited"})).state == "running"
    queued = slurm_cluster.run("squeue", "-h", "-u", "pbt-alice", "-o", "%i %u").stdout.split()
    release.touch()
    assert ref["slurm_id"] in queued and "pbt-alice" in queued, queued
    assert (await until(jobs, ref, {"exited"})).exit_code == 0
    release.unlink()
    # Its output (read through sudo as her: the service is not let into a 0700 home at a site).
    data, _ = await jobs.read_logs(ref)
    assert data.decode().splitlines() == ["pbt-alice"]
    for path in (home / "model.pt", ref["output"], os.path.dirname(ref["output"])):
        assert owner(path) == "pbt-alice", path
    # Accounting says whose (fair share and per-user limits count her).
    deadline = time.monotonic() + 30
    while True:
        acct = slurm_cluster.run("sacct", "-n", "-X", "-P", "-j", ref["slurm_id"], "-o", "User,Account,State").stdout
        if acct.strip():
            break
        assert time.monotonic() < deadline, "accounting never heard of the job"
        await asyncio.sleep(0.3)
    assert acct.split("|")[:2] == ["pbt-alice", "vision"], acct


async def test_nothing_in_a_request_makes_a_job_someone_elses(jobs, slurm_cluster, slurm_people):
    """The account follows from the authenticated user alone: the job's name, environment,
    working directory and image are carried, never obeyed."""
    bob_home = slurm_people.home("pbt-bob")
    hostile_env = {"USER": "pbt-bob", "LOGNAME": "pbt-bob", "SUDO_USER": "pbt-bob", "SLURM_JOB_USER": "pbt-bob",
                   "SBATCH_UID": "pbt-bob", "SLURM_CONF": "/nonexistent", "HOME": str(bob_home)}
    tries = [
        spec(jobs, ["id", "-un"], name="x --uid=pbt-bob -u pbt-bob", env=hostile_env),
        spec(jobs, ["id", "-un"], image="pbt-bob; sudo -u pbt-bob id"),
        spec(jobs, ["id", "-un"], workdir=bob_home),
    ]
    # Bob's own workspaces (the contract's hybrid) may have left files of his there.
    before = sorted(bob_home.rglob("*"))
    refs = [await jobs.submit(job) for job in tries]
    ends = [await until(jobs, ref, {"exited", "lost"}) for ref in refs]
    outputs = [(await jobs.read_logs(ref))[0].decode() for ref in refs]
    assert outputs[0].splitlines() == ["pbt-alice"] and ends[0].exit_code == 0, (outputs[0], ends[0])
    assert outputs[1].splitlines() == ["pbt-alice"] and ends[1].exit_code == 0, (outputs[1], ends[1])
    # Bob's home is his: her job may not even enter it, and says so.
    assert ends[2].exit_code == 2 and f"cannot enter the working directory {bob_home}" in outputs[2], outputs[2]
    for ref in refs:
        shown = slurm_cluster.run("scontrol", "show", "job", ref["slurm_id"]).stdout
        assert "UserId=pbt-alice(" in shown, shown
    assert sorted(bob_home.rglob("*")) == before, "nothing of alice's reached bob's home"
    assert not [p for p in before if owner(p) == "pbt-alice"]


async def test_cancel_and_slurms_own_refusal_of_anyone_elses_job(jobs, slurm_cluster, slurm_people):
    ref = await jobs.submit(spec(jobs, ["sleep", "120"]))
    await until(jobs, ref, {"running"})
    # Slurm itself, asked as bob, will not cancel her job (the second wall behind podbay's).
    as_bob = slurm_people.as_service("sudo", "-n", "-u", "pbt-bob", "--", "scancel", ref["slurm_id"],
                                     env={"SLURM_CONF": str(slurm_cluster.conf)})
    assert as_bob.returncode != 0 and "permission denied" in as_bob.stderr.lower(), as_bob
    assert (await jobs.status(ref)).state == "running"
    await jobs.cancel(ref)
    end = await until(jobs, ref, {"lost", "exited"})
    assert end.state == "lost" and end.message.startswith("CANCELLED"), end


async def test_a_hub_restart_finds_a_persons_job_by_its_id_and_cancels_it_as_her(jobs, slurm_cluster):
    job = spec(jobs, ["sleep", "60"])
    first = await jobs.submit(job)
    # A service that stopped before recording the reference knows the job's id and owner only.
    known = {"job_id": job.id, "created": time.time(), "user": "alice"}
    found = await jobs.status(known)
    assert found.state in ("pending", "running")
    assert (await jobs.submit(job))["slurm_id"] == first["slurm_id"]  # never twice
    # Cancelled as her from that reference: really ended, not only said to be.
    await jobs.cancel(known)
    end = await until(jobs, first, {"lost", "exited"})
    assert end.message.startswith("CANCELLED"), end


async def test_a_log_made_endless_by_its_owner_costs_one_chunk(jobs, slurm_people):
    job = spec(jobs, ["true"])
    job = dataclasses.replace(job, command=["ln", "-sf", "/dev/zero", str(jobs.job_dir("alice", job.id) / "output.log")])
    ref = await jobs.submit(job)
    assert (await until(jobs, ref, {"exited", "lost"})).exit_code == 0
    jobs.LOG_CHUNK = 4096
    data, cursor = await jobs.read_logs(ref)
    assert data == b"\0" * 4096 and cursor == "4096"


def test_the_sites_sudoers_lets_the_service_act_only_as_its_people_and_only_for_jobs(slurm_cluster, slurm_people):
    """config/slurm/sudoers, installed as a site would, tried as the non-root service account."""
    env = {"SLURM_CONF": str(slurm_cluster.conf)}
    ok = slurm_people.as_service("sudo", "-n", "-u", "pbt-alice", "--", "sbatch", "--version", env=env)
    assert ok.returncode == 0 and ok.stdout.startswith("slurm"), ok
    # SLURM_CONF reaches Slurm's commands (env_keep), and a descriptor survives sudo (-C).
    queue = slurm_people.as_service("sh", "-c", "exec 5</dev/null; sudo -n -C 6 -u pbt-alice -- "
                                    "sbatch --test-only --partition=gpu --wrap=true --export-file=5", env=env)
    assert queue.returncode == 0 and "to start at" in queue.stderr, queue
    refused = {
        "root": ["-u", "root", "--", "sbatch", "--version"],
        "the service's own account": ["-u", "pbt-svc", "--", "sbatch", "--version"],
        "a shell as a person": ["-u", "pbt-alice", "--", "/bin/sh", "-c", "id"],
        "another Slurm command": ["-u", "pbt-alice", "--", "scontrol", "show", "config"],
    }
    for what, argv in refused.items():
        r = slurm_people.as_service("sudo", "-n", *argv, env=env)
        assert r.returncode != 0 and ("is not allowed to execute" in r.stderr or "sudo:" in r.stderr), (what, r)


def test_through_the_hub_bob_neither_reads_nor_cancels_alices_job_and_no_account_is_refused(
        slurm_cluster, slurm_people, tmp_path):
    from tests.standins.slurm_cluster import start_hub

    def edit(cfg):
        cfg["slurm"]["run_as"] = "person"
        cfg["slurm"]["job_prefix"] = "ident"
        # admin maps to an account nobody made.
        cfg["cluster_accounts"] = {"table": {"alice": "pbt-alice", "bob": "pbt-bob", "admin": "pbt-nobody"}}

    hub = start_hub(slurm_cluster, tmp_path, edit)
    try:
        alice, bob, admin = (service(hub, u) for u in ("alice", "bob", "admin"))
        r = alice.post("/jobs", json={"name": "mine", "command": ["sh", "-c", "id -un; sleep 30"], "gpus": 1})
        assert r.status_code == 201, r.text
        job = wait_job(alice, r.json()["id"], {"running"})
        for call in (bob.get(f"/jobs/{job['id']}"), bob.get(f"/jobs/{job['id']}/logs"),
                     bob.delete(f"/jobs/{job['id']}")):
            assert call.status_code == 403 and "another user" in call.text, call.text
        assert job["id"] not in [j["id"] for j in bob.get("/jobs").json()]
        assert wait_job(alice, job["id"], {"running"})["state"] == "running"
        listed = slurm_cluster.run("squeue", "-h", "-u", "pbt-alice", "-n", "ident-" + str(job["id"]), "-o", "%u").stdout
        assert listed.split() == ["pbt-alice"], listed
        assert alice.delete(f"/jobs/{job['id']}").status_code in (200, 202)
        assert wait_job(alice, job["id"], {"cancelled"})["state"] == "cancelled"
        r = admin.post("/jobs", json={"name": "x", "command": ["true"]})
        assert r.status_code == 400 and "no account on the cluster" in r.text and "pbt-nobody" in r.text, r.text
    finally:
        hub.stop()


def test_podbay_doctor_tries_the_sites_set_up_for_acting_as_people(slurm_cluster, slurm_people):
    from podbay.hub.backends.slurm.doctor import diagnose
    from tests.standins.slurm_cluster import SUDOERS

    cfg = config(slurm_cluster, cluster_accounts={"table": {"alice": "pbt-alice", "bob": "pbt-nobody"}})
    found = {f.what: f for f in asyncio.run(diagnose(cfg))}
    assert found["the service submits as the person (tried as pbt-alice: sudo, its descriptor and SLURM_CONF "
                 "reach sbatch)"].level == "ok", found
    lacking = next(f for w, f in found.items() if w.startswith("people without a usable cluster account"))
    assert lacking.level == "warn" and "bob (you have no account on the cluster (podbay looked for 'pbt-nobody')" \
        in lacking.what, lacking
    # The tests' hub is root, which a site's is not: said, with the fix.
    assert found["the service runs as root: it may act as anyone, not only as your people"].level == "warn"
    assert found["this server sees the people's homes (1)"].level == "ok"
    # A mapping to where this server has nothing: both the mapping and the home are named.
    moved = config(slurm_cluster, cluster_accounts={"table": {"alice": "pbt-alice"},
                                                    "paths": {str(slurm_people.shared): "/nonexistent/shared"}})
    failed = {f.what for f in asyncio.run(diagnose(moved)) if f.level == "fail"}
    assert f"cluster_accounts.paths: /nonexistent/shared (the nodes' {slurm_people.shared}) is not a folder on " \
           "this server" in failed, failed
    assert "homes this server does not see: pbt-alice (/nonexistent/shared/home/pbt-alice)" in failed, failed
    # Without the site's rules (closefrom_override, env_keep), submitting as the person fails, and says so.
    saved = SUDOERS.read_bytes()
    SUDOERS.unlink()
    try:
        failed = [f for f in asyncio.run(diagnose(cfg)) if f.level == "fail"]
    finally:
        SUDOERS.write_bytes(saved)
        SUDOERS.chmod(0o440)
    assert any(f.what.startswith("sudo does not let the service submit as pbt-alice") and "config/slurm/sudoers"
               in f.fix for f in failed), failed


def test_local_workspaces_with_a_training_pool_on_slurm(slurm_cluster, tmp_path):
    """The hybrid: `backend: local` runs the workspaces, `pools.training.engine: slurm` the
    training pool's jobs. A job moved from a workspace runs on Slurm in the workspace's home,
    the pool's capacity is Slurm's, and the dev pool's stays the inventory's."""
    from tests.standins.slurm_cluster import start_hub, wait_for

    # A prefix of its own: the cluster is the whole run's, and the contract suite's hybrid hub
    # numbers its jobs from 1 too, so a shared name would find its job in accounting as well.
    prefix = f"hybrid{uuid.uuid4().hex[:6]}"

    def edit(cfg):
        cfg["pools"]["training"] = {"engine": "slurm", "queue": "gpu"}
        cfg["slurm"] = {**cfg["slurm"], "job_prefix": prefix, "partitions": {}}

    hub = start_hub(slurm_cluster, tmp_path, edit, backend="local")
    try:
        r = hub.start_server("alice", "dev", {"profile": "cpu", "image": "base"})
        assert r.status_code in (201, 202), r.text
        proj = hub.data_dir / "homes" / "alice" / "proj"
        proj.mkdir(parents=True)
        (proj / "cfg").write_text("lr=0.1\n")
        with service(hub, "alice") as api:
            capacity = {p["pool"]: p for p in api.get("/capacity").json()["pools"]}
            assert {n["name"] for n in capacity["training"]["nodes"]} == {"n1", "n2"}, capacity["training"]
            job, lines = moved_job(api, "cat cfg; echo gpus=$CUDA_VISIBLE_DEVICES")
            assert lines == ["lr=0.1", "gpus=0"]
            # Accounting hears of it a moment after slurmctld.
            wait_for(lambda: slurm_cluster.run("sacct", "-n", "-X", "-P", f"--name={prefix}-{job['id']}", "-S",
                                               "now-1days", "-o", "Partition,State").stdout.split() == ["gpu|COMPLETED"],
                     30, "accounting to record the job on the gpu partition")
            # Several nodes: Slurm's pool takes them, the local backend would not.
            r = api.post("/jobs", json={"name": "wide", "gpus": 1, "nodes": 2, "command": ["true"]})
            assert r.status_code == 201, r.text
    finally:
        hub.stop()


def test_a_workspace_is_the_persons_and_a_job_moved_from_it_finds_its_files(slurm_cluster, slurm_people, tmp_path):
    """backend: slurm with run_as: person: the workspace on the portal's node runs as her
    account in her cluster home, so what she makes there is hers and a job moved from it, on
    Slurm and as her, works on the same files."""
    from tests.standins.slurm_cluster import start_hub

    def edit(cfg):
        cfg["slurm"] = {**cfg["slurm"], "run_as": "person", "job_prefix": "wsperson"}
        cfg["cluster_accounts"] = {"table": {"alice": "pbt-alice", "bob": "pbt-bob", "admin": "pbt-nobody"}}

    hub = start_hub(slurm_cluster, tmp_path, edit)
    home = slurm_people.home("pbt-alice")
    try:
        r = hub.start_server("alice", "dev", {"profile": "cpu", "image": "base"})
        assert r.status_code in (201, 202), r.text
        pid = next(a.ref["pid"] for a in hub.book().allocations() if a.key == "workspace:alice/dev")
        uid = int(next(line.split()[1] for line in open(f"/proc/{pid}/status") if line.startswith("Uid:")))
        assert uid == pwd.getpwnam("pbt-alice").pw_uid
        lab_writes_her_config(hub, home)
        with service(hub, "alice") as api:
            _, lines = moved_job(api, "cat cfg; id -un; echo done > out")
            assert lines == ["lr=0.1", "pbt-alice"]
            # `podbay ssh` logs in as her account, in her home.
            ssh = api.get("/ssh").json()
            assert (ssh["login"], ssh["home"]) == ("pbt-alice", str(home)), ssh
        assert owner(home / "proj" / "out") == "pbt-alice"
        # A volume's mount point is taken in her home without following a link she made
        # (~/data -> a folder of root's): the workspace refuses to start, nothing is mounted there.
        (hub.data_dir / "volumes" / "reference").mkdir(parents=True, exist_ok=True)
        outside = tmp_path / "roots"
        outside.mkdir()
        (home / "data").symlink_to(outside)
        r = hub.start_server("alice", "peek", {"profile": "cpu", "image": "base", "volumes": ["reference"]})
        assert r.status_code >= 400 and "cannot mount volume" in r.text, r.text
        assert list(outside.iterdir()) == [] and owner(outside) == "root"
        (home / "data").unlink()
        r = hub.start_server("alice", "peek", {"profile": "cpu", "image": "base", "volumes": ["reference"]})
        assert r.status_code in (201, 202), r.text
        hub.stop_server("alice", "peek")
        # The mount points it made are hers (the volume itself was mounted over the last).
        assert owner(home / "data") == owner(home / "data" / "reference") == "pbt-alice"
        # Someone without an account is refused at start, in words.
        with hub.api("admin") as api:
            r = api.post("/users/admin/servers/x", json={"user_options": {"profile": "cpu", "image": "base"}})
            assert r.status_code == 403 and "no account on the cluster" in r.json()["message"], r.text
        hub.stop_server("alice", "dev")
    finally:
        hub.stop()


ATTACK = """
import ctypes, os, sys
pid, dst = sys.argv[1], sys.argv[2]
libc = ctypes.CDLL(None, use_errno=True)
for ns in ("user", "mnt"):
    fd = os.open(f"/proc/{pid}/ns/{ns}", os.O_RDONLY)
    if libc.setns(fd, 0) != 0:
        sys.exit("setns " + ns + ": " + os.strerror(ctypes.get_errno()))
if libc.mount(None, dst.encode(), None, 4096 | 32 | 2 | 4, None) != 0:  # MS_BIND|MS_REMOUNT|NOSUID|NODEV: rw
    sys.exit("remount: " + os.strerror(ctypes.get_errno()))
open(os.path.join(dst, "written"), "w").write("x")
"""


def test_a_persons_job_cannot_make_its_read_only_volume_writable_from_outside(slurm_people, tmp_path):
    """A job as the person without a container mounts its volumes in a user namespace of
    theirs: another process of theirs (a shell on the node) that enters it still finds the
    read-only volume locked read-only."""
    import subprocess
    import sys
    import tempfile

    from podbay.hub.launch import launcher
    from tests.standins.slurm_cluster import wait_for

    top = Path(tempfile.mkdtemp(prefix="podbay-lock-"))
    try:
        top.chmod(0o755)
        (top / "src").mkdir()
        (top / "dst").mkdir(mode=0o777)
        (top / "dst").chmod(0o777)
        pidfile = top / "dst" / "pid"
        job = subprocess.Popen(
            ["sudo", "-u", "pbt-alice", *launcher([(str(top / "src"), str(top / "dst" / "ro"), True)], quiet=True,
                                                  unprivileged=True),
             "sh", "-c", f'echo $$ > {pidfile}.tmp && mv {pidfile}.tmp {pidfile}; exec sleep 30'], cwd="/")
        try:
            wait_for(pidfile.exists, 30, "the job to start")
            attack = subprocess.run(["sudo", "-u", "pbt-alice", sys.executable, "-I", "-c", ATTACK,
                                     pidfile.read_text().strip(), str(top / "dst" / "ro")],
                                    capture_output=True, text=True, cwd="/", timeout=30)
        finally:
            job.kill()
            job.wait()
        assert attack.returncode != 0 and "remount: Operation not permitted" in attack.stderr, attack
        assert list((top / "src").iterdir()) == []
    finally:
        subprocess.run(["rm", "-rf", str(top)])
