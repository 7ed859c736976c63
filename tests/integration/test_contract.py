"""The backend contract: what every backend does, tested the same way on each.

One hub per backend (local, docker; kubernetes and slurm join in their issues), on the same
podbay.yaml (tests/data/podbay-contract.yaml), driven only through JupyterHub's REST API and
podbay's service, as users drive it. What differs between engines is how a test looks
inside a workspace (a process's mount namespace, a container) and how it makes one die at
start: that is each backend's small driver below. A backend is done when it passes all of it.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, Hub, claimed, environ_of, free_port_block, have_proxy, require, wait_job

CONFIG = ROOT / "tests" / "data" / "podbay-contract.yaml"
BACKENDS = ["local", "docker"]
MIG = {"MIG-33333333-0003-4000-8000-000000000003", "MIG-33333333-0004-4000-8000-000000000004"}
SHARED = "GPU-33333333-0000-4000-8000-000000000001"
WHOLE = "GPU-33333333-0000-4000-8000-000000000002"
TRAINING = {"GPU-44444444-0000-4000-8000-000000000000", "GPU-44444444-0000-4000-8000-000000000001"}

pytestmark = pytest.mark.hub


# --- each backend's driver: looking inside a workspace ------------------------------------


class LocalDriver:
    """Workspaces are processes: their environment in /proc, their volumes in their own
    mount namespace (nsenter)."""

    name = "local"

    def __init__(self, hub: Hub):
        self.hub = hub

    def home(self, user: str) -> str:
        return str(self.hub.data_dir / "homes" / user)

    def env(self, user: str, ws: str) -> dict[str, str]:
        return environ_of(self.hub.workspace_pid(user, ws))

    def granted(self, user: str, ws: str) -> list[str]:
        """The devices the engine was told to give the workspace: here, its environment."""
        return [d for d in self.env(user, ws)["CUDA_VISIBLE_DEVICES"].split(",") if d]

    def sh(self, user: str, ws: str, script: str) -> tuple[int, str]:
        pid = self.hub.workspace_pid(user, ws)
        run = subprocess.run(["nsenter", "-t", str(pid), "-m", "sh", "-c", script.replace("~", self.home(user))],
                             capture_output=True, text=True)
        return run.returncode, run.stdout + run.stderr

    def doomed(self, user: str) -> tuple[dict, object]:
        """Options whose start fails after the engine started it, and how to undo the cause:
        a file where the scratch volume's mount point must go."""
        blocker = Path(self.home(user)) / "data" / "scratch"
        blocker.parent.mkdir(parents=True, exist_ok=True)
        if blocker.is_dir():
            blocker.rmdir()
        blocker.write_text("in the way\n")
        return {"profile": "mig-1g.10gb", "volumes": ["scratch"]}, blocker.unlink


class DockerDriver:
    """Workspaces are containers: looked into with `docker exec`."""

    name = "docker"

    def __init__(self, hub: Hub, docker):
        self.hub, self.docker = hub, docker

    def home(self, user: str) -> str:
        return "/home/jovyan"

    def _container(self, user: str, ws: str) -> str:
        ledger = self.hub.book()
        try:
            alloc = ledger.get(f"workspace:{user}/{ws}")
        finally:
            ledger.dispose()
        assert alloc is not None and alloc.ref.get("container"), f"no container for {user}/{ws}"
        return alloc.ref["container"]

    def env(self, user: str, ws: str) -> dict[str, str]:
        # The workspace server's own environment (pid 1 is tini, with the container's).
        _, out = self.sh(user, ws, "cat /proc/$(pgrep -f jupyterhub-singleuser | head -1)/environ")
        return dict(item.split("=", 1) for item in out.split("\0") if "=" in item)

    def granted(self, user: str, ws: str) -> list[str]:
        """The devices Docker was asked for: the container's device request."""
        requests = self.docker.api.inspect_container(self._container(user, ws))["HostConfig"]["DeviceRequests"] or []
        return [d for r in requests for d in r["DeviceIDs"]]

    def sh(self, user: str, ws: str, script: str) -> tuple[int, str]:
        exec_id = self.docker.api.exec_create(self._container(user, ws), ["sh", "-c", script])
        out = self.docker.api.exec_start(exec_id).decode(errors="replace")
        return self.docker.api.exec_inspect(exec_id)["ExitCode"], out

    def doomed(self, user: str) -> tuple[dict, object]:
        return {"profile": "mig-1g.10gb", "image": "broken"}, lambda: None


