from __future__ import annotations

import multiprocessing as mp
import queue
import time
from fractions import Fraction

import pytest

from podbay.hub.config import Quota, load_config, parse_profile_id
from podbay.hub.inventory import Inventory
from podbay.hub.quota import ClaimRefused, Demand, NoCapacity, QuotaBook, QuotaExceeded, Snapshot, fmt_units
from podbay.hub.quota.capacity import InventoryCapacity
from podbay.hub.quota.placement import DevicePlacement

from tests.harness import ROOT, TEST_CONFIG

BIG = Quota(gpu_units=100, workspaces_per_user=100, job_gpus=100)


def make_book(db_url: str) -> QuotaBook:
    return QuotaBook(db_url)


def placement(config=TEST_CONFIG) -> DevicePlacement:
    return DevicePlacement(Inventory.from_config(load_config(config)))


def demand(profile: str, pools=("dev",)) -> Demand:
    spec = parse_profile_id(profile)
    return Demand(profile, spec, tuple(pools), gpus=spec.count if spec.kind == "full" else 0)


NOTHING_TAKEN = Snapshot(0, frozenset(), {}, {}, {})


def claim(ledger, key, profile, user="alice", team="vision", quota=BIG, kind="workspace", config=TEST_CONFIG):
    return ledger.claim(key=key, kind=kind, user=user, team=team, demand=demand(profile), quota=quota,
                        placement=placement(config))


def test_claim_and_release(db_url):
    ledger = make_book(db_url)
    a = claim(ledger, "workspace:alice/a", "mig-3g.40gb")
    assert a.devices == ("MIG-11111111-0001-4000-8000-000000000001",) and a.units == Fraction(3, 7)
    with pytest.raises(NoCapacity, match="no mig-3g.40gb is free"):
        claim(ledger, "workspace:alice/b", "mig-3g.40gb")
    assert ledger.release("workspace:alice/a")
    assert not ledger.release("workspace:alice/a")
    assert claim(ledger, "workspace:alice/b", "mig-3g.40gb").devices == a.devices


def test_same_key_twice_is_refused(db_url):
    ledger = make_book(db_url)
    claim(ledger, "workspace:alice/a", "cpu")
    with pytest.raises(ClaimRefused, match="already holds devices"):
        claim(ledger, "workspace:alice/a", "cpu")


def test_shared_slots_pack_onto_one_gpu_and_carry_the_bare_uuid(db_url):
    ledger = make_book(db_url)
    a = claim(ledger, "workspace:alice/a", "shared-1/2")
    b = claim(ledger, "workspace:alice/b", "shared-1/2")
    assert a.devices == b.devices == ("GPU-11111111-0000-4000-8000-000000000001",)
    assert ledger.taken() == {("dev-01", "GPU-11111111-0000-4000-8000-000000000001::0"),
                              ("dev-01", "GPU-11111111-0000-4000-8000-000000000001::1")}
    with pytest.raises(NoCapacity):
        claim(ledger, "workspace:alice/c", "shared-1/2")


def test_whole_gpus_come_from_one_node(db_url):
    ledger = make_book(db_url)
    a = claim(ledger, "workspace:alice/a", "gpu-2")
    assert set(a.devices) == {"GPU-11111111-0000-4000-8000-000000000002", "GPU-11111111-0000-4000-8000-000000000003"}
    assert a.units == 2 and a.gpus == 2
    with pytest.raises(NoCapacity):
        claim(ledger, "workspace:alice/b", "gpu-1")


