"""A pool whose jobs another engine runs (pools.<name>.engine): what podbay.yaml may say, and
how the service's jobs and the capacity views pick the engine of each pool."""

from __future__ import annotations

import asyncio
from fractions import Fraction

import pytest

from podbay.hub.config import ConfigError, parse_config
from podbay.hub.quota.capacity import CapacitySource, PoolCapacities, Usage
from podbay.hub.training import BackendStatus, BackendUnavailable, PoolEngines, TrainingBackend


def cfg(backend: str, training: dict, **extra):
    return parse_config({"backend": backend,
                         "images": [{"name": "base", "display_name": "Base", "image": "debian:12"}],
                         "profiles": [{"id": "cpu"}, {"id": "gpu-1", "pools": ["training"]}],
                         "pools": {"dev": {}, "training": training}, **extra})


def issues(backend: str, training: dict, **extra) -> dict[str, str]:
    with pytest.raises(ConfigError) as e:
        cfg(backend, training, **extra)
    return {".".join(map(str, i.loc)): i.message for i in e.value.issues}


def test_a_slurm_training_pool_beside_local_workspaces():
    c = cfg("local", {"engine": "slurm", "queue": "gpu"})
    assert c.pool_engines("local") == {"training": "slurm"}
    # The backend's own engine named again is no other engine.
    assert cfg("slurm", {"engine": "slurm", "queue": "gpu"}).pool_engines("slurm") == {}


def test_docker_workspaces_beside_a_slurm_pool_whose_jobs_run_as_people():
    c = cfg("docker", {"engine": "slurm", "queue": "gpu"}, slurm={"run_as": "person"},
            cluster_accounts={"paths": {"/gpfs/": "/mnt/gpfs"}})
    assert c.pool_engines("docker") == {"training": "slurm"}
    assert c.cluster_accounts.paths == {"/gpfs": "/mnt/gpfs"}


@pytest.mark.parametrize("paths, words", [
    ({"gpfs": "/mnt/gpfs"}, "not a plain absolute folder"), ({"/gpfs": "/mnt/../etc"}, "not a plain absolute folder"),
    ({"/": "/mnt"}, "not a plain absolute folder"), ({"/gpfs": "/mnt", "/lustre": "/mnt"}, "overlap"),
    ({"/gpfs": "/mnt", "/lustre": "/mnt/lustre"}, "overlap"),
    ({"/x": "/a", "/y": "/a-b", "/z": "/a/c"}, "overlap"), ({"/gpfs": "//mnt"}, "not a plain absolute folder")])
def test_a_path_mapping_is_plain_absolute_folders_one_for_one(paths, words):
    found = issues("local", {"engine": "slurm", "queue": "gpu"}, cluster_accounts={"paths": paths})
    assert words in found["cluster_accounts.paths"]


def test_paths_are_mapped_by_whole_components_longest_first():
    from podbay.hub.identity import here, on_cluster

    c = cfg("local", {"engine": "slurm", "queue": "gpu"},
            cluster_accounts={"paths": {"/gpfs": "/mnt/gpfs", "/gpfs/home": "/homes"}})
    assert here(c, "/gpfs/home/alice") == "/homes/alice"
    assert here(c, "/gpfs/data/x") == "/mnt/gpfs/data/x"
    assert here(c, "/gpfs2/x") == "/gpfs2/x" and here(c, "/gpfs") == "/mnt/gpfs"
    assert on_cluster(c, "/mnt/gpfs/datasets/imagenet") == "/gpfs/datasets/imagenet"
    assert on_cluster(c, "/homes/alice/proj") == "/gpfs/home/alice/proj"
    assert on_cluster(c, "/srv/volumes/x") == "/srv/volumes/x"


def test_what_cannot_work_is_refused_where_it_is_written():
    assert "give it its partition" in issues("local", {"engine": "slurm"})["pools.training.queue"]
    # Docker's homes are volumes no node sees, unless workspaces are the people's accounts.
    found = issues("docker", {"engine": "slurm", "queue": "gpu"}, slurm={"run_as": "service"})["pools.training.engine"]
    assert "keeps homes where Slurm's nodes cannot see them" in found and "slurm.run_as: person" in found
    found = issues("kubernetes", {"engine": "slurm", "queue": "gpu"})["pools.training.engine"]
    assert "keeps homes where Slurm's nodes cannot see them" in found and "local or docker workspaces" in found
    assert "no home per workspace" in issues("docker", {"engine": "slurm", "queue": "gpu"},
                                             docker={"home_per_workspace": True})["docker.home_per_workspace"]
    assert "unknown engine 'pbs'" in issues("local", {"engine": "pbs", "queue": "q"})["pools.training.engine"]
    assert "the docker engine runs no pool beside the local backend's workspaces" in \
        issues("local", {"engine": "docker"})["pools.training.engine"]
    # A queue on the local backend's own pool is still refused; the Slurm pool's is not.
    assert issues("local", {"engine": "slurm", "queue": "gpu"}, **{"pools": {"dev": {"queue": "x"},
                                                                             "training": {"engine": "slurm", "queue": "gpu"}}}) \
        == {"pools.dev.queue": "the local backend has no queue of its own (podbay queues its jobs): remove queue"}


