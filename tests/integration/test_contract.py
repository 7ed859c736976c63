"""The backend contract: what every backend does, tested the same way on each.

One hub per backend (local, docker, kubernetes; slurm joins in its issue), on the same
podbay.yaml (tests/data/podbay-contract.yaml), driven only through JupyterHub's REST API and
podbay's service, as users drive it. What differs between engines is how a test looks
inside a workspace (a process's mount namespace, a container, a pod), how it makes one die
at start, and what the engine decides itself (Kubernetes places devices and queues jobs):
that is each backend's small driver below. A backend is done when it passes all of it.

The kubernetes backend runs against the stand-in cluster of tests/standins/k8s_cluster.py (an
emulated API server with a scheduler, a kubelet with NVIDIA's device plugin, the Job
controller and Kueue), which holds the same GPUs as the other backends' inventory.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.harness import (
    http_client,
    ROOT,
    Hub,
    claimed,
    environ_of,
    free_port_block,
    have_proxy,
    require,
    stand_in_cluster_running,
    wait_job,
)
from tests.standins.site_install import site_python

CONFIG = ROOT / "tests" / "data" / "podbay-contract.yaml"
BACKENDS = ["local", "docker", "kubernetes", "slurm"]
# Workspaces on one engine, the training pool's jobs on another, as people's accounts.
HYBRIDS = ["docker+slurm"]
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
    # podbay picks the devices (the quota book holds their IDs) and runs jobs one machine each.
    places_devices = True
    multi_node = False
    # Why a job that does not fit waits: podbay's own queue.
    queued_because = "waiting"
    places_job_devices = True

    @staticmethod
    def job_device(device: str) -> bool:
        """A device a training job was given, as it sees it: here one of the training GPUs."""
        return device in TRAINING

    def __init__(self, hub: Hub):
        self.hub = hub

    def home(self, user: str) -> str:
        return str(self.hub.data_dir / "homes" / user)

    def inside_home(self, user: str) -> str:
        return self.home(user)

    # The account workspaces run as, which SSH logs in to: the hub's own.
    login = pwd.getpwuid(os.getuid()).pw_name

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


class SlurmDriver(LocalDriver):
    """Workspaces on this node, as on the local backend; jobs on the tests' real Slurm
    (tests/standins/slurm_cluster.py), which picks their GPUs (by index: no driver to name them) and
    queues them, over two nodes."""

    name = "slurm"
    places_job_devices = False
    multi_node = True
    # One output file for the whole job: every node's lines.
    every_rank_logged = True
    queued_because = "queued in slurm: "

    @staticmethod
    def job_device(device: str) -> bool:
        return device.isdigit()


class DockerDriver:
    """Workspaces are containers: looked into with `docker exec`."""

    name = "docker"
    places_devices = True
    places_job_devices = True
    multi_node = False
    queued_because = "waiting"
    job_device = staticmethod(lambda device: device in TRAINING)

    def __init__(self, hub: Hub, docker):
        self.hub, self.docker = hub, docker

    def home(self, user: str) -> str:
        return "/home/jovyan"

    def inside_home(self, user: str) -> str:
        return "/home/jovyan"

    login = "jovyan"

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


class HybridDriver(DockerDriver):
    """Docker's workspaces beside a training pool on the tests' real Slurm, as the people's
    cluster accounts (pbt-alice, pbt-bob: tests/standins/slurm_cluster.py), homes on the folder
    both see: containers as the accounts with those homes, jobs as on the slurm backend."""

    name = "docker+slurm"
    places_job_devices = SlurmDriver.places_job_devices
    multi_node = SlurmDriver.multi_node
    every_rank_logged = SlurmDriver.every_rank_logged
    queued_because = SlurmDriver.queued_because
    job_device = staticmethod(SlurmDriver.job_device)
    login = "pbt-alice"

    def __init__(self, hub: Hub, docker, people):
        super().__init__(hub, docker)
        self.people = people

    def home(self, user: str) -> str:
        return str(self.people.home(f"pbt-{user}"))

    def inside_home(self, user: str) -> str:
        # Where the nodes see it too: the same paths in a workspace and in its moved jobs.
        return self.home(user)


def hybrid_config(data_dir: Path, people) -> Path:
    """The contract's podbay.yaml with the training pool on Slurm and people as their accounts."""
    cfg = yaml.safe_load(CONFIG.read_text())
    for image in cfg["images"]:
        image.pop("build", None)  # built by the image fixture
    cfg["pools"]["training"] = {**cfg["pools"]["training"], "engine": "slurm", "queue": "gpu"}
    cfg["slurm"] = {**cfg["slurm"], "run_as": "person", "partitions": {}, "job_prefix": "hybrid"}
    cfg["docker"] = {"name_prefix": "podbayhybrid"}
    cfg["cluster_accounts"] = {"table": {user: account for account, user in
                                         ((a, a.removeprefix("pbt-")) for a in people.accounts)}}
    path = data_dir / "podbay.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