@pytest.mark.parametrize(
    "held, asked, units, fits",
    [
        pytest.param([], "gpu-1", 1, True, id="exactly-the-quota"),
        pytest.param(["mig-1g.10gb"], "gpu-1", 1, False, id="one-seventh-over"),
        pytest.param(["mig-1g.10gb"] * 2, "mig-3g.40gb", 1, True, id="five-sevenths"),
        pytest.param(["shared-1/2"], "shared-1/2", 1, True, id="two-halves"),
        pytest.param(["shared-1/2", "mig-3g.40gb"], "mig-1g.10gb", 1, False, id="fifteen-fourteenths"),
        pytest.param(["shared-1/2", "mig-1g.10gb"], "mig-1g.10gb", 1, True, id="eleven-fourteenths"),
        pytest.param([], "mig-1g.10gb", 0, False, id="no-units"),
        pytest.param([], "cpu", 0, True, id="cpu-needs-none"),
    ],
)
def test_quota_arithmetic(db_url, held, asked, units, fits):
    ledger = make_book(db_url)
    quota = Quota(gpu_units=units, workspaces_per_user=10)
    for i, p in enumerate(held):
        claim(ledger, f"workspace:alice/h{i}", p, quota=BIG)
    if fits:
        claim(ledger, "workspace:alice/new", asked, quota=quota)
    else:
        with pytest.raises(QuotaExceeded, match="GPU units"):
            claim(ledger, "workspace:alice/new", asked, quota=quota)
        assert ledger.get("workspace:alice/new") is None


def test_quota_counts_the_team_not_the_user(db_url):
    ledger = make_book(db_url)
    quota = Quota(gpu_units=1, workspaces_per_user=5)
    claim(ledger, "workspace:alice/a", "shared-1/2", user="alice", team="vision", quota=quota)
    claim(ledger, "workspace:carol/a", "shared-1/2", user="carol", team="vision", quota=quota)
    with pytest.raises(QuotaExceeded, match="team vision already uses 1 of 1"):
        claim(ledger, "workspace:carol/b", "mig-1g.10gb", user="carol", team="vision", quota=quota)
    # Someone in no team is counted alone.
    claim(ledger, "workspace:dave/a", "mig-1g.10gb", user="dave", team=None, quota=quota)
    assert ledger.snapshot().units_of(None, "dave") == Fraction(1, 7)
    assert ledger.snapshot().units_of("vision", "alice") == 1


def test_workspaces_per_user(db_url):
    ledger = make_book(db_url)
    quota = Quota(gpu_units=0, workspaces_per_user=2)
    claim(ledger, "workspace:alice/a", "cpu", quota=quota)
    claim(ledger, "workspace:alice/b", "cpu", quota=quota)
    with pytest.raises(QuotaExceeded, match="you already run 2 workspaces"):
        claim(ledger, "workspace:alice/c", "cpu", quota=quota)


def test_reconcile_releases_what_no_longer_runs(db_url):
    ledger = make_book(db_url)
    claim(ledger, "workspace:alice/a", "gpu-1")
    claim(ledger, "workspace:alice/b", "gpu-1")
    ledger.set_ref("workspace:alice/a", {"pid": 1})
    released = ledger.reconcile(lambda a: a.ref.get("pid") == 1)
    assert released == ["workspace:alice/b"]
    assert [a.key for a in ledger.allocations()] == ["workspace:alice/a"]


def test_a_claim_can_replace_what_its_key_still_holds_in_one_transaction(db_url):
    ledger = make_book(db_url)
    first = claim(ledger, "workspace:alice/a", "mig-3g.40gb")
    with pytest.raises(ClaimRefused, match="already holds devices"):
        claim(ledger, "workspace:alice/a", "gpu-1")
    version = ledger.version()
    second = ledger.claim(key="workspace:alice/a", kind="workspace", user="alice", team="vision",
                          demand=demand("gpu-1"), quota=BIG, placement=placement(), replace=True)
    assert second.devices != first.devices and [a.key for a in ledger.allocations()] == ["workspace:alice/a"]
    assert ledger.version() == version + 1, "one write, one version"
    # Refused, the new claim takes nothing, and what the dead holder had still goes back.
    with pytest.raises(NoCapacity):
        ledger.claim(key="workspace:alice/a", kind="workspace", user="alice", team="vision",
                     demand=demand("gpu-4"), quota=BIG, placement=placement(), replace=True)
    assert ledger.get("workspace:alice/a") is None and ledger.taken() == set()


