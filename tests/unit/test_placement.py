"""Placement that keeps room: MIG geometry, the picks on fixed layouts, and the replay of
hand-made traces whose right answers are known."""

from __future__ import annotations

import io
from datetime import datetime, timezone
from pathlib import Path

import pytest

from podbay.hub.advice.bound import refusal_bound, unfragmented_refusals
from podbay.hub.advice.replay import DYNAMIC, WHOLE, GpuLayout, Replay, gpus_of, replay
from podbay.hub.advice.trace import Request, TraceError, read_trace, write_trace
from podbay.hub.config import load_config, parse_profile_id
from podbay.hub.gpu import FAMILIES, free_starts, instance_mask, room_for
from podbay.hub.inventory import Inventory
from podbay.hub.quota.placement import DevicePlacement, choose_mig_start, mix_of

DATA = Path(__file__).parents[1] / "data" / "demand"
H100 = FAMILIES["H100-80GB"]


def test_start_positions_follow_the_models_geometry():
    assert free_starts(H100, "3g.40gb", 0, 0) == (0, 4)
    assert free_starts(H100, "2g.20gb", 0, 0) == (0, 2, 4)
    assert free_starts(H100, "4g.40gb", 0, 0) == (0,)
    one_at_4 = instance_mask(H100.profiles["1g.10gb"], 4)
    assert free_starts(H100, "3g.40gb", one_at_4, 1) == (0,)
    assert free_starts(H100, "4g.40gb", one_at_4, 1) == (0,)
    # A 1g slice at 0 takes the only place a 4g may start.
    assert free_starts(H100, "4g.40gb", instance_mask(H100.profiles["1g.10gb"], 0), 1) == ()
    # One media-engine instance per GPU.
    me = instance_mask(H100.profiles["1g.10gb+me"], 0)
    assert free_starts(H100, "1g.10gb+me", me, 1) == ()
    # A30: four slots; a 2g at 2 leaves 0 for another.
    a30 = FAMILIES["A30-24GB"]
    assert free_starts(a30, "2g.12gb", instance_mask(a30.profiles["2g.12gb"], 2), 2) == (0,)


def test_room_is_the_most_instances_that_still_fit():
    assert room_for(H100, 0, 0) == {"1g.10gb": 7, "1g.10gb+me": 1, "1g.20gb": 4, "2g.20gb": 3,
                                    "3g.40gb": 2, "4g.40gb": 1, "7g.80gb": 1}
    three_at_0 = instance_mask(H100.profiles["3g.40gb"], 0)
    assert room_for(H100, three_at_0, 3)["4g.40gb"] == 0
    three_at_4 = instance_mask(H100.profiles["3g.40gb"], 4)
    room = room_for(H100, three_at_4, 3)
    assert room["4g.40gb"] == 1 and room["1g.10gb"] == 4 and room["2g.20gb"] == 2


class Gpu:
    def __init__(self, family=H100, used=0, compute=0, held=0):
        self.family, self.used, self.compute, self.held = family, used, compute, held


def test_a_3g_goes_where_it_leaves_room_for_a_4g():
    mix = mix_of({"mig-4g.40gb": 5, "mig-3g.40gb": 5})
    assert choose_mig_start([Gpu()], "3g.40gb", mix) == (0, 4)
    # Without looking ahead: the first start.
    assert choose_mig_start([Gpu()], "3g.40gb", mix, keep_room=False) == (0, 0)


def test_a_slice_goes_on_a_gpu_already_cut_and_empty_ones_stay_whole():
    one = H100.profiles["1g.10gb"]
    busy = Gpu(used=instance_mask(one, 6), compute=1, held=1)
    mix = mix_of({}, {f"mig-{p}": 1 for p in H100.profiles})
    assert choose_mig_start([Gpu(), busy], "1g.10gb", mix)[0] == 1
    assert choose_mig_start([Gpu(), busy], "1g.10gb", mix, keep_room=False)[0] == 0
    # Nowhere to go: None.
    full = Gpu(used=0xFF, compute=7, held=7)
    assert choose_mig_start([full], "1g.10gb", mix) is None


def test_fixed_slices_and_shares_pack_onto_the_busiest_gpu():
    cfg = load_config(DATA / "one-server.yaml")
    placement = DevicePlacement(Inventory.from_config(cfg))
    spec = parse_profile_id("mig-1g.10gb")
    # Nothing taken: the first GPU in order.
    first = placement.pick(spec, ["dev"], set())[0]
    assert first.parent_uuid == "GPU-00000000-0000-4000-8000-000000000002"
    # GPU 3 already holds its 2g: a 1g goes there, so GPU 2 stays empty.
    taken = {("node-a", "MIG-00000000-0000-4000-8003-000000000002")}
    picked = placement.pick(spec, ["dev"], taken)[0]
    assert picked.parent_uuid == "GPU-00000000-0000-4000-8000-000000000003"


