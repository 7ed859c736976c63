"""A pool whose jobs another engine runs (pools.<name>.engine): what podbay.yaml may say, and
how the service's jobs and the capacity views pick the engine of each pool."""

from __future__ import annotations

import asyncio
from fractions import Fraction

import pytest

from podbay.hub.config import ConfigError, parse_config
from podbay.hub.quota.capacity import CapacitySource, PoolCapacities, Usage
from podbay.hub.training import BackendStatus, PoolEngines, TrainingBackend


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


def test_what_cannot_work_is_refused_where_it_is_written():
    assert "give it its partition" in issues("local", {"engine": "slurm"})["pools.training.queue"]
    found = issues("docker", {"engine": "slurm", "queue": "gpu"})["pools.training.engine"]
    assert "keeps homes where Slurm's nodes cannot see them" in found
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
