"""The job scheduler on the local backend, without a hub: order, quotas, restarts."""

from __future__ import annotations

import asyncio
import time
from fractions import Fraction

from importlib.metadata import EntryPoint

import pytest
import yaml

from podbay.hub import backends
from podbay.hub.backends.base import Backend
from podbay.hub.config import ProfileKind
from podbay.hub.jobs import JobManager, JobRequest
from podbay.hub.portal import OptionsRefused, Portal
from podbay.hub.quota import Demand, QuotaBook
from podbay.hub.training import BackendStatus, BadCursor, JobSpec, TrainingBackend
from podbay.hub.backends.local.jobs import LocalBackend

from tests.harness import TEST_CONFIG


@pytest.fixture
def manager(tmp_path):
    portal = Portal.open(TEST_CONFIG, f"sqlite:///{tmp_path / 'ledger.sqlite'}", tmp_path)
    m = JobManager(portal, LocalBackend(tmp_path / "jobs", kill_grace=2))
    yield m
    for job in m.list(limit=None):
        if job.state in ("running", "starting"):
            asyncio.run(m.cancel(job.id))
    portal.book.dispose()


def sub(m: JobManager, user: str, team_groups=(), **kw):
    return m.submit(user, list(team_groups), JobRequest(**kw))


async def until(m: JobManager, job_id: int, states: set[str], timeout: float = 20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        await m.tick()
        job = m.get(job_id)
        if job.state in states:
            return job
        await asyncio.sleep(0.1)
    raise AssertionError(f"job {job_id} stayed {m.get(job_id).state}: {m.get(job_id).message}")


async def test_team_quota_waits_without_blocking_other_teams(manager):
    a = sub(manager, "bob", name="a", gpus=1, command=["sleep", "30"])
    b = sub(manager, "bob", name="b", gpus=2, command=["true"])
    c = sub(manager, "alice", name="c", gpus=1, command=["true"])
    await until(manager, a.id, {"running"})
    await manager.tick()
    waiting = manager.get(b.id)
    assert waiting.state == "queued" and "team nlp already runs jobs on 1 of 2 job GPUs" in waiting.message
    # alice's job is not held up by bob's quota: the pool has a GPU left.
    assert (await until(manager, c.id, {"succeeded"})).exit_code == 0
    await manager.cancel(a.id)
    assert len((await until(manager, b.id, {"succeeded"})).devices) == 2


async def test_submission_order_within_a_pool(manager):
    big = sub(manager, "alice", name="big", gpus=2, command=["sleep", "30"])
    await until(manager, big.id, {"running"})
    wide = sub(manager, "alice", name="wide", gpus=2, command=["true"])
    narrow = sub(manager, "alice", name="narrow", gpus=1, command=["true"])
    await manager.tick()
    assert "waiting for 2 free GPUs" in manager.get(wide.id).message
    assert manager.get(narrow.id).message == "waiting for earlier jobs in pool training"
    await manager.cancel(big.id)
    done_wide = await until(manager, wide.id, {"succeeded"})
    done_narrow = await until(manager, narrow.id, {"succeeded"})
    assert done_wide.started <= done_narrow.started


async def test_restart_adopts_running_jobs_and_requeues_unstarted_ones(manager, tmp_path):
    running = sub(manager, "alice", name="long", gpus=1, command=["sh", "-c", "sleep 1; echo ok"])
    await until(manager, running.id, {"running"})
    # A second job that was claimed but whose start was never recorded (a crash in between).
    orphan = sub(manager, "alice", name="orphan", gpus=1, command=["echo", "once"])
    manager.portal.claim(key=f"job:{orphan.id}", kind="job", user="alice", team="vision",
                         demand=Demand("gpu-1", ProfileKind("full", count=1), ("training",), gpus=1),
                         quota=manager.portal.quota_for("vision"))
    manager.store.write(orphan.id, state="starting", ref={"job_id": orphan.id})

    # A new service process: a new manager over the same database and job directory.
    again = JobManager(Portal.open(TEST_CONFIG, manager.portal.book.url, tmp_path),
                       LocalBackend(tmp_path / "jobs"))
    await again.reconcile()
    assert again.get(orphan.id).state == "queued" and again.get(orphan.id).message == "requeued after a restart"
    assert again.get(running.id).state == "running"
    assert (await until(again, running.id, {"succeeded"})).exit_code == 0
    assert (await until(again, orphan.id, {"succeeded"})).exit_code == 0
    assert (await again.read_logs(orphan.id))[0] == b"once\n"
    assert again.portal.book.allocations(kind="job") == []


def test_a_job_larger_than_any_node_is_refused(manager):
    with pytest.raises(OptionsRefused, match="at most 2 whole GPUs on one node"):
        sub(manager, "alice", name="huge", gpus=3, command=["true"])
    assert manager.list() == []


async def test_the_oldest_job_starts_first_even_behind_a_long_queue(manager):
    # The API lists a page of jobs; the scheduler must see every queued one.
    big = sub(manager, "alice", name="big", gpus=2, command=["sleep", "30"])
    await until(manager, big.id, {"running"})
    first = sub(manager, "alice", name="first", gpus=2, command=["sleep", "30"])
    for i in range(505):
        sub(manager, "alice", name=f"later-{i}", gpus=2, command=["true"])
    await manager.cancel(big.id)
    await manager.tick()
    assert manager.get(first.id).state == "running"
    assert len(manager.list(state="queued", limit=None)) == 505


async def test_a_cancel_that_fails_is_reported_to_every_waiter_and_can_be_tried_again(manager, monkeypatch):
    job = sub(manager, "alice", name="stuck", gpus=1, command=["sleep", "30"])
    await until(manager, job.id, {"running"})
    real_cancel, calls = manager.backend.cancel, []

    async def engine_away(ref):
        calls.append(ref)
        await asyncio.sleep(0.3)
        raise RuntimeError("the engine went away")

    monkeypatch.setattr(manager.backend, "cancel", engine_away)
    first = asyncio.create_task(manager.cancel(job.id))
    await asyncio.sleep(0.1)
    second = asyncio.create_task(manager.cancel(job.id))
    for task in (first, second):
        with pytest.raises(RuntimeError, match="the engine went away"):
            await asyncio.wait_for(task, 5)
    assert len(calls) == 1, "the second cancel waited for the first instead of stopping it again"
    assert manager.get(job.id).state == "running" and manager.scheduler.cancelling == {}
    await manager.tick()  # the scheduler looks after it again
    monkeypatch.setattr(manager.backend, "cancel", real_cancel)
    assert (await manager.cancel(job.id)).state == "cancelled"
    assert manager.portal.book.get(f"job:{job.id}") is None


# --- an engine with its own queue (what Kueue and Slurm are to podbay) ---------------------


class QueueingEngine(TrainingBackend):
    """An engine that queues and places by itself, in memory: the test says when it runs,
    ends or takes back a job. It stands in for Kueue and Slurm, whose own backends pass the
    contract suite in their issues; here it shows what podbay does around such an engine."""

    name = "engine"
    queues_jobs = True
    multi_node = True

    def __init__(self):
        self.specs: dict[int, JobSpec] = {}
        self.state: dict[int, BackendStatus] = {}
        self.cancelled: list[int] = []
        self.output: dict[int, list[bytes]] = {}
        self.submits: list[int] = []

    async def submit(self, job):
        self.submits.append(job.id)
        self.specs[job.id] = job
        self.state[job.id] = BackendStatus("pending", message="waiting for quota in ClusterQueue training")
        return {"engine_id": f"e-{job.id}"}

    async def status(self, ref):
        # Found by podbay's job id, as a real engine finds its jobs by their names.
        return self.state.get(ref["job_id"], BackendStatus("lost", message="the engine has no such job"))

    async def cancel(self, ref):
        self.cancelled.append(ref["job_id"])
        self.state[ref["job_id"]] = BackendStatus("exited", exit_code=143)

    async def read_logs(self, ref, cursor=None):
        # Pages, not bytes: podbay hands the cursor back as it got it.
        pages = self.output.get(ref["job_id"], [])
        page = int(cursor.removeprefix("page-")) if cursor else 0
        return b"".join(pages[page:]), f"page-{len(pages)}"


class EnginePlugin(Backend):
    """The deployment's backend plugin for that engine: it places devices and queues jobs."""

    name = "engine"
    spawner = "podbay-local"
    places_devices = False

    def check(self, cfg):
        return []  # pools name the engine's queues

    def training(self, portal):
        return QueueingEngine()


@pytest.fixture
def engine_manager(tmp_path, monkeypatch):
    installed = {**backends.available(), "engine": EntryPoint("engine", f"{__name__}:EnginePlugin", backends.GROUP)}
    monkeypatch.setattr(backends, "available", lambda: installed)
    data = yaml.safe_load(TEST_CONFIG.read_text())
    data.update(backend="engine", pools={**data["pools"], "training": {"queue": "team-queue"}})
    (tmp_path / "podbay.yaml").write_text(yaml.safe_dump(data))
    portal = Portal.open(tmp_path / "podbay.yaml", f"sqlite:///{tmp_path / 'ledger.sqlite'}", tmp_path)
    assert portal.placement is None and not portal.places_devices
    yield JobManager(portal, backends.load("engine").training(portal))
    portal.book.dispose()


async def test_an_engine_that_queues_gets_every_job_at_once(engine_manager):
    m, engine = engine_manager, engine_manager.backend
    # Two jobs of 2 GPUs × 2 nodes: together twice team vision's 4 job GPUs. podbay's own
    # queue would hold the second; the engine gets both and its quota decides.
    first = sub(m, "alice", name="first", gpus_per_node=2, nodes=2, command=["python", "train.py"])
    second = sub(m, "alice", name="second", gpus_per_node=2, nodes=2, command=["python", "train.py"])
    await m.tick()
    assert set(engine.specs) == {first.id, second.id}
    spec = engine.specs[first.id]
    assert (spec.gpus_per_node, spec.nodes, spec.pool, spec.queue) == (2, 2, "training", "team-queue")
    assert spec.devices == [] and "CUDA_VISIBLE_DEVICES" not in spec.env, "the engine places the GPUs"
    assert spec.env["PODBAY_GPU_UNITS"] == "4" and spec.env["PODBAY_TEAM"] == "vision"
    shown = m.get(first.id)
    assert shown.state == "queued" and (shown.gpus, shown.gpus_per_node, shown.nodes) == (4, 2, 2)
    assert shown.message == "queued in engine: waiting for quota in ClusterQueue training"
    assert [j.id for j in m.list(state="queued")] == [second.id, first.id]
    assert m.portal.book.snapshot().job_gpus_of("vision", "alice") == 0, "a pending job holds no GPU"

    engine.state[first.id] = BackendStatus("running")
    engine.state[second.id] = BackendStatus("running")
    await m.tick()
    assert m.get(first.id).state == m.get(second.id).state == "running"
    assert m.portal.book.snapshot().job_gpus_of("vision", "alice") == 8, "what runs is what the book shows"

    engine.state[first.id] = BackendStatus("exited", exit_code=0)
    await m.tick()
    assert m.get(first.id).state == "succeeded"
    assert m.portal.book.snapshot().job_gpus_of("vision", "alice") == 4
    cancelled = await m.cancel(second.id)
    assert cancelled.state == "cancelled" and engine.cancelled == [second.id]
    assert m.portal.book.allocations(kind="job") == []


async def test_a_pending_job_is_cancelled_in_the_engine_and_survives_a_restart(engine_manager, tmp_path):
    m, engine = engine_manager, engine_manager.backend
    job = sub(m, "alice", name="wait", gpus_per_node=1, command=["true"])
    other = sub(m, "alice", name="other", gpus_per_node=1, command=["true"])
    await m.tick()
    engine.state[other.id] = BackendStatus("pending", message="Resources")
    again = JobManager(Portal(m.portal.cfg, QuotaBook(m.portal.book.url), tmp_path, placement=None,
                              capacity=m.portal.capacity), engine)
    await again.reconcile()
    assert again.get(other.id).message == "queued in engine: Resources", "the engine's reason, after a restart"
    assert (await again.cancel(job.id)).state == "cancelled" and engine.cancelled == [job.id]
    # Taken back by the engine while running (preempted): queued again, holding nothing.
    engine.state[other.id] = BackendStatus("running")
    await again.tick()
    assert again.portal.book.snapshot().job_gpus_of("vision", "alice") == 1
    engine.state[other.id] = BackendStatus("pending", message="Preempted")
    await again.tick()
    assert again.get(other.id).state == "queued" and again.get(other.id).message == "queued in engine: Preempted"
    assert again.portal.book.allocations(kind="job") == []
    again.portal.book.dispose()


async def test_log_cursors_are_the_engines_own(engine_manager):
    m, engine = engine_manager, engine_manager.backend
    job = sub(m, "alice", name="logs", gpus_per_node=0, command=["true"])
    await m.tick()
    engine.output[job.id] = [b"epoch 1\n"]
    data, cursor = await m.read_logs(job.id)
    assert (data, cursor) == (b"epoch 1\n", "page-1")
    engine.output[job.id].append(b"epoch 2\n")
    assert await m.read_logs(job.id, cursor) == (b"epoch 2\n", "page-2")


async def test_a_local_file_cursor_reads_on_where_the_last_read_ended(manager):
    job = sub(manager, "alice", name="cursor", gpus=0, command=["sh", "-c", "echo one; echo two"])
    await until(manager, job.id, {"succeeded"})
    data, cursor = await manager.read_logs(job.id)
    assert data == b"one\ntwo\n" and cursor == "8"
    assert await manager.read_logs(job.id, "4") == (b"two\n", "8")
    with pytest.raises(BadCursor, match="not a log cursor"):
        await manager.read_logs(job.id, "page-2")


def test_one_machine_runs_a_job_on_one_node_and_pools_must_exist(manager):
    with pytest.raises(OptionsRefused, match="the local backend runs a job on one machine: ask for nodes: 1"):
        sub(manager, "alice", name="wide", gpus_per_node=1, nodes=2, command=["true"])
    with pytest.raises(OptionsRefused, match="unknown pool 'gpu'; choose one of: dev, training"):
        sub(manager, "alice", name="where", pool="gpu", command=["true"])
    with pytest.raises(OptionsRefused, match=r"at most 4 job GPUs at once; this job asks for 2 × 3 nodes = 6"):
        JobManager(manager.portal, QueueingEngine()).submit(
            "alice", [], JobRequest(name="big", gpus_per_node=2, nodes=3, command=["true"]))


async def test_a_hand_over_cut_short_by_a_restart_is_not_handed_over_twice(engine_manager, tmp_path):
    m, engine = engine_manager, engine_manager.backend
    job = sub(m, "alice", name="once", gpus_per_node=1, command=["true"])
    # The engine got it, but the service stopped before recording the engine's reference.
    await engine.submit(m.scheduler._spec(m.get(job.id), None))
    m.store.write(job.id, state="starting", ref={"job_id": job.id})
    again = JobManager(Portal.open(tmp_path / "podbay.yaml", m.portal.book.url, tmp_path), engine)
    await again.reconcile()
    await again.tick()
    assert engine.submits == [job.id], "handed over once"
    shown = again.get(job.id)
    assert shown.state == "queued" and shown.message == "queued in engine: waiting for quota in ClusterQueue training"
    again.portal.book.dispose()


class SlowStarter(QueueingEngine):
    """An engine without a queue that says pending while it starts a job (an image pull)."""

    queues_jobs = False
    multi_node = False


async def test_an_engine_without_a_queue_starting_slowly_keeps_the_devices_podbay_placed(manager):
    m = JobManager(manager.portal, SlowStarter())
    first = sub(m, "bob", name="first", gpus_per_node=2, command=["true"])
    second = sub(m, "bob", name="second", gpus_per_node=1, command=["true"])
    await m.tick()
    await m.tick()
    assert m.get(first.id).state == "running" and len(m.get(first.id).devices) == 2
    assert m.portal.book.snapshot().job_gpus_of("nlp", "bob") == 2, "still holding its GPUs while the engine starts it"
    assert m.get(second.id).state == "queued", "team nlp's 2 job GPUs are in use"


def test_a_workspace_whose_engine_places_devices_gets_no_gpu_variable(engine_manager, tmp_path):
    """The spawner takes the deployment's backend (hubconfig sets it): where the engine
    places, the quota book counts the units and podbay names no device."""
    from podbay.hub.backends.local.spawner import PodbayLocalSpawner

    spawner = PodbayLocalSpawner(config_file=str(tmp_path / "podbay.yaml"), data_dir=str(tmp_path),
                                 db_url=engine_manager.portal.book.url, podbay_backend="engine")
    portal = spawner.portal
    assert not portal.places_devices
    request = portal.validate("alice", [], {"profile": "mig-3g.40gb"})
    spawner.podbay_request = request
    spawner.podbay_allocation = portal.claim(key="workspace:alice/x", kind="workspace", user="alice",
                                             team=request.team, demand=request.demand, quota=request.quota)
    env = spawner.podbay_env()
    assert not {"CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES"} & env.keys()
    assert (env["PODBAY_PROFILE"], env["PODBAY_GPU_UNITS"], env["PODBAY_TEAM"]) == ("mig-3g.40gb", "0.43", "vision")
    assert portal.book.taken() == set() and portal.book.snapshot().units_of("vision", "alice") == Fraction(3, 7)


def test_jobs_stored_before_the_rename_keep_their_gpus_per_node(db_url, tmp_path):
    """Migration 0009: the column a job's GPUs per node are stored in is renamed, not recreated
    empty: a job queued before the upgrade asks for the same GPUs after it."""
    from sqlalchemy import create_engine, text

    from podbay.hub.quota.database import move_schema

    engine = create_engine(db_url)
    move_schema(engine, "0008")
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO podbay_jobs (id, name, \"user\", team, image, command, workdir, volumes, env, "
                          "gpus, nodes, pool, state, message, devices, created, ref) VALUES (1, 'j', 'alice', 'vision', "
                          "'base', '[\"true\"]', '/w', '[]', '{}', 2, 3, 'training', 'queued', '', '[]', 5.0, '{}')"))
    engine.dispose()
    portal = Portal.open(TEST_CONFIG, db_url, tmp_path)  # migrates to the head
    try:
        job = JobManager(portal, LocalBackend(tmp_path / "jobs")).get(1)
    finally:
        portal.book.dispose()
    assert (job.gpus_per_node, job.nodes, job.gpus) == (2, 3, 6)
