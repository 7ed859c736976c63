"""Recorded demand: every request and what it got, counted for showback, read back as a
trace for advice, pruned with the usage history."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import select, update

from podbay.hub.config import Quota
from podbay.hub.quota import Demand, NoCapacity, QuotaBook, QuotaExceeded
from podbay.hub.quota.database import DemandRow, HoldingRow
from podbay.hub.usage.demand import DemandLog
from podbay.hub.usage.store import UsageStore
from podbay.tui.commands.workspaces import refusal_lines

from tests.unit.test_quota_book import BIG, claim, demand

SMALL = Quota(gpu_units=1, workspaces_per_user=5, job_gpus=2)


def outcomes(book: QuotaBook) -> list[tuple[str, str, str]]:
    with book.read_session() as s:
        return [(d.key, d.profile, d.outcome) for d in s.scalars(select(DemandRow).order_by(DemandRow.id))]


def test_each_request_is_recorded_with_what_it_got(db_url):
    book = QuotaBook(db_url)
    claim(book, "workspace:alice/a", "mig-3g.40gb")  # the test inventory has one
    with pytest.raises(NoCapacity):
        claim(book, "workspace:alice/b", "mig-3g.40gb")
    with pytest.raises(QuotaExceeded):
        claim(book, "workspace:bob/a", "gpu-2", user="bob", team="nlp", quota=SMALL)
    # The same name asked for again after a refusal is a second request.
    with pytest.raises(NoCapacity):
        claim(book, "workspace:alice/b", "mig-3g.40gb")
    assert outcomes(book) == [("workspace:alice/a", "mig-3g.40gb", "granted"),
                              ("workspace:alice/b", "mig-3g.40gb", "capacity"),
                              ("workspace:bob/a", "gpu-2", "quota"),
                              ("workspace:alice/b", "mig-3g.40gb", "capacity")]
    log = DemandLog(book)
    now = time.time()
    counts = log.counts(now - 60, now + 60)
    assert counts[0] == {"kind": "workspace", "profile": "mig-3g.40gb", "pool": "dev", "outcome": "capacity",
                         "requests": 2}
    assert [c["outcome"] for c in log.counts(now - 60, now + 60, user="bob")] == ["quota"]
    assert log.counts(now - 60, now + 60, team="nlp")[0]["profile"] == "gpu-2"
    assert log.counts(now + 60, now + 120) == []
    book.dispose()


def test_a_job_waiting_for_room_is_one_request(db_url):
    book = QuotaBook(db_url)
    claim(book, "job:1", "gpu-2", kind="job")
    for _ in range(3):  # the queue asks again each time it is looked at
        with pytest.raises(NoCapacity):
            claim(book, "job:2", "gpu-2", kind="job")
    book.release("job:1")
    claim(book, "job:2", "gpu-2", kind="job")
    assert outcomes(book) == [("job:1", "gpu-2", "granted"), ("job:2", "gpu-2", "capacity")]
    lines = refusal_lines(DemandLog(book).counts(0, time.time() + 1))
    assert lines == ["waited for capacity: 1 job request for gpu-2 (pool dev)"]
    book.dispose()


def test_a_claim_the_engine_had_no_room_for_after_all_is_a_refusal(db_url):
    book = QuotaBook(db_url)
    # Where the engine places (no placement): granted by the book, then given back.
    book.claim(key="workspace:alice/k", kind="workspace", user="alice", team="vision", demand=demand("gpu-1"),
               quota=BIG)
    book.release("workspace:alice/k", refused="capacity")
    assert outcomes(book) == [("workspace:alice/k", "gpu-1", "capacity")]
    assert refusal_lines(DemandLog(book).counts(0, time.time() + 1)) == [
        "refused for capacity: 1 workspace request for gpu-1 (pool dev)"]
    book.dispose()


def test_demand_reads_back_as_a_trace(db_url):
    book = QuotaBook(db_url)
    claim(book, "workspace:alice/a", "mig-3g.40gb")
    for _ in range(2):  # clicked twice within the retry window: one request
        with pytest.raises(NoCapacity):
            claim(book, "workspace:bob/a", "mig-3g.40gb", user="bob", team="nlp")
    # Times as if it all happened over two hours: alice's held 2 h and ended.
    t0 = 1_800_000_000.0
    with book.write_session() as s, s.begin():
        ids = [d.id for d in s.scalars(select(DemandRow).order_by(DemandRow.id))]
        for i, at in zip(ids, (t0, t0 + 600, t0 + 700)):
            s.execute(update(DemandRow).where(DemandRow.id == i).values(at=at))
        s.execute(update(HoldingRow).values(started=t0, ended=t0 + 7200))
    trace = DemandLog(book).requests(t0 - 1, t0 + 86400, now=t0 + 86400)
    assert [(r.arrival - t0, r.duration, r.user, r.team, r.profile) for r in trace] == [
        (0, 7200, "alice", "vision", "mig-3g.40gb"),
        # bob's refusal holds what granted requests of its profile held (median).
        (700, 7200, "bob", "nlp", "mig-3g.40gb")]
    assert DemandLog(book).requests(t0 - 1, t0 + 86400, now=t0 + 86400, pools={"training"}) == []
    book.dispose()


def test_demand_is_pruned_with_the_usage_history(db_url):
    book = QuotaBook(db_url)
    claim(book, "workspace:alice/a", "cpu")
    book.release("workspace:alice/a")
    UsageStore(book).prune(time.time() + 2 * 86400, 1)
    assert outcomes(book) == []
    book.dispose()


def test_jobs_without_gpus_and_across_nodes_read_back_as_the_traces_profiles(db_url):
    from podbay.hub.usage.demand import as_profiles

    assert as_profiles("gpu-0") == as_profiles("gpu-0×2") == ["cpu"]
    assert as_profiles("gpu-4×2") == ["gpu-4", "gpu-4"]
    assert as_profiles("mig-1g.10gb") == ["mig-1g.10gb"]
    book = QuotaBook(db_url)
    # A two-node job with four GPUs on each, as the job scheduler names its demand.
    book.claim(key="job:7", kind="job", user="alice", team="vision", quota=BIG,
               demand=Demand("gpu-4×2", demand("gpu-4").spec, ("dev",), gpus=8))
    trace = DemandLog(book).requests(0, time.time() + 1, now=time.time() + 1)
    assert [r.profile for r in trace] == ["gpu-4", "gpu-4"]
    book.dispose()


def test_a_waited_job_runs_as_long_as_it_did_and_what_ran_before_the_period_fills_its_start(db_url):
    book = QuotaBook(db_url)
    claim(book, "job:1", "gpu-2", kind="job")
    with pytest.raises(NoCapacity):
        claim(book, "job:2", "gpu-2", kind="job")
    book.release("job:1")
    claim(book, "job:2", "gpu-2", kind="job")
    t0 = 1_800_000_000.0
    with book.write_session() as s, s.begin():
        # job 1 asked and ran from t0 - 1 h to t0 + 1 h; job 2 asked at t0, ran t0 + 1 h to + 4 h.
        s.execute(update(DemandRow).where(DemandRow.key == "job:1").values(at=t0 - 3600))
        s.execute(update(DemandRow).where(DemandRow.key == "job:2").values(at=t0))
        s.execute(update(HoldingRow).where(HoldingRow.key == "job:1").values(started=t0 - 3600, ended=t0 + 3600))
        s.execute(update(HoldingRow).where(HoldingRow.key == "job:2").values(started=t0 + 3600, ended=t0 + 4 * 3600))
    trace = DemandLog(book).requests(t0 - 1, t0 + 86400, now=t0 + 86400)
    assert [(r.arrival - t0, r.duration, r.profile) for r in trace] == [
        (-1, 3601, "gpu-2"),      # job 1, held when the period began: from its start, what was left
        (0, 3 * 3600, "gpu-2")]   # job 2, which waited: for as long as it then ran
    book.dispose()


def test_only_refused_workspaces_fold_into_the_request_after_them(db_url):
    book = QuotaBook(db_url)
    # Two jobs of one person and profile in a sweep, each a request of its own.
    for n in (1, 2):
        claim(book, f"job:{n}", "gpu-1", kind="job")
    # A refused workspace, asked again a minute later and granted: one request.
    claim(book, "workspace:bob/w", "mig-3g.40gb", user="bob", team="nlp")
    with pytest.raises(NoCapacity):
        claim(book, "workspace:carol/w", "mig-3g.40gb", user="carol", team=None)
    book.release("workspace:bob/w")
    claim(book, "workspace:carol/w", "mig-3g.40gb", user="carol", team=None)
    # A CPU job across two nodes: no GPU, never an error.
    book.claim(key="job:9", kind="job", user="alice", team="vision", quota=BIG,
               demand=Demand("gpu-0×2", demand("cpu").spec, ("dev",)))
    trace = DemandLog(book).requests(0, time.time() + 1, now=time.time() + 1)
    assert sorted((r.user, r.profile) for r in trace) == sorted(
        [("alice", "gpu-1")] * 2 + [("bob", "mig-3g.40gb"), ("carol", "mig-3g.40gb"), ("alice", "cpu")])
    book.dispose()