class KubernetesDriver:
    """Workspaces are pods of the stand-in cluster (tests/standins/k8s_cluster.py): read through the
    API server; looked into in the mount namespace its kubelet made for the container. The
    PVCs are directories of its storage root, which is the hub's data directory's volumes/,
    where the other backends keep the catalog's volumes too."""

    name = "kubernetes"
    # The device plugin picks devices; Kueue and the scheduler queue jobs, over several nodes.
    places_devices = False
    places_job_devices = False
    multi_node = True
    queued_because = "queued in kubernetes: "
    # A Job's log is its first pod's.
    every_rank_logged = False
    job_device = staticmethod(lambda device: device in TRAINING)
    NS = "podbay-contract"

    def __init__(self, hub: Hub, url: str):
        self.hub, self.url = hub, url

    def home(self, user: str) -> str:
        return str(self.hub.data_dir / "volumes" / f"podbay-home-{user}")

    def inside_home(self, user: str) -> str:
        return "/home/jovyan"

    login = "jovyan"

    def pod(self, user: str, ws: str) -> dict:
        from tests.standins.k8s_cluster import ADMIN_TOKEN

        pods = httpx.get(f"{self.url}/api/v1/namespaces/{self.NS}/pods", timeout=10,
                         headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).json()["items"]
        for pod in pods:
            notes = pod["metadata"].get("annotations") or {}
            if (notes.get("hub.jupyter.org/username"), notes.get("hub.jupyter.org/servername")) == (user, ws):
                return pod
        raise AssertionError(f"no pod for {user}/{ws}")

    def pid(self, user: str, ws: str) -> int:
        name = self.pod(user, ws)["metadata"]["name"]
        return json.loads((self.hub.data_dir / "pods" / f"{self.NS}_{name}.json").read_text())["pid"]

    def env(self, user: str, ws: str) -> dict[str, str]:
        return environ_of(self.pid(user, ws))

    def granted(self, user: str, ws: str) -> dict[str, str]:
        """What the pod asks the scheduler for: its GPU resources."""
        (container,) = self.pod(user, ws)["spec"]["containers"]
        return {k: v for k, v in (container["resources"].get("limits") or {}).items() if k.startswith("nvidia.com/")}

    def sh(self, user: str, ws: str, script: str) -> tuple[int, str]:
        run = subprocess.run(["nsenter", "-t", str(self.pid(user, ws)), "-m", "sh", "-c",
                              script.replace("~", "/home/jovyan")], capture_output=True, text=True)
        return run.returncode, run.stdout + run.stderr

    def doomed(self, user: str) -> tuple[dict, object]:
        return {"profile": "mig-1g.10gb", "image": "broken"}, lambda: None