@pytest.fixture(scope="module", params=BACKENDS)
def engine(request, tmp_path_factory):
    require(have_proxy(), "configurable-http-proxy is not installed")
    docker = None
    if request.param == "docker":
        docker = request.getfixturevalue("docker")
        request.getfixturevalue("image")
    hub = Hub(config=CONFIG, data_dir=tmp_path_factory.mktemp(f"contract-{request.param}"), port=free_port_block(),
              keep_workspaces=True, extra_env={"PODBAY_BACKEND": request.param})
    hub.start()
    driver = DockerDriver(hub, docker) if docker else LocalDriver(hub)
    yield driver
    hub.stop()
    if request.param == "local":
        # Workspaces outlive the hub by design (--keep-workspaces): end the ones left.
        ledger = hub.book()
        for alloc in ledger.allocations():
            if alloc.ref.get("pid"):
                subprocess.run(["kill", str(alloc.ref["pid"])], capture_output=True)
        ledger.dispose()



def service(hub: Hub, user: str) -> httpx.Client:
    return httpx.Client(base_url=f"{hub.url}/services/podbay/api/v1",
                        headers={"Authorization": f"token {hub.token(user)}"}, timeout=60)


def free(hub: Hub, pool: str, profile: str) -> int:
    with service(hub, "alice") as api:
        pools = {p["pool"]: p for p in api.get("/capacity").json()["pools"]}
    return pools[pool]["profiles"][profile]["free"]



# --- workspaces ----------------------------------------------------------------------------


@pytest.mark.parametrize("profile, devices, units", [
    ("cpu", lambda d: d == [], "0"),
    ("mig-1g.10gb", lambda d: len(d) == 1 and d[0] in MIG, "0.14"),
    ("shared-1/2", lambda d: d == [SHARED], "0.5"),
    ("gpu-1", lambda d: d == [WHOLE], "1"),
])
def test_each_profile_kind_starts_with_exactly_its_devices_and_gives_them_back(engine, profile, devices, units):
    hub, name = engine.hub, profile.replace("/", "-").replace(".", "")
    r = hub.start_server("alice", name, {"profile": profile, "image": "base"})
    assert r.status_code in (201, 202), r.text
    held = claimed(hub, f"workspace:alice/{name}")
    assert devices(held), held
    assert engine.granted("alice", name) == list(dict.fromkeys(held)), "the engine gives exactly the claim"
    env = engine.env("alice", name)
    # The same names on every backend that places devices itself (hub/environment.py).
    assert env["CUDA_VISIBLE_DEVICES"] == ",".join(held)
    assert env["NVIDIA_VISIBLE_DEVICES"] == (",".join(held) or "void")
    assert (env["PODBAY_PROFILE"], env["PODBAY_TEAM"], env["PODBAY_GPU_UNITS"]) == (profile, "vision", units)
    assert env["JUPYTER_VSCODE_PROXY_USE_SOCKET"] == "1" and env["PODBAY_SERVICE_URL"].startswith("http://")
    hub.stop_server("alice", name)
    assert claimed(hub, f"workspace:alice/{name}") == []


def test_volumes_inside_read_only_where_declared_and_a_home_that_stays(engine):
    hub = engine.hub
    (hub.data_dir / "volumes" / "reference").mkdir(parents=True, exist_ok=True)
    (hub.data_dir / "volumes" / "reference" / "labels.txt").write_text("cat\ndog\n")
    hub.start_server("alice", "vols", {"profile": "cpu", "image": "base", "volumes": ["reference", "scratch"]})
    assert engine.env("alice", "vols")["PODBAY_VOLUMES"] == "reference,scratch"
    code, out = engine.sh("alice", "vols", "cat ~/data/reference/labels.txt")
    assert code == 0 and out == "cat\ndog\n", out
    code, out = engine.sh("alice", "vols", "touch ~/data/reference/new")
    assert code != 0 and "Read-only file system" in out, out
    code, out = engine.sh("alice", "vols", "echo from-alice > ~/data/scratch/note && echo kept > ~/notes.txt")
    assert code == 0, out
    assert (hub.data_dir / "volumes" / "scratch" / "note").read_text() == "from-alice\n"
    hub.stop_server("alice", "vols")
    hub.start_server("alice", "vols", {"profile": "cpu", "image": "base"})
    assert engine.sh("alice", "vols", "cat ~/notes.txt") == (0, "kept\n"), "the home outlives the workspace"
    hub.stop_server("alice", "vols")