class Engine(TrainingBackend):
    def __init__(self, name, queues=False, apart=False):
        self.name, self.queues_jobs, self.secrets_apart = name, queues, apart
        self.synced = []

    async def submit(self, job):
        return {"engine": self.name}

    async def status(self, ref):
        return BackendStatus("running", message=self.name)

    async def cancel(self, ref):
        pass

    async def read_logs(self, ref, cursor=None):
        return self.name.encode(), None

    async def team_limit(self, team):
        return {"source": self.name}

    async def sync_secrets(self, user, values):
        self.synced.append(user)


def test_the_router_gives_each_pool_its_engine():
    local, slurm = Engine("local"), Engine("slurm", queues=True, apart=True)
    router = PoolEngines(local, {"training": slurm, "big": slurm}, "training")
    assert router.for_pool("training") is slurm and router.for_pool("dev") is local
    assert router.engines() == [local, slurm] and router.secrets_apart
    assert asyncio.run(router.team_limit("vision")) == {"source": "slurm"}  # the default job pool's
    asyncio.run(router.sync_secrets("alice", {}))
    assert slurm.synced == ["alice"] and local.synced == []


class Source(CapacitySource):
    def __init__(self, total, free, most):
        self.total, self.free, self.most = total, free, most

    def unit_weight(self, spec, pools):
        return Fraction(1)

    def counts(self, spec, pools, snap):
        return self.total * len(pools), self.free * len(pools)

    def devices(self, pool, snap):
        return {"gpu": Usage(self.total, 0, self.free)}

    def most_gpus_per_node(self, pool):
        return self.most


def test_capacity_of_each_pool_comes_from_its_engine():
    local, slurm = Source(2, 1, 2), Source(8, 3, 4)
    both = PoolCapacities(local, {"training": slurm})
    assert both.most_gpus_per_node("training") == 4 and both.most_gpus_per_node("dev") == 2
    assert both.counts(None, ["dev", "training"], None) == (10, 4)
    assert PoolCapacities(Source(-1, -1, 0), {"training": slurm}).counts(None, ["dev", "training"], None) == (-1, -1)
    assert both.devices("training", None)["gpu"].total == 8


class Flaky(TrainingBackend):
    """An engine that queues (Slurm's kind), which can be taken out of reach."""

    name, queues_jobs, as_person = "slurm", True, False
    up = True

    async def submit(self, job):
        if not self.up:
            raise BackendUnavailable("controller down")
        return {"slurm": 1}

    async def status(self, ref):
        if not self.up:
            raise BackendUnavailable("controller down")
        return BackendStatus("pending", message="Priority")

    async def cancel(self, ref):
        pass

    async def read_logs(self, ref, cursor=None):
        return b"", None


def test_an_engine_out_of_reach_holds_up_only_its_own_pools_jobs(tmp_path):
    """Slurm down (at the service's start, then while it runs): the local pool's jobs still
    start and end; Slurm's are reconciled once it answers."""
    from podbay.hub.backends.local.jobs import LocalBackend
    from podbay.hub.jobs import JobManager, JobRequest
    from podbay.hub.portal import Portal
    from tests.harness import TEST_CONFIG

    async def body():
        portal = Portal.open(TEST_CONFIG, f"sqlite:///{tmp_path / 'l.sqlite'}", tmp_path)
        slurm = Flaky()
        jobs = JobManager(portal, PoolEngines(LocalBackend(tmp_path / "jobs", kill_grace=1), {"training": slurm},
                                              "training"))
        held = jobs.submit("alice", [], JobRequest(name="s", gpus=1, pool="training", command=["true"]))
        await jobs.tick()
        assert "queued in slurm: Priority" in jobs.get(held.id).message
        slurm.up = False
        await jobs.reconcile()  # a restart while Slurm is down: no error, its job as it was
        assert jobs.get(held.id).state == "queued"
        local = jobs.submit("alice", [], JobRequest(name="l", gpus=0, pool="dev", command=["true"]))
        for _ in range(200):
            await jobs.tick()
            if jobs.get(local.id).state == "succeeded":
                break
            await asyncio.sleep(0.05)
        assert jobs.get(local.id).state == "succeeded", jobs.get(local.id)
        slurm.up = True
        await jobs.tick()
        assert "queued in slurm: Priority" in jobs.get(held.id).message

    asyncio.run(body())