@pytest.fixture(scope="module")
def stand_in_cluster(tmp_path_factory):
    """The stand-in cluster with RBAC on, the hub as the chart's ServiceAccount: what the
    chart's hub Role (rendered by the real helm from config/helm/values.yaml) and `podbay k8s
    manifests` (the hub's other rights, Kueue's queues) grant is all it may do. Its storage
    root is the hub's data directory."""
    from tests.integration.test_helm import render

    require(os.geteuid() == 0, "the stand-in kubelet mounts volumes (needs root)")
    data_dir = tmp_path_factory.mktemp("contract-kubernetes")
    manifests = data_dir / "manifests.yaml"
    out = subprocess.run([sys.executable, "-m", "podbay.hub.cli", "k8s", "manifests", "--config", str(CONFIG)],
                         capture_output=True, text=True, check=True)
    manifests.write_text(out.stdout)
    chart = render(ROOT / "config" / "helm" / "values.yaml", namespace=KubernetesDriver.NS)
    assert chart.returncode == 0, chart.stderr
    rights = [d for d in yaml.safe_load_all(chart.stdout)
              if d and d["kind"] in ("Role", "RoleBinding") and d["metadata"]["name"] == "hub"]
    assert len(rights) == 2, "the chart's hub Role and its binding"
    for d in rights:
        d["metadata"]["namespace"] = KubernetesDriver.NS
    (data_dir / "chart-rbac.yaml").write_text(yaml.safe_dump_all(rights))
    with stand_in_cluster_running(data_dir, ROOT / "tests" / "data" / "k8s-contract-nodes.yaml",
                                  [data_dir / "chart-rbac.yaml", manifests], namespace=KubernetesDriver.NS,
                                  rbac=True) as (url, kubeconfig):
        yield data_dir, url, kubeconfig


@pytest.fixture(scope="module", params=BACKENDS + HYBRIDS)
def engine(request, tmp_path_factory):
    require(have_proxy(), "configurable-http-proxy is not installed")
    docker = None
    env = {"PODBAY_BACKEND": request.param}
    config = CONFIG
    if request.param == "docker+slurm":
        docker = request.getfixturevalue("docker")
        request.getfixturevalue("image")
        people = request.getfixturevalue("slurm_people")
        env = {"PODBAY_BACKEND": "docker", "SLURM_CONF": str(request.getfixturevalue("slurm_cluster").conf)}
        # The people's jobs read the catalog's volumes from here: a folder their accounts can
        # enter (pytest's own are root's alone).
        data_dir = Path(tempfile.mkdtemp(prefix="podbay-hybrid-"))
        data_dir.chmod(0o755)
        config = hybrid_config(data_dir, people)
        data_dir = data_dir / "data"
        data_dir.mkdir(mode=0o755)
    elif request.param == "docker":
        docker = request.getfixturevalue("docker")
        request.getfixturevalue("image")
        data_dir = tmp_path_factory.mktemp(f"contract-{request.param}")
    elif request.param == "kubernetes":
        data_dir, url, kubeconfig = request.getfixturevalue("stand_in_cluster")
        env["KUBECONFIG"] = str(kubeconfig)
    elif request.param == "slurm":
        env["SLURM_CONF"] = str(request.getfixturevalue("slurm_cluster").conf)
        data_dir = tmp_path_factory.mktemp(f"contract-{request.param}")
    else:
        data_dir = tmp_path_factory.mktemp(f"contract-{request.param}")
    # Where people's jobs run podbay as them, from where the site installed it for everyone.
    python = str(site_python()) if request.param == "docker+slurm" else sys.executable
    hub = Hub(config=config, data_dir=data_dir, port=free_port_block(), keep_workspaces=True, extra_env=env,
              python=python)
    hub.start()
    if request.param == "docker+slurm":
        driver = HybridDriver(hub, docker, people)
    elif request.param == "kubernetes":
        driver = KubernetesDriver(hub, url)
    elif request.param == "slurm":
        driver = SlurmDriver(hub)
    else:
        driver = DockerDriver(hub, docker) if docker else LocalDriver(hub)
    yield driver
    hub.stop()
    if request.param == "docker+slurm":
        shutil.rmtree(data_dir.parent, ignore_errors=True)
    if request.param in ("local", "slurm"):
        # Workspaces outlive the hub by design (--keep-workspaces): end the ones left.
        ledger = hub.book()
        for alloc in ledger.allocations():
            if alloc.ref.get("pid"):
                subprocess.run(["kill", str(alloc.ref["pid"])], capture_output=True)
        ledger.dispose()



