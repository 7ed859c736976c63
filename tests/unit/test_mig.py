"""MIG instances made per request (`mig_on_request`): the placement's start, the instance
made through NVML (the real pynvml on the stand-in driver, tests/standins/nvml.py), its UUID
in the claim, its removal after the release, and the driver's refusals as the person's
message."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from sqlalchemy import select

from podbay.hub.config import ConfigError, load_config
from podbay.hub.discovery import discover_nvml
from podbay.hub.gpu import FAMILIES
from podbay.hub.inventory import Inventory, InventoryError, on_request_key
from podbay.hub.mig import MigError, MigMaker
from podbay.hub.portal import Portal
from podbay.hub.quota import NoCapacity, QuotaBook
from podbay.hub.quota.database import DemandRow
from podbay.hub.quota.placement import DevicePlacement, mix_of

from tests.standins import nvml as fake
from tests.unit.test_quota_book import BIG, demand

H100 = "GPU-0a000000-0000-4000-8000-000000000000"
H100_B = "GPU-0b000000-0000-4000-8000-000000000000"
A30 = "GPU-0c000000-0000-4000-8000-000000000000"
MODEL = "NVIDIA H100 80GB HBM3"


def config(tmp_path: Path, gpus: list[dict] | None = None, profiles=("mig-1g.10gb", "mig-3g.40gb", "mig-4g.40gb",
                                                                      "mig-7g.80gb")) -> Path:
    cfg = {
        "images": [{"name": "base", "display_name": "Base", "image": "podbay/base:1"}],
        "profiles": [{"id": "cpu"}] + [{"id": p} for p in profiles],
        "pools": {"dev": {}},
        "nodes": [{"name": "node-a", "pool": "dev", "gpus": gpus or [
            {"index": 0, "uuid": H100, "model": MODEL, "memory_mib": 81559, "mig_on_request": True}]}],
    }
    path = tmp_path / "podbay.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(autouse=True)
def no_driver_after():
    yield
    fake.uninstall()


@pytest.fixture
def driver(tmp_path):
    """The stand-in driver with one H100 (MIG on) and one A30, bound to pynvml."""
    state = fake.write_state(tmp_path / "nvml.json", [
        fake.gpu(H100), fake.gpu(H100_B),
        fake.gpu(A30, name="NVIDIA A30", memory_mib=24576, geometry="four")])
    yield state, fake.install(state)


def portal_on(tmp_path, db_url, nv) -> Portal:
    """A portal on the test config's on-request H100, its MIG maker bound to the stand-in."""
    cfg = load_config(config(tmp_path))
    inventory = Inventory.from_config(cfg)
    p = Portal(cfg, QuotaBook(db_url), tmp_path, placement=DevicePlacement(inventory), inventory=inventory)
    p.mig.maker._nvml = nv
    return p


@pytest.fixture
def portal(tmp_path, driver, db_url):
    p = portal_on(tmp_path, db_url, driver[1])
    yield p
    p.book.dispose()


class Recorded:
    """The quota book as MigMaker reads and writes it, for the maker alone: the UUIDs claims
    record, and the leftovers."""

    def __init__(self):
        self.uuids: dict[str, str] = {}
        self.leftovers: dict[str, str] = {}

    def visible_ids(self):
        return {**self.uuids, **{u: k for k, u in self.leftovers.items()}}

    def hold_leftover(self, node, device, visible_id, profile):
        self.leftovers[f"leftover:{device}"] = visible_id

    def release(self, key, **kw):
        return self.leftovers.pop(key, None) is not None

    def record(self, made):
        self.uuids.update({m.uuid: f"workspace:{key}" for key, m in made.items()})


def maker(tmp_path, nv, book=None) -> MigMaker:
    return MigMaker(tmp_path / "mig.lock", book or Recorded(), {}, nvml=nv)


def claim(portal: Portal, key: str, profile: str, kind: str = "workspace"):
    return portal.claim(key=key, kind=kind, user="alice", team="vision", demand=demand(profile), quota=BIG)


def made(state) -> list[tuple[int, int]]:
    """(profile id, start) of every GPU instance on the first H100."""
    return sorted((i["profile_id"], i["start"]) for i in fake.instances(state) if i["gpu"] == H100)