def test_a_claim_answers_what_the_book_reads_back(db_url):
    """The claim is written on the tables and answered from what it wrote: the answer is the
    allocation as anyone reads it back, devices in their order, on more than one GPU too."""
    ledger = make_book(db_url)
    for key, profile in (("workspace:alice/a", "gpu-2"), ("workspace:alice/b", "mig-1g.10gb"),
                         ("workspace:alice/c", "cpu")):
        got = claim(ledger, key, profile)
        assert got == ledger.get(key)
    ledger.set_ref("workspace:alice/a", {"pid": 7})
    assert ledger.get("workspace:alice/a").ref == {"pid": 7}


def test_a_release_of_nothing_does_not_wait_for_the_claims_lock(db_url):
    """A refused start's stop, a second stop: a release that finds nothing reads and answers,
    while a claim holds the write lock; one that finds something waits its turn."""
    import threading

    ledger = make_book(db_url)
    held = claim(ledger, "workspace:alice/a", "cpu")
    answered = []
    with ledger._writers:
        for key in ("workspace:alice/none", "workspace:alice/a"):
            t = threading.Thread(target=lambda key=key: answered.append(ledger.release(key)), daemon=True)
            t.start()
            if key.endswith("none"):
                t.join(60)
                assert answered == [False], "a release of nothing waited for the write lock"
    t.join(60)
    assert answered == [False, True] and ledger.get(held.key) is None
    # A release of one claim (`only`) leaves a later claim under the same key alone.
    later = claim(ledger, "workspace:alice/a", "cpu")
    assert not ledger.release("workspace:alice/a", only=held) and ledger.get("workspace:alice/a") == later


def test_a_stop_during_a_starts_claim_gives_back_what_the_claim_took(db_url):
    """JupyterHub stops a start that timed out while its claim was still being written (in a
    thread the timeout does not stop): the release waits for that claim and gives it back."""
    import threading

    ledger = make_book(db_url)
    key, answered, claimed = "workspace:alice/slow", [], []
    with ledger._writers:  # the claim waits its turn at the write lock
        starting = threading.Thread(target=lambda: claimed.append(claim(ledger, key, "gpu-1")), daemon=True)
        starting.start()
        deadline = time.monotonic() + 60
        while key not in ledger._claiming:  # the claim is under way
            assert starting.is_alive() and time.monotonic() < deadline, "the claim never got under way"
            starting.join(0.01)
        stopping = threading.Thread(target=lambda: answered.append(ledger.release(key)), daemon=True)
        stopping.start()
        stopping.join(1)
        assert answered == [], "the release did not wait for the claim under way"
    starting.join(60)
    stopping.join(60)
    assert claimed and answered == [True] and ledger.get(key) is None and ledger.taken() == set()


def test_where_the_engine_places_the_book_records_units_and_no_device(db_url):
    """Kubernetes' device plugin or Slurm's GRES pick the devices: the quota book still
    counts what the profile weighs against the team, and holds no device claim."""
    book = make_book(db_url)
    quota = Quota(gpu_units=1, workspaces_per_user=5)
    half = Demand("shared-1/2", parse_profile_id("shared-1/2"), ("dev",), units=Fraction(1, 2))
    a = book.claim(key="workspace:alice/a", kind="workspace", user="alice", team="vision", demand=half, quota=quota)
    assert a.devices == () and a.units == Fraction(1, 2) and book.taken() == set()
    book.claim(key="workspace:carol/a", kind="workspace", user="carol", team="vision", demand=half, quota=quota)
    with pytest.raises(QuotaExceeded, match="team vision already uses 1 of 1"):
        book.claim(key="workspace:carol/b", kind="workspace", user="carol", team="vision", demand=half, quota=quota)
    assert book.snapshot().units_of("vision", "alice") == 1


def test_a_job_the_engine_lets_run_is_recorded_past_podbays_job_quota(db_url):
    """Where the engine queues (Kueue, Slurm), its quota decided the job may run: the book
    records it (so usage is true) instead of refusing what already runs."""
    book = make_book(db_url)
    quota = Quota(gpu_units=0, workspaces_per_user=1, job_gpus=8)
    eight = Demand("gpu-8", parse_profile_id("gpu-8"), ("training",), gpus=8)
    book.claim(key="job:1", kind="job", user="alice", team="vision", demand=eight, quota=quota)
    with pytest.raises(QuotaExceeded, match="already runs jobs on 8 of 8 job GPUs"):
        book.claim(key="job:2", kind="job", user="alice", team="vision", demand=eight, quota=quota)
    book.claim(key="job:2", kind="job", user="alice", team="vision", demand=eight, quota=quota,
               enforce_job_quota=False)
    assert book.snapshot().job_gpus_of("vision", "alice") == 16