def test_capacity_shows_what_a_workspace_takes_and_gives_back(engine):
    hub = engine.hub
    before = free(hub, "dev", "mig-1g.10gb")
    hub.start_server("alice", "cap", {"profile": "mig-1g.10gb", "image": "base"})
    assert free(hub, "dev", "mig-1g.10gb") == before - 1
    hub.stop_server("alice", "cap")
    assert free(hub, "dev", "mig-1g.10gb") == before


def test_quota_and_access_refusals_claim_nothing(engine):
    hub = engine.hub
    with hub.api("bob") as api:
        r = api.post("/users/bob/servers/big", json={"user_options": {"profile": "gpu-1", "image": "base"}})
        assert r.status_code == 403 and "Quota" in r.json()["message"], r.text
        r = api.post("/users/bob/servers/peek", json={"user_options": {"profile": "cpu", "volumes": ["reference"]}})
        assert r.status_code == 400 and "reference" in r.json()["message"], r.text
    assert claimed(hub, "workspace:bob/big") == [] and claimed(hub, "workspace:bob/peek") == []
    # What fits the quota starts.
    assert hub.start_server("bob", "small", {"profile": "shared-1/2", "image": "base"}).status_code in (201, 202)
    hub.stop_server("bob", "small")


def test_a_workspace_that_dies_while_starting_fails_at_once_and_frees_its_devices(engine):
    hub = engine.hub
    options, undo = engine.doomed("alice")
    try:
        t0 = time.monotonic()
        r = hub.start_server("alice", "doomed", options)
        elapsed = time.monotonic() - t0
    finally:
        undo()
    assert r.status_code == 500, r.text
    assert "exited with status" in r.json()["message"], r.text
    assert elapsed < 10, f"{elapsed:.1f}s to report that the workspace died"
    assert claimed(hub, "workspace:alice/doomed") == []


# --- jobs ------------------------------------------------------------------------------------


def test_a_job_moved_from_a_workspace_runs_with_its_image_data_and_environment(engine):
    hub = engine.hub
    (hub.data_dir / "volumes" / "reference").mkdir(parents=True, exist_ok=True)
    (hub.data_dir / "volumes" / "reference" / "labels.txt").write_text("cat\ndog\n")
    hub.start_server("alice", "dev", {"profile": "cpu", "image": "base", "volumes": ["reference"]})
    engine.sh("alice", "dev", "mkdir -p ~/proj && echo 'lr=0.1' > ~/proj/cfg")
    with service(hub, "alice") as api:
        r = api.post("/jobs", json={"name": "train", "from_workspace": "dev", "gpus": 1, "workdir": "proj",
                                    "command": ["sh", "-c", "cat cfg; wc -l < ~/data/reference/labels.txt; "
                                                "echo $CUDA_VISIBLE_DEVICES $PODBAY_TEAM $PODBAY_JOB_NAME"]})
        assert r.status_code == 201, r.text
        job = wait_job(api, r.json()["id"], {"succeeded", "failed"})
        assert job["state"] == "succeeded" and job["exit_code"] == 0, job
        (device,) = job["devices"]
        assert device in TRAINING
        assert api.get(f"/jobs/{job['id']}/logs").text == f"lr=0.1\n2\n{device} vision train\n"
        assert claimed(hub, f"job:{job['id']}") == []
    hub.stop_server("alice", "dev")


def test_jobs_fail_with_their_exit_code_wait_for_gpus_follow_and_cancel(engine):
    hub = engine.hub
    with service(hub, "alice") as api:
        r = api.post("/jobs", json={"name": "bad", "image": "base", "gpus": 1, "command": ["sh", "-c", "echo oops; exit 3"]})
        job = wait_job(api, r.json()["id"], {"succeeded", "failed"})
        assert (job["state"], job["exit_code"]) == ("failed", 3)

        # Both training GPUs, then one more: it waits, with the reason, holding nothing.
        r = api.post("/jobs", json={"name": "wide", "image": "base", "gpus": 2,
                                    "command": ["sh", "-c", "for i in 1 2 3; do echo tick $i; sleep 0.5; done; sleep 600"]})
        wide = wait_job(api, r.json()["id"], {"running"})
        r = api.post("/jobs", json={"name": "next", "image": "base", "gpus": 1, "command": ["echo", "my turn"]})
        nxt = r.json()
        time.sleep(1.5)
        waiting = api.get(f"/jobs/{nxt['id']}").json()
        assert waiting["state"] == "queued" and "waiting" in waiting["message"], waiting
        assert claimed(hub, f"job:{nxt['id']}") == []

        # Following streams the output as it comes, until cancel ends the job.
        seen = b""
        with api.stream("GET", f"/jobs/{wide['id']}/logs", params={"follow": "true"}) as stream:
            for chunk in stream.iter_bytes():
                seen += chunk
                if b"tick 3\n" in seen:
                    break
        assert seen.startswith(b"tick 1\ntick 2\ntick 3\n"), seen
        r = api.delete(f"/jobs/{wide['id']}")
        assert r.status_code == 200 and r.json()["state"] == "cancelled", r.text
        assert claimed(hub, f"job:{wide['id']}") == []
        done = wait_job(api, nxt["id"], {"succeeded", "failed"})
        assert done["state"] == "succeeded" and api.get(f"/jobs/{nxt['id']}/logs").text == "my turn\n"