def test_an_instance_is_made_where_it_keeps_room_and_removed_after_the_release(portal, driver):
    state, _ = driver
    a = claim(portal, "workspace:alice/a", "mig-3g.40gb")
    # The 3g goes to slot 4: slot 0 stays free for a 4g (MIG profile id 9 is 3g.40gb).
    assert made(state) == [(9, 4)]
    [inst] = fake.instances(state)
    assert a.devices == tuple(inst["uuids"]) and a.devices[0].startswith("MIG-")
    assert a.device_keys == (on_request_key(H100, "3g.40gb", 4),)
    assert a.ref["made"][a.devices[0]] == {"gpu": H100, "gpu_instance": 2, "profile": "3g.40gb"}
    b = claim(portal, "workspace:alice/b", "mig-4g.40gb")
    assert made(state) == [(5, 0), (9, 4)]
    # Full: nothing else fits, and the form says so before anyone asks.
    total, free = portal.counts(demand("mig-1g.10gb").spec, ["dev"], portal.book.snapshot())
    assert (total, free) == (7, 0)
    with pytest.raises(NoCapacity):
        claim(portal, "workspace:alice/c", "mig-1g.10gb")
    assert made(state) == [(5, 0), (9, 4)]
    portal.book.release(a.key)
    assert made(state) == [(5, 0)]
    assert portal.counts(demand("mig-1g.10gb").spec, ["dev"], portal.book.snapshot())[1] == 3
    # Made again at the same start, it is a new MIG device.
    again = claim(portal, "workspace:alice/a", "mig-3g.40gb")
    assert again.devices != a.devices and made(state) == [(5, 0), (9, 4)]
    portal.book.release(b.key)
    portal.book.release(again.key)
    assert made(state) == []


def test_an_instance_in_use_stays_until_it_is_not_and_its_slots_stay_taken(portal, driver):
    state, _ = driver
    a = claim(portal, "workspace:alice/a", "mig-7g.80gb")
    fake.mark_busy(state, a.devices[0])  # a process that outlived its workspace
    portal.book.release(a.key)
    assert made(state) == [(0, 0)]
    # Recorded as held by nobody: the form, the placement and the page count its slots taken.
    [left] = portal.book.allocations(kind="leftover")
    assert left.devices == a.devices and left.user == "" and left.units == 0
    assert portal.counts(demand("mig-1g.10gb").spec, ["dev"], portal.book.snapshot()) == (7, 0)
    with pytest.raises(NoCapacity, match="no mig-1g.10gb is free"):
        claim(portal, "workspace:alice/b", "mig-1g.10gb")
    with portal.book.read_session() as s:
        assert s.scalars(select(DemandRow.outcome).where(DemandRow.key == "workspace:alice/b")).all() == ["capacity"]
    # It ends: the next request for a slice finds it gone.
    fake.mark_busy(state, a.devices[0], busy=False)
    b = claim(portal, "workspace:alice/b", "mig-1g.10gb")
    [start] = [portal.inventory.by_key[("node-a", k)].mig_start for k in b.device_keys]
    assert made(state) == [(19, start)] and portal.book.allocations(kind="leftover") == []


def test_a_start_held_by_an_unknown_instance_is_claimed_again_elsewhere(portal, driver):
    """An instance podbay never knew of, in use: found when the chosen start is made, recorded
    as a leftover, and the request placed again beside it, as one request."""
    state, nv = driver
    stray = maker(portal.data_dir, nv)
    # A 4g at slot 0: where the placement puts a 4g, unaware of it.
    m = stray.make([portal.inventory.by_key[("node-a", on_request_key(H100, "3g.40gb", 4))]], lambda made: None)
    fake.mark_busy(state, next(iter(m.values())).uuid)
    a = claim(portal, "workspace:alice/a", "mig-3g.40gb")
    assert made(state) == [(9, 0), (9, 4)]
    assert [x.key for x in portal.book.allocations(kind="leftover")] == [f"leftover:{H100}/3g.40gb@4"]
    assert a.device_keys == (on_request_key(H100, "3g.40gb", 0),)
    with portal.book.read_session() as s:
        assert s.scalars(select(DemandRow.outcome).where(DemandRow.key == a.key)).all() == ["granted"]


