"""The job scheduler on the local backend, without a hub: order, quotas, restarts."""

from __future__ import annotations

import asyncio
import time

import pytest

from podbay.hub.config import ProfileKind
from podbay.hub.jobs import JobManager, JobRequest
from podbay.hub.portal import OptionsRefused, Portal
from podbay.hub.training.local import LocalBackend

from tests.conftest import TEST_CONFIG


@pytest.fixture
def manager(tmp_path):
    portal = Portal.open(TEST_CONFIG, f"sqlite:///{tmp_path / 'ledger.sqlite'}", tmp_path)
    m = JobManager(portal, LocalBackend(tmp_path / "jobs", kill_grace=2))
    yield m
    for job in m.list(limit=None):
        if job.state in ("running", "starting"):
            asyncio.run(m.cancel(job.id))
    portal.ledger.dispose()


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
    manager.portal.ledger.claim(key=f"job:{orphan.id}", kind="job", user="alice", team="vision",
                                profile_id="gpu-1", spec=ProfileKind("full", count=1),
                                pools=["training"], quota=manager.portal.quota_for("vision"))
    manager._write_fields(orphan.id, state="starting", ref={"job_id": orphan.id})

    # A new service process: a new manager over the same database and job directory.
    again = JobManager(Portal.open(TEST_CONFIG, manager.portal.ledger.url, tmp_path),
                       LocalBackend(tmp_path / "jobs"))
    await again.reconcile()
    assert again.get(orphan.id).state == "queued" and again.get(orphan.id).message == "requeued after a restart"
    assert again.get(running.id).state == "running"
    assert (await until(again, running.id, {"succeeded"})).exit_code == 0
    assert (await until(again, orphan.id, {"succeeded"})).exit_code == 0
    assert again.read_logs(orphan.id) == b"once\n"
    assert again.portal.ledger.allocations(kind="job") == []


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
    assert manager.get(job.id).state == "running" and manager._cancelling == {}
    await manager.tick()  # the scheduler looks after it again
    monkeypatch.setattr(manager.backend, "cancel", real_cancel)
    assert (await manager.cancel(job.id)).state == "cancelled"
    assert manager.portal.ledger.get(f"job:{job.id}") is None