def service(hub: Hub, user: str) -> httpx.Client:
    return http_client(base_url=f"{hub.url}/services/podbay/api/v1",
                        headers={"Authorization": f"token {hub.token(user)}"}, timeout=60)


def free(hub: Hub, pool: str, profile: str, expect: int | None = None) -> int:
    """What the service says is free; with `expect`, once it says so (an engine's view of
    itself, like the cluster watch, follows a change within moments, not at once)."""
    deadline = time.monotonic() + 10
    with service(hub, "alice") as api:
        while True:
            pools = {p["pool"]: p for p in api.get("/capacity").json()["pools"]}
            n = pools[pool]["profiles"][profile]["free"]
            if expect is None or n == expect or time.monotonic() > deadline:
                return n
            time.sleep(0.1)



# --- workspaces ----------------------------------------------------------------------------


@pytest.mark.parametrize("profile, devices, units, asks", [
    ("cpu", lambda d: d == [], "0", {}),
    ("mig-1g.10gb", lambda d: len(d) == 1 and d[0] in MIG, "0.14", {"nvidia.com/mig-1g.10gb": "1"}),
    ("shared-1/2", lambda d: d == [SHARED], "0.5", {"nvidia.com/gpu.shared": "1"}),
    ("gpu-1", lambda d: d == [WHOLE], "1", {"nvidia.com/gpu": "1"}),
])
def test_each_profile_kind_starts_with_exactly_its_devices_and_gives_them_back(engine, profile, devices, units, asks):
    hub, name = engine.hub, profile.replace("/", "-").replace(".", "")
    key = f"workspace:alice/{name}"
    r = hub.start_server("alice", name, {"profile": profile, "image": "base"})
    assert r.status_code in (201, 202), r.text
    env = engine.env("alice", name)
    # What the container runtime is told to show: the same name on every backend.
    seen = [d for d in env["NVIDIA_VISIBLE_DEVICES"].split(",") if d != "void"]
    assert devices(seen), env["NVIDIA_VISIBLE_DEVICES"]
    if not seen:
        assert env["NVIDIA_VISIBLE_DEVICES"] == "void", "NGC images would otherwise see every GPU"
    if engine.places_devices:
        held = claimed(hub, key)
        assert held == seen, "the workspace gets exactly the claim"
        assert engine.granted("alice", name) == list(dict.fromkeys(held)), "the engine gives exactly the claim"
        assert env["CUDA_VISIBLE_DEVICES"] == ",".join(held)
    else:
        # The engine placed them: the book holds the units, no device; the pod asked for the
        # profile's resource and podbay set no device variable of its own.
        assert claimed(hub, key) == [] and booked(hub, key)
        assert engine.granted("alice", name) == asks
        assert "CUDA_VISIBLE_DEVICES" not in env
    assert (env["PODBAY_PROFILE"], env["PODBAY_TEAM"], env["PODBAY_GPU_UNITS"]) == (profile, "vision", units)
    assert env["JUPYTER_VSCODE_PROXY_USE_SOCKET"] == "1" and env["PODBAY_SERVICE_URL"].startswith("http://")
    hub.stop_server("alice", name)
    assert not booked(hub, key)


def booked(hub: Hub, key: str) -> bool:
    """Whether the quota book holds anything under the key."""
    ledger = hub.book()
    try:
        return ledger.get(key) is not None
    finally:
        ledger.dispose()


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