def test_a_claim_replaced_while_its_instance_was_made_keeps_nothing_of_it(portal, driver):
    """A restart under the same key while the first start's instance is made: the first
    finds its claim gone, removes what it made, and never touches the second's."""
    from podbay.hub.quota import ClaimRefused

    state, _ = driver
    book = portal.book

    def raw_claim():
        return book.claim(key="workspace:alice/a", kind="workspace", user="alice", team="vision",
                          demand=demand("mig-3g.40gb"), quota=BIG, placement=portal.placement, replace=True)

    first = raw_claim()
    second = raw_claim()  # replaced: a new row under the same key
    with pytest.raises(ClaimRefused, match="stopped or started again"):
        portal.mig.make_for(first)
    assert made(state) == [] and book.get("workspace:alice/a").row_id == second.row_id
    done = portal.mig.make_for(second)
    assert made(state) == [(9, 4)] and done.devices == tuple(fake.instances(state)[0]["uuids"])


def test_what_no_claim_records_is_removed_at_start(portal, driver):
    """An instance made by a process that died before recording it, or by someone else."""
    state, nv = driver
    stray = maker(portal.data_dir, nv)
    dev = portal.inventory.by_key[("node-a", on_request_key(H100, "1g.10gb", 3))]
    stray.make([dev], lambda m: None)
    assert made(state) == [(19, 3)]
    portal.tidy_mig()
    assert made(state) == []
    # And before making one: the starts of what ended are free again.
    stray.make([dev], lambda m: None)
    kept = claim(portal, "workspace:alice/a", "mig-4g.40gb")
    assert made(state) == [(5, 0)] and fake.instances(state)[0]["uuids"] == list(kept.devices)


def test_the_drivers_refusals_say_what_to_do(tmp_path, db_url, caplog):
    state = fake.write_state(tmp_path / "nvml.json", [fake.gpu(H100)], root=False)
    p = portal_on(tmp_path, db_url, fake.install(state))
    book = p.book
    # The person is told it is a set-up problem; the log says what it is and what to do.
    for fault, said in [(None, "needs root"), ([fake.gpu(H100, mig=False)], "not in MIG mode: enable it"),
                        ("no driver", "NVML is not available")]:
        if fault == "no driver":
            state.unlink()
        elif fault:
            fake.write_state(state, fault)
        caplog.clear()
        with pytest.raises(NoCapacity, match="a set-up problem that podbay's log shows the administrators"):
            claim(p, "workspace:alice/a", "mig-1g.10gb")
        assert said in caplog.text
        assert book.allocations() == []
    book.dispose()


@pytest.mark.parametrize("family, uuid", [("H100-80GB", H100), ("A30-24GB", A30)])
def test_every_profile_is_made_at_each_of_its_starts_with_the_drivers_profile_id(tmp_path, driver, family, uuid):
    """podbay's names → NVML's profile constants, checked against the driver's own ids
    (`-lgip` of real GPUs, as the stand-in has them)."""
    state, nv = driver
    fam = FAMILIES[family]
    model, mem = ("NVIDIA A30", 24576) if family == "A30-24GB" else (MODEL, 81559)
    cfg = load_config(config(tmp_path, [{"index": 0, "uuid": uuid, "model": model, "memory_mib": mem,
                                         "mig_on_request": True}], profiles=[f"mig-{p}" for p in fam.profiles]))
    inventory = Inventory.from_config(cfg)
    book = Recorded()
    mk = maker(tmp_path, nv, book)
    ids = {"1g.10gb": 19, "1g.10gb+me": 20, "1g.20gb": 15, "2g.20gb": 14, "3g.40gb": 9, "4g.40gb": 5,
           "7g.80gb": 0, "1g.6gb": 14, "1g.6gb+me": 21, "2g.12gb": 5, "2g.12gb+me": 6, "4g.24gb": 0}
    for d in inventory.on_request:
        m = mk.make([d], book.record)[d.key]
        [inst] = [i for i in fake.instances(state) if i["gpu"] == uuid]
        assert (inst["profile_id"], inst["start"], inst["uuids"]) == (ids[d.mig_profile], d.mig_start, [m.uuid])
        assert mk.instances(uuid, fam) == [m]
        book.uuids.clear()
        assert mk.tidy([(uuid, fam)]) == [m]