def test_log_cursors_read_on_and_sizes_one_machine_cannot_hold_are_refused(engine):
    with service(engine.hub, "alice") as api:
        r = api.post("/jobs", json={"name": "count", "image": "base", "gpus": 0,
                                    "command": ["sh", "-c", "echo one; echo two"]})
        job = wait_job(api, r.json()["id"], {"succeeded", "failed"})
        assert job["state"] == "succeeded", job
        logs = f"/jobs/{job['id']}/logs"
        whole = api.get(logs)
        assert whole.text == "one\ntwo\n"
        # The cursor is the backend's own: handed back, it reads on where the last read ended.
        after = api.get(logs, params={"cursor": whole.headers["X-Podbay-Cursor"]})
        assert after.status_code == 200 and after.text == "", after.text
        r = api.get(logs, params={"cursor": "page-7"})
        assert r.status_code == 400 and r.json()["error"] == "bad_cursor", r.text
        r = api.post("/jobs", json={"name": "wide", "image": "base", "gpus_per_node": 1, "nodes": 2,
                                    "command": ["true"]})
        assert r.status_code == 400 and "runs a job on one machine: ask for nodes: 1" in r.json()["message"], r.text
        r = api.post("/jobs", json={"name": "where", "image": "base", "pool": "moon", "command": ["true"]})
        assert r.status_code == 400 and "unknown pool 'moon'" in r.json()["message"], r.text


def test_a_hub_restart_adopts_running_workspaces_and_jobs(engine):
    hub = engine.hub
    hub.start_server("alice", "stays", {"profile": "gpu-1", "image": "base"})
    held = claimed(hub, "workspace:alice/stays")
    scratch = hub.data_dir / "volumes" / "scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    with service(hub, "alice") as api:
        # It runs until the test says so, through the shared scratch volume: still running
        # when the hub comes back, whatever the restart takes.
        r = api.post("/jobs", json={"name": "long", "image": "base", "gpus": 1, "volumes": ["scratch"], "command": [
            "sh", "-c", "echo before; while [ ! -e ~/data/scratch/go-on ]; do sleep 0.2; done; echo after"]})
        job = wait_job(api, r.json()["id"], {"running"})
    job_devices = claimed(hub, f"job:{job['id']}")
    hub.stop()
    hub.start()
    assert claimed(hub, "workspace:alice/stays") == held, "a running workspace keeps its devices"
    assert hub.wait_ready("alice", "stays", timeout=30)["ready"]
    with httpx.Client(headers={"Authorization": f"token {hub.token('alice')}"}) as http:
        assert http.get(f"{hub.url}/user/alice/stays/api/status", timeout=30).status_code == 200
    with service(hub, "alice") as api:
        time.sleep(1)  # a scheduler tick or two after the restart
        assert api.get(f"/jobs/{job['id']}").json()["state"] == "running"
        assert claimed(hub, f"job:{job['id']}") == job_devices, "an adopted job keeps its GPU"
        (scratch / "go-on").write_text("")
        done = wait_job(api, job["id"], {"succeeded", "failed"})
        assert done["state"] == "succeeded", done
        assert api.get(f"/jobs/{job['id']}/logs").text == "before\nafter\n", "nothing lost, nothing run twice"
    hub.stop_server("alice", "stays")
    assert claimed(hub, "workspace:alice/stays") == []


def test_the_contract_covers_every_installed_backend():
    # A backend installed as an entry point but missing here has not shown it is done.
    from podbay.hub.backends import available

    assert sorted(available()) == sorted(BACKENDS), "add the new backend and its driver to this suite"