def test_a_trace_reads_back_what_was_written_and_bad_lines_are_named():
    reqs = [Request(1733000000, 3600, "alice", "vision", "mig-1g.10gb"), Request(1733000100.5, 0, "bob", None, "gpu-2")]
    buf = io.StringIO()
    write_trace(reqs, buf)
    assert read_trace(io.StringIO(buf.getvalue())) == reqs
    nine = datetime(2026, 12, 1, 9, tzinfo=timezone.utc).timestamp()
    for written in ("2026-12-01T09:00:00Z", "2026-12-01T10:00:00+01:00", "2026-12-01 09:00:00"):
        got = read_trace(io.StringIO(f"arrival,duration,user,team,profile\n{written},60,a,,gpu-1\n"))
        assert got[0].arrival == nine, written
    with pytest.raises(TraceError, match="no profile column"):
        read_trace(io.StringIO("arrival,duration,user,team\n0,1,a,b\n"))
    with pytest.raises(TraceError, match="line 3: duration 'soon' is not a number"):
        read_trace(io.StringIO("arrival,duration,user,team,profile\n0,1,a,,gpu-1\n5,soon,a,,gpu-1\n"))
    with pytest.raises(TraceError, match="line 2: profile id 'gpu-0.5' is not one of"):
        read_trace(io.StringIO("arrival,duration,user,team,profile\n0,1,a,,gpu-0.5\n"))
    with pytest.raises(TraceError, match="line 2: duration -1.0 is negative"):
        read_trace(io.StringIO("arrival,duration,user,team,profile\n0,-1,a,,gpu-1\n"))


def only(layouts: dict[int, GpuLayout]):
    """GPUs 0..4 of one-server.yaml as given (the others offered as nothing: a whole GPU in
    another pool would still serve, so they become whole GPUs of pool `none`)."""
    def layout(g):
        if g.index in layouts:
            return layouts[g.index]
        g.pool = "none"
        return WHOLE
    return layout


def trace(*rows) -> list[Request]:
    return [Request(a, d, "u", None, p) for a, d, p in rows]


def test_replay_keeps_room_where_first_fit_does_not():
    cfg = load_config(DATA / "one-server.yaml")
    # Two H100s made per request: a 3g (long), then two 4g. First fit puts the 3g at slot 0,
    # where GPU 2's only 4g would start: the second 4g is refused.
    reqs = trace((0, 100, "mig-3g.40gb"), (1, 100, "mig-4g.40gb"), (2, 100, "mig-4g.40gb"))
    layouts = only({2: DYNAMIC, 3: DYNAMIC})
    ff = replay(cfg, reqs, "first-fit", layouts)
    pb = replay(cfg, reqs, "podbay", layouts)
    assert (ff.refused, pb.refused) == (1, 0)
    assert ff.refused_by_profile == {"mig-4g.40gb": 1}
    # Podbay put the 3g and a 4g on one GPU.
    assert pb.placed[0] == pb.placed[1]


def test_replay_counts_units_held_and_returns_what_ended():
    cfg = load_config(DATA / "one-server.yaml")
    layouts = only({0: WHOLE, 1: WHOLE})
    # gpu-2 for 100 s, then a gpu-1 that arrives when it ended: both fit.
    reqs = trace((0, 100, "gpu-2"), (100, 50, "gpu-1"), (110, 10, "gpu-2"))
    r = replay(cfg, reqs, "podbay", layouts)
    assert r.refused == 1 and r.refused_by_profile == {"gpu-2": 1}
    assert r.unit_seconds_held == pytest.approx(2 * 100 + 1 * 50)
    # A profile no GPU here offers is refused, not an error.
    assert replay(cfg, trace((0, 1, "shared-1/4")), "podbay", layouts).refused == 1


def test_fixed_layouts_serve_only_their_profiles():
    cfg = load_config(DATA / "one-server.yaml")
    reqs = trace((0, 10, "mig-3g.40gb"), (0, 10, "mig-3g.40gb"), (0, 10, "mig-3g.40gb"), (0, 10, "mig-2g.12gb"))
    r = replay(cfg, reqs, "podbay")  # as declared: two balanced H100s, one A30
    assert r.refused == 1 and r.refused_by_profile == {"mig-3g.40gb": 1}
    two_3g = GpuLayout("mig", mig=("3g.40gb", "3g.40gb"))
    assert replay(cfg, reqs, "podbay", only({2: two_3g, 4: GpuLayout("mig", mig=("2g.12gb",) * 2)})).refused == 1
    assert replay(cfg, reqs, "podbay", only({2: two_3g, 3: two_3g, 4: DYNAMIC})).refused == 0


def test_the_bound_may_refuse_a_long_request_the_placements_cannot():
    cfg = load_config(DATA / "one-server.yaml")
    rp = Replay(cfg, gpus_of(cfg, only({0: WHOLE})), "podbay")
    # One GPU: a long request first, then three short ones in turn. Any placement that takes
    # what it has room for refuses the three; the offline optimum refuses the long one.
    reqs = trace((0, 1000, "gpu-1"), (10, 5, "gpu-1"), (20, 5, "gpu-1"), (30, 5, "gpu-1"))
    assert replay(cfg, reqs, "podbay", only({0: WHOLE})).refused == 3
    assert unfragmented_refusals(rp, reqs) == 3
    bound = refusal_bound(rp, reqs)
    assert bound.optimal and bound.refused == 1


def test_the_bound_counts_mig_slices_by_compute_and_memory():
    cfg = load_config(DATA / "one-server.yaml")
    rp = Replay(cfg, gpus_of(cfg, only({2: DYNAMIC})), "podbay")
    # Eight 1g at once on one GPU: seven fit (compute); four 1g.20gb... not in play here.
    reqs = trace(*[(0, 10, "mig-1g.10gb")] * 8)
    assert refusal_bound(rp, reqs).refused == 1
    assert unfragmented_refusals(rp, reqs) == 1
    assert replay(cfg, reqs, "podbay", only({2: DYNAMIC})).refused == 1
    # Two 4g at once: memory allows two (8 slots), instances per GPU allow one.
    assert refusal_bound(rp, trace((0, 10, "mig-4g.40gb"), (0, 10, "mig-4g.40gb"))).refused == 1
