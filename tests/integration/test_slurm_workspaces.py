"""Workspaces as Slurm jobs (`slurm.workspaces: slurm`, the podbay-slurm spawner) on the
tests' real Slurm (tests/standins/slurm_cluster.py), as real accounts (pbt-alice, pbt-bob):
JupyterLab on a node, reached through the hub; the pending reason while the job waits; the
job's end is the server's and the other way round; a hub restart adopts a running one."""

from __future__ import annotations

import json
import pwd
import time

import pytest

from tests.harness import http_client
from tests.integration.test_ssh import Person

pytestmark = pytest.mark.usefixtures("slurm_people")


def edit(cfg, **slurm):
    cfg["profiles"] = [{"id": "cpu"}, {"id": "gpu-1"}, {"id": "mig-1g.10gb"}]
    # The workspaces' pool is the debug partition (its nodes are the cluster's two).
    cfg["pools"]["dev"]["queue"] = "debug"
    cfg["slurm"] = {**cfg["slurm"], "run_as": "person", "workspaces": "slurm", "hub_address": "127.0.0.1",
                    "workspace_bind": "127.0.0.1", "job_prefix": "pbws", "workspace_wait": 120,
                    # The debug partition's MaxTime is 60 minutes.
                    "workspace_time": "30", **slurm}
    cfg["cluster_accounts"] = {"table": {"alice": "pbt-alice", "bob": "pbt-bob", "admin": "pbt-nobody"}}


@pytest.fixture
def hub(slurm_cluster, tmp_path):
    from tests.standins.slurm_cluster import start_hub

    hub = start_hub(slurm_cluster, tmp_path, edit, keep_workspaces=True)
    yield hub
    hub.stop()
    slurm_cluster.run("scancel", "--name=pbws-ws-alice-dev", "--name=pbws-ws-alice-gpu", check=False)
    for line in slurm_cluster.run("squeue", "-h", "-o", "%i %j").stdout.splitlines():
        if line.split()[1].startswith(("pbws-", "blocker")):
            slurm_cluster.run("scancel", line.split()[0], check=False)


def queued(cluster, name: str, states: str = "pending,running") -> list[list[str]]:
    """[job id, state, user, node] of the jobs of that name in slurmctld (ended ones stay a
    while: `states` says which)."""
    out = cluster.run("squeue", "-h", "-t", states, f"--name={name}", "-o", "%i %T %u %N").stdout
    return [line.split() for line in out.splitlines()]


def until(what, condition, timeout: float = 90):
    deadline = time.monotonic() + timeout
    while True:
        found = condition()
        if found:
            return found
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


def block(cluster, hold: str) -> str:
    """A running job of the cluster's own on both nodes of the workspaces' partition, holding
    what `hold` says (--gres=gpu:4: every GPU; --exclusive: the nodes whole); its id."""
    blocker = cluster.run("sbatch", "--parsable", "--job-name=blocker", "--partition=debug", "--nodes=2", hold,
                          "--time=10", "--wrap=sleep 600").stdout.strip()
    until("the blocker to run", lambda: cluster.run("squeue", "-h", "-j", blocker, "-o", "%T").stdout.strip()
          == "RUNNING")
    return blocker


def progress(hub, user: str, name: str, wanted: str, timeout: float = 90) -> list[str]:
    """The spawn's progress messages, as the spawn page and the TUI read them, until one
    says `wanted`."""
    seen = []
    with http_client(timeout=timeout) as client, client.stream(
            "GET", f"{hub.url}/hub/api/users/{user}/servers/{name}/progress",
            headers={"Authorization": f"token {hub.token(user)}"}) as r:
        for line in r.iter_lines():
            if line.startswith("data:"):
                seen.append(json.loads(line[5:])["message"])
                if wanted in seen[-1]:
                    return seen
    raise AssertionError(f"the progress never said {wanted!r}: {seen}")


def test_a_workspace_is_a_slurm_job_of_the_persons_reached_through_the_hub(hub, slurm_cluster, slurm_people,
                                                                           tmp_path):
    home = slurm_people.home("pbt-alice")
    r = hub.start_server("alice", "dev", {"profile": "cpu", "image": "base"})
    assert r.status_code in (201, 202), r.text
    [job] = queued(slurm_cluster, "pbws-ws-alice-dev")
    assert job[1:3] == ["RUNNING", "pbt-alice"], job
    # JupyterLab's contents API through the hub's proxy: the server is hers, in her home.
    with http_client(base_url=f"{hub.url}/user/alice/dev/api/contents",
                      headers={"Authorization": f"token {hub.token('alice')}"}, timeout=30) as lab:
        r = lab.put("/notes.txt", json={"type": "file", "format": "text", "content": "hello\n"})
        assert r.status_code in (200, 201), r.text
    assert (home / "notes.txt").read_text() == "hello\n"
    assert pwd.getpwuid((home / "notes.txt").stat().st_uid).pw_name == "pbt-alice"
    # `podbay ssh` from her laptop: through the hub to the sshd her Jupyter server started
    # on the node, as her account, in her home.
    laptop = Person(hub, tmp_path / "laptop", "alice")
    assert laptop.podbay("login", hub.url, "--token", hub.new_token("alice")).returncode == 0
    assert laptop.podbay("keys", "add", str(laptop.key) + ".pub").returncode == 0
    r = laptop.podbay("ssh", *laptop.ssh_options(), "dev", "--", "id -un; pwd; cat notes.txt")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["pbt-alice", str(home), "hello"], r.stdout
    # Bob's token opens none of it.
    with http_client(base_url=f"{hub.url}/user/alice/dev/api/contents",
                      headers={"Authorization": f"token {hub.token('bob')}"}, timeout=30) as lab:
        assert lab.get("/notes.txt").status_code in (403, 404)
    # Stopping the server ends the job, as her.
    hub.stop_server("alice", "dev")
    until("the job to leave the queue", lambda: not queued(slurm_cluster, "pbws-ws-alice-dev"))
    assert not [a for a in hub.book().allocations() if a.key == "workspace:alice/dev"]