def test_beside_a_pool_that_runs_jobs_as_the_person_no_job_runs_as_the_portal(tmp_path):
    import yaml

    from podbay.hub.backends.local.jobs import LocalBackend
    from podbay.hub.jobs import JobManager, JobRequest
    from podbay.hub.portal import OptionsRefused, Portal

    config = tmp_path / "podbay.yaml"
    config.write_text(yaml.safe_dump({
        "backend": "local", "images": [{"name": "base", "display_name": "Base", "image": "debian:12"}],
        "profiles": [{"id": "cpu"}], "pools": {"dev": {}, "training": {"engine": "slurm", "queue": "gpu"}},
        "default_quota": {"gpu_units": 1, "job_gpus": 1}}))
    portal = Portal.open(config, f"sqlite:///{tmp_path / 'l.sqlite'}", tmp_path)
    slurm = Flaky()
    slurm.as_person = True
    jobs = JobManager(portal, PoolEngines(LocalBackend(tmp_path / "jobs", kill_grace=1), {"training": slurm},
                                          "training"))
    with pytest.raises(OptionsRefused, match="pool dev's jobs would run as the portal's own account, not as you"):
        jobs.submit("alice", [], JobRequest(name="l", pool="dev", command=["id"]))


def test_workspaces_as_slurm_jobs_need_a_partition_and_an_address_and_no_time_sliced_share():
    def slurm_cfg(profiles, pools, **slurm):
        return {"backend": "slurm", "images": [{"name": "base", "display_name": "Base", "image": "debian:12"}],
                "profiles": profiles, "pools": pools, "slurm": {"workspaces": "slurm", **slurm}}

    def found(data) -> dict[str, str]:
        with pytest.raises(ConfigError) as e:
            parse_config(data)
        return {".".join(map(str, i.loc)): i.message for i in e.value.issues}

    ok = parse_config(slurm_cfg([{"id": "cpu"}, {"id": "mig-1g.10gb"}, {"id": "gpu-2"}],
                                {"dev": {"queue": "interactive"}, "training": {"queue": "batch"}},
                                hub_address="10.0.0.5"))
    from podbay.hub.backends import load

    plugin = load("slurm")
    assert plugin.spawner_for(ok) == "podbay-slurm" and not plugin.places(ok)
    assert "podbay.hub.backends.slurm.spawner.PodbaySlurmSpawner" in plugin.spawner_names(ok)
    assert "as Slurm jobs" in plugin.describe(ok)
    # Without the setting, workspaces stay processes on this node, placed by podbay.
    local = parse_config({**slurm_cfg([{"id": "cpu"}], {"dev": {}, "training": {"queue": "batch"}}),
                          "slurm": {}})
    assert plugin.spawner_for(local) == "podbay-local" and plugin.places(local)

    assert "needs hub_address" in found(slurm_cfg([{"id": "cpu"}], {"dev": {"queue": "i"}}))["slurm"]
    for address in ("hub.example", "fd00::5"):
        assert "an IPv4 address" in found(slurm_cfg([{"id": "cpu"}], {"dev": {"queue": "i"}},
                                                    hub_address=address))["slurm.hub_address"]
    # As the hub's own account, every workspace would be the service's (root's, often) on shared nodes.
    assert "needs run_as: person" in found(slurm_cfg([{"id": "cpu"}], {"dev": {"queue": "i"}}, hub_address="10.0.0.5",
                                                     run_as="service"))["slurm"]
    refused = found(slurm_cfg([{"id": "cpu"}, {"id": "shared-1/4"}, {"id": "gpu-1", "pools": ["training"]}],
                              {"dev": {"queue": "interactive"}, "training": {}}, hub_address="10.0.0.5"))
    assert "not time-sliced shares" in refused["profiles.1.id"]
    assert "needs a pool with a Slurm partition" in refused["profiles.2.pools"]


def test_a_workspaces_mount_points_are_under_its_home_as_this_server_mounts_it(tmp_path):
    """cluster_accounts.paths: the launcher is told the home here (not the password entry's,
    which is the nodes'), and makes the mount points under it, refusing anything outside."""
    import os
    import pwd

    from podbay.hub.launch import _mount_point, launcher

    assert "--home=/mnt/gpfs/home/alice" in launcher([], user="alice", env_file="/e", home="/mnt/gpfs/home/alice")
    me = pwd.getpwuid(os.getuid())
    here = tmp_path / "mnt" / "home" / me.pw_name
    here.mkdir(parents=True)
    fd, name = _mount_point(str(here / "data" / "scratch"), me, str(here))
    os.close(fd)
    assert name == "scratch" and (here / "data").is_dir()
    with pytest.raises(OSError, match="is not under"):
        _mount_point(str(tmp_path / "elsewhere" / "x"), me, str(here))
