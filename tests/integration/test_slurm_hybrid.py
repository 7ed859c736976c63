"""The hybrid: docker workspaces on the GPU server, the training pool on the tests' real Slurm,
people as their own cluster accounts (pbt-alice, pbt-bob) with homes on the folder the server
and the nodes share. The backend contract runs on it too (test_contract.py, docker+slurm);
here is what only the hybrid has: the container is her account, her home is where this server
mounts the shared filesystem (cluster_accounts.paths), and what she holds on both engines is
counted together."""

from __future__ import annotations

import asyncio
import pwd
import shutil
import tempfile
from pathlib import Path

import pytest
import yaml

from podbay.hub.backends import load
from podbay.hub.config import parse_config
from podbay.hub.doctor import diagnose
from tests.harness import DOCKER_CONFIG, hub_on, wait_job
from tests.integration.test_docker import container_of, sh
from tests.integration.test_slurm import service
from tests.integration.test_slurm_identity import lab_writes_her_config, owner
from tests.standins.dcgm_exporter import Exporter
from tests.standins.site_install import site_python
from tests.standins.slurm_cluster import wait_for

pytestmark = pytest.mark.hub


def test_a_docker_workspace_is_her_account_in_her_cluster_home_and_her_jobs_on_slurm_share_it(
        docker, image, slurm_cluster, slurm_people):
    # This server mounts the shared filesystem somewhere else than the nodes do: at a link to it.
    view = Path(tempfile.mkdtemp(prefix="podbay-view-"))
    view.chmod(0o755)
    mount = view / "shared"
    cfg = yaml.safe_load(DOCKER_CONFIG.read_text())
    for im in cfg["images"]:
        im.pop("build", None)  # built by the image fixture
    cfg["pools"]["training"] = {"engine": "slurm", "queue": "gpu"}
    cfg["docker"] = {"name_prefix": "podbayhybrid"}
    cfg["slurm"] = {"conf": str(slurm_cluster.conf), "run_as": "person", "container": "none",
                    "job_prefix": "hybridws", "time_limit": "10"}
    cfg["cluster_accounts"] = {"table": {"alice": "pbt-alice", "bob": "pbt-bob", "admin": "pbt-nobody"},
                               "paths": {str(slurm_people.shared): str(mount)}}
    # The scratch volume on the shared filesystem, named as this server sees it.
    datasets = slurm_people.shared / "datasets"
    (datasets / "scratch").mkdir(parents=True, exist_ok=True)
    (datasets / "scratch").chmod(0o1777)
    cfg["volumes"] = [v for v in cfg["volumes"] if v["name"] != "scratch"] + [
        {"name": "scratch", "source": f"{mount}/datasets/scratch", "read_only": False}]
    # The training nodes' DCGM exporter, with its HPC job mapping (hpc_job on a job's GPUs).
    exporter = Exporter(["GPU-99999999-0000-4000-8000-000000000000"], default=0.0)
    cfg["usage"] = {"source": {"type": "dcgm", "urls": [exporter.url]}, "interval": 1}
    # The hub's folder too: her job reads the scratch volume's source as her.
    (view / "hub").mkdir(mode=0o755)
    # Her workspace and jobs run podbay as her: from where the site installed it for everyone.
    hub = hub_on(cfg, view / "hub", keep_workspaces=False, python=str(site_python()))
    home = slurm_people.home("pbt-alice")
    alice = pwd.getpwnam("pbt-alice")
    try:
        # Not mounted here: refused in words, nothing claimed, no folder made by Docker.
        with hub.api("alice") as api:
            r = api.post("/users/alice/servers/dev", json={"user_options": {"profile": "cpu", "image": "base"}})
        assert r.status_code == 503 and f"looked at {mount}/home/pbt-alice" in r.json()["message"], r.text
        assert not mount.exists()
        mount.symlink_to(slurm_people.shared)

        r = hub.start_server("alice", "dev", {"profile": "cpu", "image": "base", "volumes": ["scratch"]})
        assert r.status_code in (201, 202), r.text
        container = container_of(hub, docker, "alice", "dev")
        assert container["Config"]["User"] == f"{alice.pw_uid}:{alice.pw_gid}"
        # Docker is given this server's paths; the container has the nodes'.
        assert sorted(container["HostConfig"]["Binds"]) == [f"{mount}/datasets/scratch:{home}/data/scratch:rw",
                                                            f"{mount}/home/pbt-alice:{home}:rw"]
        # Her name, her home at the nodes' path, as the image never knew her.
        assert sh(docker, container["Id"], 'id -un; echo "$HOME"; pwd')[1].split() == ["pbt-alice", str(home), str(home)]
        # The volume's mount point in her home is hers, not Docker's root's.
        assert owner(home / "data" / "scratch") == "pbt-alice"
        lab_writes_her_config(hub, home)

        # A MIG workspace on docker and a GPU job on Slurm: both counted as hers and her team's.
        assert hub.start_server("alice", "gpu", {"profile": "mig-1g.10gb", "image": "base"}).status_code in (201, 202)
        with service(hub, "alice") as api:
            r = api.post("/jobs", json={"name": "train", "from_workspace": "dev", "gpus": 1, "workdir": "proj",
                                        "command": ["sh", "-c", "cat cfg; id -un; pwd; echo done > out; "
                                                                "while [ ! -e go ]; do sleep 0.2; done"]})
            assert r.status_code == 201, r.text
            job = wait_job(api, r.json()["id"], {"running"})
            # Slurm is given the nodes' path of the volume, never this server's.
            slurm_id = slurm_cluster.run("squeue", "-h", "-n", f"hybridws-{job['id']}", "-o", "%i").stdout.strip()
            script = slurm_cluster.run("scontrol", "write", "batch_script", slurm_id, "-").stdout
            assert f"--bind={datasets}/scratch:{home}/data/scratch:rw" in script and str(mount) not in script, script
            # Its GPU's utilisation, found by the job's id on the node, is in the training pool's showback.
            exporter.util["GPU-99999999-0000-4000-8000-000000000000"] = 80.0
            exporter.jobs["GPU-99999999-0000-4000-8000-000000000000"] = slurm_id

            def training_row():
                rows = api.get("/usage", params={"by": "pool"}).json()["rows"]
                return next((r for r in rows if r["key"] == "training" and r["utilization"] is not None), None)

            wait_for(training_row, 30, "the Slurm job's GPU to be measured")
            assert training_row()["utilization"] == pytest.approx(80.0), training_row()
            me = api.get("/me").json()
            assert (me["usage"]["job_gpus"], me["usage"]["workspaces"]) == (1, 2), me["usage"]
            assert me["usage"]["gpu_units"] > 0, me["usage"]
            pools = {row["key"] for row in api.get("/usage", params={"by": "pool"}).json()["rows"]}
            assert {"dev", "training"} <= pools, pools
            (home / "proj" / "go").touch()
            done = wait_job(api, job["id"], {"succeeded", "failed"})
            assert done["state"] == "succeeded", done
            assert api.get(f"/jobs/{job['id']}/logs").text.splitlines() == ["lr=0.1", "pbt-alice", f"{home}/proj"]
            ssh = api.get("/ssh").json()
            assert (ssh["login"], ssh["home"]) == ("pbt-alice", str(home)), ssh
        # What the job wrote is hers, and the workspace sees it at the same path.
        assert owner(home / "proj" / "out") == "pbt-alice"
        assert sh(docker, container["Id"], "cat ~/proj/out")[1] == "done\n"
        # Someone without an account is refused at start, in words.
        with hub.api("admin") as api:
            r = api.post("/users/admin/servers/x", json={"user_options": {"profile": "cpu", "image": "base"}})
            assert r.status_code == 403 and "no account on the cluster" in r.json()["message"], r.text
        for ws in ("dev", "gpu"):
            hub.stop_server("alice", ws)
        # `podbay doctor` on the docker backend checks the Slurm pool's set-up too.
        findings = {f.what: f.level for f in asyncio.run(diagnose(parse_config(cfg), load("docker")))}
        assert findings["this server sees the people's homes (2) through cluster_accounts.paths"] == "ok", findings
        assert findings["the service submits as the person (tried as pbt-alice: sudo, its descriptor and "
                        "SLURM_CONF reach sbatch)"] == "ok", findings
    finally:
        hub.stop()
        exporter.close()
        shutil.rmtree(view, ignore_errors=True)
        for leftover in (home / "proj", home / "data", datasets):
            shutil.rmtree(leftover, ignore_errors=True)