def test_fmt_units():
    assert [fmt_units(Fraction(x)) for x in (0, 1, Fraction(1, 2), Fraction(3, 7), Fraction(9, 4))] == \
        ["0", "1", "0.5", "0.43", "2.25"]


def _racing(target, arglists: list[tuple]) -> list:
    """Run target(*args, barrier, results) in one process per arglist, started at once (spawned,
    as hub and service are separate processes), and answer what each put in results.

    Waits for the processes themselves to end, not for a result within a time: a process
    that raised puts its traceback, one that died without a word is named with its exit
    code, and a slow start on a busy machine (each imports podbay anew) is only slow. The
    barrier's own limit is for a partner that never comes."""
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(len(arglists)), ctx.Queue()
    procs = [ctx.Process(target=_reporting, args=(target, args, barrier, results)) for args in arglists]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    # Each has ended, what it put with it (a process's queue is flushed before it exits).
    outcomes = []
    for _ in procs:
        try:
            outcomes.append(results.get(timeout=10))
        except queue.Empty:
            raise AssertionError(f"a racer ended without a word: exit codes {[p.exitcode for p in procs]}") from None
    errors = [o[1] for o in outcomes if o[0] == "error"]
    assert not errors, "\n".join(errors)
    return [o[1] for o in outcomes]


def _reporting(target, args, barrier, results) -> None:
    import traceback

    try:
        results.put(("ok", target(*args, barrier)))
    except BaseException:
        results.put(("error", traceback.format_exc()))


def _race(db_url: str, config: str, key: str, barrier):
    ledger = QuotaBook(db_url)
    barrier.wait(timeout=300)
    try:
        a = claim(ledger, key, "mig-3g.40gb", config=config)
        return key, a.devices
    except NoCapacity:
        return key, None


@pytest.mark.parametrize("round_", range(4))
@pytest.mark.timing
def test_two_processes_racing_for_the_last_device(db_url, round_):
    QuotaBook(db_url).dispose()  # migrate first
    outcomes = _racing(_race, [(db_url, str(TEST_CONFIG), f"workspace:u{i}/x") for i in range(2)])
    winners = [o for o in outcomes if o[1] is not None]
    assert len(winners) == 1, outcomes
    ledger = QuotaBook(db_url)
    assert len(ledger.allocations()) == 1 and len(ledger.taken()) == 1
    ledger.dispose()


RACERS = ["mig-3g.40gb", "shared-1/2", "mig-1g.10gb", "shared-1/2",
          "mig-1g.10gb", "mig-3g.40gb", "shared-1/2", "mig-1g.10gb"]
UNITS = {"mig-3g.40gb": Fraction(3, 7), "shared-1/2": Fraction(1, 2), "mig-1g.10gb": Fraction(1, 7)}


@pytest.mark.timing
def test_quota_holds_under_concurrent_claims(db_url):
    """Eight processes at once ask for slices of 3/7, 1/2 and 1/7 GPU against one 1-unit
    quota. What is granted is exactly what is held, never above the quota, and every
    refusal was right at the end state: a quota refusal would still overrun the quota, a
    capacity refusal has no device of its kind left."""
    QuotaBook(db_url).dispose()
    outcomes = _racing(_quota_race, [(db_url, str(TEST_CONFIG), i, profile) for i, profile in enumerate(RACERS)])
    ledger = QuotaBook(db_url)
    held = ledger.snapshot().units_of("vision", "alice")
    granted = [profile for _, profile, outcome in outcomes if outcome == "granted"]
    assert granted, outcomes
    assert held == sum(UNITS[p] for p in granted) <= 1, outcomes
    assert {a.key for a in ledger.allocations()} == {f"workspace:alice/q{i}" for i, _, o in outcomes if o == "granted"}
    for i, profile, outcome in outcomes:
        if outcome == "quota":
            assert held + UNITS[profile] > 1, (i, profile, outcomes)
        elif outcome == "capacity":
            capacity = InventoryCapacity(Inventory.from_config(load_config(TEST_CONFIG)))
            assert capacity.counts(parse_profile_id(profile), ["dev"], ledger.snapshot())[1] == 0, (i, profile)
        else:
            assert outcome == "granted", outcome
    ledger.dispose()