def test_removing_one_workspace_keeps_the_home_and_the_other_workspaces_files(engine):
    """`podbay ws rm`, the TUI's delete, the hub's delete button: the workspace goes, never the
    person's home (every one of their workspaces uses it) nor a shared volume. The stand-in
    cluster deletes a deleted claim's files once no pod uses it, as a provisioner does."""
    hub = engine.hub
    for ws in ("stays", "goes"):
        hub.start_server("alice", ws, {"profile": "cpu", "image": "base", "volumes": ["scratch"]})
    code, out = engine.sh("alice", "stays", "mkdir -p ~/project && echo mine > ~/project/kept.txt "
                                             "&& echo ours > ~/data/scratch/kept.txt")
    assert code == 0, out
    hub.remove_server("alice", "goes")
    # Every workspace of the person stopped, so nothing holds the home any more.
    hub.stop_server("alice", "stays")
    hub.start_server("alice", "stays", {"profile": "cpu", "image": "base", "volumes": ["scratch"]})
    assert engine.sh("alice", "stays", "cat ~/project/kept.txt ~/data/scratch/kept.txt") == (0, "mine\nours\n")
    hub.remove_server("alice", "stays")
    assert (hub.data_dir / "volumes" / "scratch" / "kept.txt").read_text() == "ours\n"


def test_capacity_shows_what_a_workspace_takes_and_gives_back(engine):
    hub = engine.hub
    before = free(hub, "dev", "mig-1g.10gb")
    hub.start_server("alice", "cap", {"profile": "mig-1g.10gb", "image": "base"})
    assert free(hub, "dev", "mig-1g.10gb", expect=before - 1) == before - 1
    hub.stop_server("alice", "cap")
    assert free(hub, "dev", "mig-1g.10gb", expect=before) == before


def test_a_full_profile_is_refused_with_its_reason_shown_unavailable_and_free_again_after_a_stop(engine):
    hub = engine.hub
    for name in ("m1", "m2"):  # both 1g.10gb slices
        assert hub.start_server("alice", name, {"profile": "mig-1g.10gb", "image": "base"}).status_code in (201, 202)
    assert free(hub, "dev", "mig-1g.10gb", expect=0) == 0
    with hub.api("alice") as api:
        r = api.post("/users/alice/servers/m3", json={"user_options": {"profile": "mig-1g.10gb", "image": "base"}})
    assert r.status_code == 503 and r.json()["message"].startswith("No capacity: ") and "mig-1g.10gb" in r.text, r.text
    assert not booked(hub, "workspace:alice/m3")
    with service(hub, "alice") as api:
        (mig,) = [p for p in api.get("/catalog").json()["profiles"] if p["id"] == "mig-1g.10gb"]
    # The catalog says it is not available, and why (the spawn form renders the same choices:
    # hub/spawner.py).
    assert (mig["available"], mig["free"], mig["reason"]) == (False, 0, "none free right now"), mig
    hub.stop_server("alice", "m1")
    assert free(hub, "dev", "mig-1g.10gb", expect=1) == 1
    assert hub.start_server("alice", "m3", {"profile": "mig-1g.10gb", "image": "base"}).status_code in (201, 202)
    for name in ("m2", "m3"):
        hub.stop_server("alice", name)


def test_quota_and_access_refusals_claim_nothing(engine):
    hub = engine.hub
    with hub.api("bob") as api:
        r = api.post("/users/bob/servers/big", json={"user_options": {"profile": "gpu-1", "image": "base"}})
        assert r.status_code == 403 and "Quota" in r.json()["message"], r.text
        r = api.post("/users/bob/servers/peek", json={"user_options": {"profile": "cpu", "volumes": ["reference"]}})
        assert r.status_code == 400 and "reference" in r.json()["message"], r.text
    assert not booked(hub, "workspace:bob/big") and not booked(hub, "workspace:bob/peek")
    # What fits the quota starts.
    assert hub.start_server("bob", "small", {"profile": "shared-1/2", "image": "base"}).status_code in (201, 202)
    hub.stop_server("bob", "small")