def test_an_overlapping_instance_is_refused_by_the_driver_and_nothing_is_left(tmp_path, driver):
    state, nv = driver
    cfg = load_config(config(tmp_path))
    inventory = Inventory.from_config(cfg)
    book = Recorded()
    mk = maker(tmp_path, nv, book)
    keep = mk.make([inventory.by_key[("node-a", on_request_key(H100, "3g.40gb", 4))]], book.record)
    with pytest.raises(MigError, match="slots 4–5"):
        mk.make([inventory.by_key[("node-a", on_request_key(H100, "1g.10gb", 0))],
                 inventory.by_key[("node-a", on_request_key(H100, "2g.20gb", 4))]], book.record)
    # The 1g this call made first was removed again; the recorded 3g stays.
    assert [i["uuids"] for i in fake.instances(state) if i["gpu"] == H100] == [[m.uuid for m in keep.values()]]
    # Two made in one call are both kept (the GPU is tidied once, before either).
    two = mk.make([inventory.by_key[("node-a", on_request_key(H100, "1g.10gb", 0))],
                   inventory.by_key[("node-a", on_request_key(H100, "1g.10gb", 1))]], book.record)
    assert sorted(u for i in fake.instances(state) for u in i["uuids"]) == sorted(
        [m.uuid for m in keep.values()] + [m.uuid for m in two.values()])


def test_an_instance_made_by_hand_in_any_profile_is_removed(tmp_path, driver):
    """Tidy reads every profile the driver has, not only podbay's (1g.10gb+me here, made by
    hand), and every compute instance in it."""
    state, nv = driver
    nv.nvmlInit()
    dev = nv.nvmlDeviceGetHandleByUUID(H100)
    info = nv.nvmlDeviceGetGpuInstanceProfileInfo(dev, nv.NVML_GPU_INSTANCE_PROFILE_1_SLICE_REV1)
    gi = nv.nvmlDeviceCreateGpuInstanceWithPlacement(dev, info.id, nv.c_nvmlGpuInstancePlacement_t(3, 1))
    ci = nv.nvmlGpuInstanceGetComputeInstanceProfileInfo(gi, nv.NVML_COMPUTE_INSTANCE_PROFILE_1_SLICE, 0)
    nv.nvmlGpuInstanceCreateComputeInstance(gi, ci.id)
    nv.nvmlShutdown()
    assert made(state) == [(20, 3)]
    [gone] = maker(tmp_path, nv).tidy([(H100, FAMILIES["H100-80GB"])])
    assert (gone.profile, gone.start) == ("1g.10gb+me", 3) and made(state) == []


def test_placement_prefers_slices_that_exist_then_the_start_the_demand_needs(tmp_path):
    gpus = [{"index": 0, "uuid": H100, "model": MODEL, "memory_mib": 81559, "mig_on_request": True},
            {"index": 1, "uuid": H100_B, "model": MODEL, "memory_mib": 81559,
             "mig": [{"profile": "1g.10gb", "uuid": "MIG-0b000000-0000-4000-8000-000000000001"}]}]
    inventory = Inventory.from_config(load_config(config(tmp_path, gpus)))
    placement = DevicePlacement(inventory)
    spec = demand("mig-1g.10gb").spec
    assert placement.pick(spec, ["dev"], set())[0].key == "MIG-0b000000-0000-4000-8000-000000000001"
    taken = {("node-a", "MIG-0b000000-0000-4000-8000-000000000001")}
    # Then one made on request, at the start that costs the least of what people ask for:
    # mostly 2g.20gb (starts 0, 2, 4): slot 6, which no 2g can use;
    placement.mix = lambda: mix_of({"mig-2g.20gb": 10, "mig-1g.10gb": 1})
    first = placement.pick(spec, ["dev"], taken)[0]
    assert (first.parent_uuid, first.mig_start) == (H100, 6)
    # mostly 4g.40gb (start 0 only): out of slots 0-3;
    placement.mix = lambda: mix_of({"mig-4g.40gb": 10, "mig-1g.10gb": 1})
    assert placement.pick(spec, ["dev"], taken)[0].mig_start == 4
    # with the 1g at 6 taken, a 2g goes where a 3g.40gb still fits beside it.
    taken |= {("node-a", first.key)}
    placement.mix = lambda: mix_of({"mig-3g.40gb": 10, "mig-2g.20gb": 1})
    assert placement.pick(demand("mig-2g.20gb").spec, ["dev"], taken)[0].mig_start == 4


def test_config_says_what_an_on_request_gpu_may_not_have(tmp_path):
    bad = [{"index": 0, "uuid": H100, "model": MODEL, "mig_on_request": True,
            "mig": [{"profile": "1g.10gb", "uuid": "MIG-0a000000-0000-4000-8000-000000000001"}]},
           {"index": 1, "uuid": H100_B, "model": "NVIDIA L40S", "mig_on_request": True}]
    with pytest.raises(ConfigError) as e:
        load_config(config(tmp_path, bad))
    assert "give no mig: list and no replicas:" in str(e.value)
    assert "NVIDIA L40S does not support MIG" in str(e.value)
    # An on-request GPU serves any profile of its model: no "no device" complaint.
    load_config(config(tmp_path, [{"index": 0, "uuid": H100, "model": MODEL, "mig_on_request": True}]))