def test_a_waiting_workspace_says_why_and_starts_when_slurm_has_room(hub, slurm_cluster, slurm_people):
    # Every GPU of both nodes held by another job: the workspace's waits for Resources.
    blocker = block(slurm_cluster, "--gres=gpu:4")
    r = hub.start_server("alice", "gpu", {"profile": "gpu-1", "image": "base"}, wait=False)
    assert r.status_code == 202, r.text
    said = progress(hub, "alice", "gpu", "Resources")
    assert any("Waiting in Slurm's queue" in m and "waiting for the nodes it needs to free up" in m for m in said), said
    [job] = queued(slurm_cluster, "pbws-ws-alice-gpu")
    assert job[1] == "PENDING"
    slurm_cluster.run("scancel", blocker)
    hub.wait_ready("alice", "gpu", timeout=120)
    # Slurm gave it one GPU, and said which.
    with http_client(base_url=f"{hub.url}/user/alice/gpu/api", headers={"Authorization": f"token {hub.token('alice')}"},
                      timeout=30) as lab:
        assert lab.get("/status").status_code == 200
    shown = slurm_cluster.run("scontrol", "show", "job", job[0], "--oneliner").stdout
    assert "gres/gpu:a100=1" in shown or "gres/gpu=1" in shown, shown
    hub.stop_server("alice", "gpu")


def test_walltime_ends_the_server_says_why_and_a_restarted_hub_adopts_a_running_one(hub, slurm_cluster):
    r = hub.start_server("alice", "dev", {"profile": "cpu", "image": "base"})
    assert r.status_code in (201, 202), r.text
    [job] = queued(slurm_cluster, "pbws-ws-alice-dev")
    # The hub goes and comes back: the workspace's job runs on, and the hub takes it up again.
    hub.stop()
    hub.start()
    with hub.api("alice") as api:
        server = api.get("/users/alice").json()["servers"]["dev"]
        assert server["ready"], server
    assert queued(slurm_cluster, "pbws-ws-alice-dev")[0][:2] == [job[0], "RUNNING"]
    with http_client(base_url=f"{hub.url}/user/alice/dev/api", headers={"Authorization": f"token {hub.token('alice')}"},
                      timeout=30) as lab:
        assert lab.get("/status").status_code == 200
    # Its walltime runs out (cut short here as an administrator would: its end now, which
    # slurmctld acts on at its next check of time limits, not a minute from now): the server stops.
    slurm_cluster.run("scontrol", "update", f"jobid={job[0]}", "EndTime=now")
    with hub.api("alice") as api:
        until("the hub to see the workspace gone", lambda: "dev" not in api.get("/users/alice").json()["servers"]
              or not api.get("/users/alice").json()["servers"]["dev"]["ready"], timeout=180)
    # The claim goes with it (the hub stops a server that ended by itself after it saw it go).
    until("the claim to be given back", lambda: not [a for a in hub.book().allocations()
                                                     if a.key == "workspace:alice/dev"])
    # The hub keeps why (the admin's view of the server's state)...
    with hub.api("admin") as api:
        kept = api.get("/users/alice", params={"include_stopped_servers": "1"}).json()["servers"]["dev"]["state"]
    assert kept["ended"].startswith("TIMEOUT: it ran past its time limit"), kept
    # ...and the next start says it first, while its job waits (the nodes are taken whole).
    blocker = block(slurm_cluster, "--exclusive")
    r = hub.start_server("alice", "dev", {"profile": "cpu", "image": "base"}, wait=False)
    assert r.status_code == 202, r.text
    said = progress(hub, "alice", "dev", "Waiting in Slurm's queue")
    assert said[1].startswith("The last workspace stopped: TIMEOUT: it ran past its time limit"), said
    slurm_cluster.run("scancel", blocker)
    hub.wait_ready("alice", "dev", timeout=120)
    hub.stop_server("alice", "dev")


def test_what_slurm_refuses_is_said_and_nothing_is_left_held(hub, slurm_cluster):
    # The test cluster's GPUs are whole A100s: Slurm knows no 1g.10gb slice.
    r = hub.start_server("alice", "mig", {"profile": "mig-1g.10gb", "image": "base"}, wait=False)
    if r.status_code == 202:
        with hub.api("alice") as api:
            until("the start to fail", lambda: not api.get("/users/alice").json()["servers"].get("mig", {}).get("pending"))
            r = api.get("/users/alice")
    assert "Slurm did not take the workspace's job" in r.text or "gres" in r.text.lower(), r.text
    assert not [a for a in hub.book().allocations() if a.key == "workspace:alice/mig"]
    assert not queued(slurm_cluster, "pbws-ws-alice-mig"), "its job, if Slurm took it, is not left behind"
    # Someone without a cluster account is refused at start, in words.
    with hub.api("admin") as api:
        r = api.post("/users/admin/servers/x", json={"user_options": {"profile": "cpu", "image": "base"}})
        assert r.status_code == 403 and "no account on the cluster" in r.json()["message"], r.text