def test_ssh_through_the_hub_as_the_workspaces_account_in_its_home(engine, tmp_path_factory):
    """`podbay ssh` with the real OpenSSH client, through the hub and the workspace's Jupyter
    server (tests/integration/test_ssh.py has the rest of SSH, on the local and docker backends)."""
    from tests.integration.test_ssh import Person

    hub = engine.hub
    person = Person(hub, tmp_path_factory.mktemp(f"laptop-{engine.name}"), "alice")
    assert person.podbay("login", hub.url, "--token", hub.new_token("alice")).returncode == 0
    assert person.podbay("keys", "add", f"{person.key}.pub").returncode == 0
    hub.start_server("alice", "ssh", {"profile": "mig-1g.10gb", "image": "base", "volumes": ["scratch"]})
    try:
        r = person.podbay("ssh", *person.ssh_options(), "ssh", "--",
                          'id -un; pwd; echo "$NVIDIA_VISIBLE_DEVICES"; ls -d "$HOME/data/scratch"; '
                          'echo "from ssh" > "$HOME/from-ssh.txt"')
        assert r.returncode == 0, r.stderr
        home = engine.inside_home("alice")
        assert r.stdout.splitlines() == [engine.login, home, engine.env("alice", "ssh")["NVIDIA_VISIBLE_DEVICES"],
                                         f"{home}/data/scratch"]
        assert engine.sh("alice", "ssh", "cat ~/from-ssh.txt")[1].strip() == "from ssh"
    finally:
        hub.stop_server("alice", "ssh")


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
    # The message proves the quick path (the slow one is the hub's own wait, which times out
    # after http_timeout, 60 s, in words of its own); the bound only rules that wait out.
    assert elapsed < 30, f"{elapsed:.1f}s to report that the workspace died"
    assert not booked(hub, "workspace:alice/doomed")


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
                                                "echo $NVIDIA_VISIBLE_DEVICES $PODBAY_TEAM $PODBAY_JOB_NAME"]})
        assert r.status_code == 201, r.text
        job = wait_job(api, r.json()["id"], {"succeeded", "failed"})
        assert job["state"] == "succeeded" and job["exit_code"] == 0, job
        lines = api.get(f"/jobs/{job['id']}/logs").text.splitlines()
        device = lines[2].split()[0]
        assert engine.job_device(device) and lines == ["lr=0.1", "2", f"{device} vision train"], lines
        # podbay knows the device where it placed it; elsewhere the engine alone does.
        assert job["devices"] == ([device] if engine.places_job_devices else [])
        assert not booked(hub, f"job:{job['id']}")
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
        # Until the scheduler has looked at it and says why it waits (not the submit's own
        # "waiting for the scheduler").
        deadline = time.monotonic() + 30
        while (waiting := api.get(f"/jobs/{nxt['id']}").json())["message"] == "waiting for the scheduler" or \
                engine.queued_because not in waiting["message"]:
            assert time.monotonic() < deadline, waiting
            time.sleep(0.2)
        assert waiting["state"] == "queued", waiting
        assert not booked(hub, f"job:{nxt['id']}")

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
        assert not booked(hub, f"job:{wide['id']}")
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
                                    "command": ["sh", "-c", "echo rank $NODE_RANK of $WORLD_SIZE"]})
        if engine.multi_node:
            job = wait_job(api, r.json()["id"], {"succeeded", "failed"})
            # The first node's output (Kubernetes: pod 0's log), or every node's (Slurm: one file).
            lines = api.get(f"/jobs/{job['id']}/logs").text.splitlines()
            assert job["state"] == "succeeded" and "rank 0 of 2" in lines, job
            assert set(lines) == ({"rank 0 of 2", "rank 1 of 2"} if engine.every_rank_logged else {"rank 0 of 2"}), lines
        else:
            assert r.status_code == 400 and "runs a job on one machine: ask for nodes: 1" in r.json()["message"], r.text
        r = api.post("/jobs", json={"name": "where", "image": "base", "pool": "moon", "command": ["true"]})
        assert r.status_code == 400 and "unknown pool 'moon'" in r.json()["message"], r.text