def test_discovered_gpus_made_on_request(tmp_path, driver):
    state, nv = driver
    cfg = yaml.safe_load(config(tmp_path).read_text())
    cfg["nodes"] = [{"name": "node-a", "pool": "dev", "discover": True, "mig_on_request": [0]}]
    (tmp_path / "podbay.yaml").write_text(yaml.safe_dump(cfg))
    inventory = Inventory.from_config(load_config(tmp_path / "podbay.yaml"), discover=discover_nvml)
    on = {d.parent_uuid for d in inventory.on_request}
    assert on == {H100}
    # GPU 1 is offered whole... it is in MIG mode with no instances: no device of it.
    assert not [d for d in inventory.devices if d.parent_uuid == H100_B or d.visible_id == H100_B]
    # A GPU with MIG off cannot be made on request.
    fake.write_state(state, [fake.gpu(H100, mig=False)])
    with pytest.raises(InventoryError, match="node node-a: GPU 0 .* MIG mode is off"):
        Inventory.from_config(load_config(tmp_path / "podbay.yaml"), discover=discover_nvml)


def test_kubernetes_has_no_slices_made_on_request(tmp_path):
    cfg = yaml.safe_load(config(tmp_path).read_text())
    cfg["backend"] = "kubernetes"
    (tmp_path / "podbay.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match="mig_on_request is for the local and docker backends"):
        load_config(tmp_path / "podbay.yaml")


def test_a_restart_during_a_retry_keeps_the_restarts_claim(portal, monkeypatch):
    """The start was held (the claim would be made again), but a restart took the key
    meanwhile: that claim is the restart's, and it stays."""
    from podbay.hub.mig import MigSlotsHeld
    from podbay.hub.quota import ClaimRefused

    book = portal.book
    restarted = []

    def make(devices, record):
        restarted.append(book.claim(key="workspace:alice/a", kind="workspace", user="alice", team="vision",
                                    demand=demand("mig-1g.10gb"), quota=BIG, placement=portal.placement, replace=True))
        raise MigSlotsHeld("slots held")

    monkeypatch.setattr(portal.mig.maker, "make", make)
    with pytest.raises(ClaimRefused, match="stopped or started again"):
        claim(portal, "workspace:alice/a", "mig-3g.40gb")
    [held] = book.allocations()
    assert held.row_id == restarted[0].row_id and held.profile == "mig-1g.10gb"


def test_a_stray_that_cannot_be_removed_for_want_of_root_is_a_set_up_fault(tmp_path, db_url, caplog):
    state = fake.write_state(tmp_path / "nvml.json", [fake.stray_instance(fake.gpu(H100), start=6)], root=False)
    p = portal_on(tmp_path, db_url, fake.install(state))
    book = p.book
    with pytest.raises(NoCapacity, match="a set-up problem"):
        claim(p, "workspace:alice/a", "mig-1g.10gb")
    assert "Insufficient Permissions" in caplog.text or "stand-in NVML error 4" in caplog.text
    assert book.allocations() == []
    with book.read_session() as s:
        assert s.scalars(select(DemandRow.outcome)).all() == ["capacity"]
    book.dispose()


def test_a_made_instance_is_measured_by_its_gpu_instance(portal):
    """DCGM names a MIG instance's utilisation by its parent GPU and GPU instance id: the id
    recorded when the instance was made matches it to the holding."""
    from podbay.hub.usage.policy import Matcher
    from podbay.hub.usage.sources import Reading
    from podbay.hub.usage.store import UsageStore

    a = claim(portal, "workspace:alice/a", "mig-3g.40gb")
    holding = UsageStore(portal.book).open_holding(a.key)
    assert holding.devices == [("node-a", a.devices[0])]
    matcher = Matcher(portal.inventory)
    busy = matcher.index([Reading(uuid=H100, util=42.0, gpu_instance=2, mig_profile="3g.40gb"),
                          Reading(uuid=H100, util=5.0, gpu_instance=7, mig_profile="1g.10gb")])
    assert matcher.measure(holding, busy) == (42.0, 42.0)