def _quota_race(db_url: str, config: str, i: int, profile: str, barrier):
    ledger = QuotaBook(db_url)
    barrier.wait(timeout=300)
    try:
        claim(ledger, f"workspace:alice/q{i}", profile, quota=Quota(gpu_units=1, workspaces_per_user=10),
              config=config)
        return i, profile, "granted"
    except QuotaExceeded:
        return i, profile, "quota"
    except NoCapacity:
        return i, profile, "capacity"


def test_demo_inventory_counts():
    inv = InventoryCapacity(Inventory.from_config(load_config(ROOT / "config" / "podbay.yaml")))
    counts = {p: inv.counts(parse_profile_id(p), ["dev"], NOTHING_TAKEN)[0] for p in
              ["mig-1g.10gb", "mig-2g.20gb", "mig-3g.40gb", "shared-1/4", "gpu-1", "gpu-2", "gpu-4"]}
    assert counts == {"mig-1g.10gb": 9, "mig-2g.20gb": 1, "mig-3g.40gb": 1, "shared-1/4": 8,
                      "gpu-1": 4, "gpu-2": 2, "gpu-4": 1}
    assert inv.counts(parse_profile_id("gpu-8"), ["training"], NOTHING_TAKEN)[0] == 1


def test_migrations_match_the_models(db_url):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    import podbay.hub.jobs  # noqa: F401  (its table is part of the schema)
    import podbay.hub.secrets  # noqa: F401  (so is this one)
    import podbay.hub.sshkeys  # noqa: F401  (and this one)
    from podbay.hub.quota.database import Base

    ledger = make_book(db_url)
    with ledger.engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"version_table": "podbay_alembic_version"})
        diff = compare_metadata(ctx, Base.metadata)
    ledger.dispose()
    assert diff == []


def test_opening_an_existing_ledger_keeps_its_claims(db_url):
    claim(make_book(db_url), "workspace:alice/a", "gpu-1")
    assert [a.key for a in make_book(db_url).allocations()] == ["workspace:alice/a"]


def test_snapshot_follows_claims_made_elsewhere(db_url):
    reader, writer = make_book(db_url), make_book(db_url)
    first = reader.snapshot()
    assert first.taken == frozenset() and reader.snapshot() is first  # cached while nothing changes
    claim(writer, "workspace:alice/a", "mig-3g.40gb")
    claim(writer, "job:1", "gpu-1", kind="job")
    snap = reader.snapshot()
    assert snap is not first and len(snap.taken) == 2
    assert snap.units_of("vision", "alice") == Fraction(3, 7) and snap.workspaces == {"alice": 1}
    assert snap.job_gpus_of("vision", "alice") == 1
    writer.release("workspace:alice/a")
    assert reader.snapshot().units_of("vision", "alice") == 0
    reader.dispose()
    writer.dispose()


def test_claims_skip_the_per_commit_sync_but_what_users_were_answered_does_not(tmp_path):
    """A power loss may take the book's last claims (the workspaces die with the machine,
    and the hub reconciles at start), never a job the service answered 201 for."""
    book = QuotaBook(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    synchronous = "PRAGMA synchronous"  # 1 NORMAL, 2 FULL
    with book.write_session() as s:
        assert s.connection().exec_driver_sql(synchronous).scalar() == 1
    with book.db.durable_write_session() as s:
        assert s.connection().exec_driver_sql(synchronous).scalar() == 2
    from podbay.hub.jobs import JobStore

    assert JobStore(book)._write is book.db.durable_write_session
    book.dispose()