def test_team_and_image_settings_and_a_persons_secrets_reach_workspaces_and_jobs(engine):
    hub = engine.hub
    with service(hub, "alice") as api:
        r = api.put("/secrets/WANDB_API_KEY", json={"value": "k-alice-123"})
        assert r.status_code == 204, r.text
        r = api.put("/secrets/PODBAY_TEAM", json={"value": "x"})
        assert r.status_code == 400 and "set by podbay" in r.text and "x" not in r.json()["message"].split()
        # Never shown back: names only.
        assert [s["name"] for s in api.get("/secrets").json()] == ["WANDB_API_KEY"]
        assert "k-alice-123" not in api.get("/secrets").text
    hub.start_server("alice", "wandb", {"profile": "cpu", "image": "base"})
    env = engine.env("alice", "wandb")
    assert (env["WANDB_BASE_URL"], env["WANDB_ENTITY"], env["WANDB_PROJECT"], env["WANDB_API_KEY"]) == (
        "http://wandb.test", "vision-lab", "contract", "k-alice-123")
    if engine.name == "kubernetes":
        # Taken from the person's Secret: the value is in no pod spec.
        (container,) = engine.pod("alice", "wandb")["spec"]["containers"]
        assert "k-alice-123" not in json.dumps(container)
        assert container["envFrom"] == [{"secretRef": {"name": "podbay-secrets-alice"}}]
    hub.stop_server("alice", "wandb")
    with service(hub, "alice") as api:
        r = api.post("/jobs", json={"name": "tracked", "image": "base", "gpus": 0,
                                    "command": ["sh", "-c", "echo $WANDB_ENTITY $WANDB_API_KEY"]})
        job = wait_job(api, r.json()["id"], {"succeeded", "failed"})
        assert job["state"] == "succeeded" and api.get(f"/jobs/{job['id']}/logs").text == "vision-lab k-alice-123\n"
        assert api.delete("/secrets/WANDB_API_KEY").status_code == 204
        assert api.delete("/secrets/WANDB_API_KEY").status_code == 404
    # bob's team has no such settings, and alice's secret is hers.
    hub.start_server("bob", "plain", {"profile": "cpu", "image": "base"})
    env = engine.env("bob", "plain")
    assert "WANDB_API_KEY" not in env and "WANDB_ENTITY" not in env and env["WANDB_BASE_URL"] == "http://wandb.test"
    hub.stop_server("bob", "plain")


def test_a_hub_restart_adopts_running_workspaces_and_jobs(engine):
    hub = engine.hub
    hub.start_server("alice", "stays", {"profile": "gpu-1", "image": "base"})
    held = claimed(hub, "workspace:alice/stays")
    assert booked(hub, "workspace:alice/stays")
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
    assert booked(hub, "workspace:alice/stays") and claimed(hub, "workspace:alice/stays") == held, \
        "a running workspace keeps its devices"
    assert hub.wait_ready("alice", "stays")["ready"]
    with http_client(headers={"Authorization": f"token {hub.token('alice')}"}) as http:
        assert http.get(f"{hub.url}/user/alice/stays/api/status", timeout=30).status_code == 200
    with service(hub, "alice") as api:
        # A scheduler pass after the restart, seen as a job it started: it looked at the
        # adopted one on that pass too.
        tick = api.post("/jobs", json={"name": "tick", "image": "base", "gpus": 0, "command": ["true"]})
        assert tick.status_code == 201, tick.text
        wait_job(api, tick.json()["id"], {"running", "succeeded", "failed"})
        assert api.get(f"/jobs/{job['id']}").json()["state"] == "running"
        assert booked(hub, f"job:{job['id']}") and claimed(hub, f"job:{job['id']}") == job_devices, \
            "an adopted job keeps its GPU"
        (scratch / "go-on").write_text("")
        done = wait_job(api, job["id"], {"succeeded", "failed"})
        assert done["state"] == "succeeded", done
        assert api.get(f"/jobs/{job['id']}/logs").text == "before\nafter\n", "nothing lost, nothing run twice"
    hub.stop_server("alice", "stays")
    assert not booked(hub, "workspace:alice/stays")


def test_the_contract_covers_every_installed_backend():
    # A backend installed as an entry point but missing here has not shown it is done.
    from podbay.hub.backends import available

    assert sorted(available()) == sorted(BACKENDS), "add the new backend and its driver to this suite"
