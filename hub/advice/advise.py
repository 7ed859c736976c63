"""Which MIG and time-slicing layout each node's GPUs should have, from the demand podbay saw.

For a pool, every request replayed against a layout is served by one kind of room only: a
MIG profile's devices, a shared GPU's slots of its replicas, or whole GPUs (a `gpu-N` takes N
of one node's). Refusals therefore add up per kind of room: those of profile p depend on how
many p devices the pool has (the replay of p's requests alone over k devices, `_LossCurve`,
one replay for every k), and those of whole GPUs on how many the pool keeps whole (an
estimate where `gpu-N` asks for several: a node's own count matters there). The search
scores layouts with these; it changes one GPU's
layout at a time to the one that removes the most refusals, among the model's maximal MIG
layouts of the profiles asked for, whole, and shared as the catalog offers it, until no
change helps (coordinate descent: a local optimum, from the layout the nodes have now, so an
advice never moves a GPU for nothing); where no single change helps, several GPUs of one
node change together (two more whole GPUs for a `gpu-2`). The result is replayed in full
(replay.py) for the figures it reports, and kept only if that replay scores better than
today's layouts (the same score: refusals and, at `idle_weight`, idle GPU time).
"""

from __future__ import annotations

import bisect
import hashlib
import heapq
import itertools
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from ..config import PodbayConfig, split_ci
from ..gpu import FAMILIES
from .layouts import mig_layouts, predefined_name
from .replay import WHOLE, GpuLayout, Replay, Result, SimGpu
from .trace import Request


# How much a refused request's GPU time counts beside the refusal itself, per average
# request's worth of it. 0: refusals alone (a month-long request weighs what a minute's
# does); 1: GPU time as much as requests. 0.05 was the best of both on every trace tried
# (benchmarks/placement_replay.py: the shipped sample and four other cuts of Alibaba's
# trace): fewer refusals than refusals alone found on two, and far less idle time on all.
IDLE_WEIGHT = 0.05


class LayoutNotApplied(Exception):
    """A layout the engine cannot, or may not now, apply; the message says why and what to do."""


@dataclass
class GpuAdvice:
    index: int
    model: str
    current: GpuLayout
    advised: GpuLayout
    # What runs on it now (a workspace or job per line): what changing it would interrupt.
    holders: list[str] = field(default_factory=list)
    # Its MIG family's key (gpu.FAMILIES), if any.
    family: str | None = None

    @property
    def changes(self) -> bool:
        return self.current != self.advised


@dataclass
class NodeAdvice:
    node: str
    pool: str
    gpus: list[GpuAdvice]

    @property
    def changes(self) -> bool:
        return any(g.changes for g in self.gpus)

    @property
    def interrupts(self) -> list[str]:
        return [h for g in self.gpus if g.changes for h in g.holders]

    @property
    def config_name(self) -> str:
        """The mig-parted config that gives this node its advised layout: a predefined one
        where every GPU gets the same known layout, else podbay-<node> (within a label
        value's 63 characters)."""
        names = {predefined_name(FAMILIES.get(g.family), g.advised) for g in self.gpus}
        if len(names) == 1 and None not in names and len({g.advised for g in self.gpus}) == 1:
            return names.pop()
        name = f"podbay-{self.node}"
        if len(name) > 63:
            name = f"podbay-{self.node[:46].rstrip('.-')}-{hashlib.sha256(self.node.encode()).hexdigest()[:8]}"
        return name


@dataclass
class Advice:
    since: float
    until: float
    pools: list[str]
    requests: int
    before: Result
    after: Result
    nodes: list[NodeAdvice]

    @property
    def changed(self) -> list[NodeAdvice]:
        return [n for n in self.nodes if n.changes]


class _LossCurve:
    """Refusals of one kind of room's requests over k interchangeable devices, for every k
    from one replay: with ordered entry (each request takes the lowest-numbered free device,
    and a new one past them where none is free), devices 0..k-1 serve exactly what k devices
    alone would, so a request given device s is refused by every k ≤ s.

    A request taking `units` devices at once (`gpu-N` on the pool's whole GPUs) takes the N
    lowest free ones, and counts as refused by every k up to the highest; for those this is
    an estimate (a real node either has N whole GPUs free or not), which the full replay of
    the chosen layout corrects (`advise`)."""

    def __init__(self, spans: list[tuple[float, float, int, float]]):
        levels = []
        free: list[int] = []
        ends: list[tuple[float, int, list[int]]] = []
        next_device = 0
        for seq, (a, d, units, weight) in enumerate(sorted(spans)):
            while ends and ends[0][0] <= a:
                for device in heapq.heappop(ends)[2]:
                    heapq.heappush(free, device)
            taken = []
            for _ in range(units):
                if free:
                    taken.append(heapq.heappop(free))
                else:
                    taken.append(next_device)
                    next_device += 1
            levels.append((max(taken), units * weight * d))
            heapq.heappush(ends, (a + d, seq, taken))
        levels.sort()
        self.levels = [lv for lv, _ in levels]
        # GPU unit-seconds of the requests from each level up: what k devices refuse.
        self.tail = list(itertools.accumulate((us for _, us in reversed(levels)), initial=0.0))[::-1]
        self.demand = self.tail[0]

    def __call__(self, k: int) -> tuple[int, float]:
        """(requests refused, GPU unit-seconds they asked for) with k devices."""
        i = bisect.bisect_left(self.levels, k)
        return len(self.levels) - i, self.tail[i]


def candidates(gpu: SimGpu, asked: set[tuple], modes: frozenset[str] = frozenset({"whole", "shared", "mig"})
               ) -> list[GpuLayout]:
    """The layouts worth trying on this GPU: its own, whole, shared as asked, and the
    maximal MIG layouts of the profiles asked for on its model; of these, those the engine
    can give a GPU (`modes`). A GPU whose MIG instances are made per request keeps that: it
    has no layout to change."""
    out = [gpu.layout]
    if gpu.layout.mode == "mig-dynamic":
        return out
    if "whole" in modes:
        out.append(WHOLE)
    if "shared" in modes:
        out += [GpuLayout("shared", replicas=r[1]) for r in asked if r[0] == "shared"]
    if gpu.family is not None and "mig" in modes:
        profiles = [r[1] for r in asked if r[0] == "mig" and r[1] in gpu.family.profiles]
        out += [GpuLayout("mig", mig=m) for m in mig_layouts(gpu.family, profiles)]
    seen, unique = set(), []
    for c in out:
        if c not in seen:
            seen.add(c)
            unique.append(c)
    return unique


def advise(cfg: PodbayConfig, gpus: list[SimGpu], requests: Sequence[Request], *,
           holders: Callable[[SimGpu], list[str]] = lambda g: [], since: float = 0.0, until: float = 0.0,
           passes: int = 6, idle_weight: float = IDLE_WEIGHT,
           modes: frozenset[str] | Mapping[str, frozenset[str]] = frozenset({"whole", "shared", "mig"})) -> Advice:
    """The advised layout of every GPU in `gpus` (one pool or several: requests only use
    their profiles' pools), with the replayed refusals before and after."""
    replay = Replay(cfg, [SimGpu(g.node, g.pool, g.index, g.model, g.family, g.layout) for g in gpus], measure=False)
    before = replay.run(requests, "now")
    pools = sorted({g.pool for g in gpus})

    # The requests by the kind of room they take, per pool.
    per_room: dict[tuple, list] = defaultdict(list)
    families = {g.family.key for g in gpus if g.family}
    for r in requests:
        spec, rpools = replay.spec(r.profile)
        if spec.kind == "cpu":
            continue
        for pool in rpools:
            if pool not in pools:
                continue
            if spec.kind == "mig":
                # One room per profile name, whichever models offer it (A100 80GB and H100
                # 80GB share theirs): a request is counted once, however many models have it.
                base = split_ci(spec.mig_profile)[1]
                fam = next((FAMILIES[f] for f in sorted(families) if base in FAMILIES[f].profiles), None)
                if fam is not None:
                    weight = fam.profiles[base].compute_slices / fam.compute_slices
                    per_room[(pool, "mig", base)].append((r.arrival, r.duration, 1, weight))
            elif spec.kind == "shared":
                per_room[(pool, "shared", spec.replicas)].append((r.arrival, r.duration, 1, 1 / spec.replicas))
            else:
                per_room[(pool, "whole")].append((r.arrival, r.duration, spec.count, 1.0))
            break  # a request takes room in its first pool here (as the placement would try)
    curves = {room: _LossCurve(spans) for room, spans in per_room.items()}
    asked = {room[1:] for room in per_room}

    layouts = [g.layout for g in gpus]
    nodes = sorted({g.node for g in gpus})
    node_of = [nodes.index(g.node) for g in gpus]

    def counts(layouts: list[GpuLayout]) -> tuple[Counter, dict[str, list[int]]]:
        devices: Counter = Counter()
        whole: dict[str, list[int]] = {}
        for g, lay in zip(gpus, layouts):
            if lay.mode == "whole":
                whole.setdefault(g.pool, [0] * len(nodes))[nodes.index(g.node)] += 1
            elif lay.mode == "shared":
                devices[(g.pool, "shared", lay.replicas)] += lay.replicas
            elif lay.mode == "mig" and g.family:
                for p in lay.mig:
                    devices[(g.pool, "mig", p)] += 1
        return devices, whole

    # The score of a layout: requests refused, plus the GPU time they asked for (left idle)
    # counted as `idle_weight` refusals per average request's worth of it, so that refusing
    # one month-long request to serve two one-minute ones is not "better".
    asked_for = sum(c.demand for c in curves.values())
    each = asked_for / max(1, sum(len(c.levels) for c in curves.values())) or 1.0

    def refusals(devices: Counter, whole: dict[str, list[int]]) -> float:
        total = 0.0
        for room, curve in curves.items():
            n, unit_seconds = curve(sum(whole.get(room[0], ())) if room[1] == "whole" else devices.get(room, 0))
            total += n + idle_weight * unit_seconds / each
        return total

    devices, whole = counts(layouts)
    best_total = refusals(devices, whole)
    # The layouts each GPU's engine can give it (`modes`: all GPUs', or each pool's).
    options = [candidates(g, asked, modes if isinstance(modes, frozenset) else modes.get(g.pool, frozenset()))
               for g in gpus]
    by_node: dict[int, list[int]] = defaultdict(list)
    for i in range(len(gpus)):
        by_node[node_of[i]].append(i)
    # GPUs nothing runs on are tried first: of two changes that save as much, the one that
    # interrupts nobody is made.
    busy = [len(holders(g)) for g in gpus]
    order = sorted(range(len(gpus)), key=lambda i: (busy[i] > 0, i))
    for _ in range(passes):
        improved = False
        # One GPU at a time.
        for i in order:
            g = gpus[i]
            current = layouts[i]
            choice, choice_total = current, best_total
            for cand in options[i]:
                if cand == current:
                    continue
                d2, w2 = _moved(devices, whole, g, node_of[i], current, cand, len(nodes))
                total = refusals(d2, w2)
                if total < choice_total:
                    choice, choice_total = cand, total
            if choice != current:
                devices, whole = _moved(devices, whole, g, node_of[i], current, choice, len(nodes))
                layouts[i], best_total, improved = choice, choice_total, True
        if improved:
            continue
        # Stuck: several GPUs of one node at once (two more whole GPUs for a gpu-2, where
        # one alone helps nobody), the first t of those without the layout, best t.
        best_move = None
        for node, members in by_node.items():
            members = sorted(members, key=lambda i: (busy[i] > 0, i))
            for cand in {c for i in members for c in options[i]}:
                d2, w2, moved = devices, whole, []
                for i in members:
                    if layouts[i] == cand or cand not in options[i]:
                        continue
                    d2, w2 = _moved(d2, w2, gpus[i], node, layouts[i], cand, len(nodes))
                    moved.append(i)
                    if len(moved) < 2:
                        continue
                    total = refusals(d2, w2)
                    if total < best_total and (best_move is None or total < best_move[0]):
                        best_move = (total, cand, list(moved), d2, w2)
        if best_move is None:
            break
        best_total, cand, moved, devices, whole = best_move
        for i in moved:
            layouts[i] = cand

    advised = [SimGpu(g.node, g.pool, g.index, g.model, g.family, lay) for g, lay in zip(gpus, layouts)]
    after = Replay(cfg, advised, measure=False).run(requests, "advised")
    if (after.refused - idle_weight * after.unit_seconds_held / each
            >= before.refused - idle_weight * before.unit_seconds_held / each - 1e-9):
        # No better than today in the full replay (the search's estimate of whole GPUs can
        # be wrong): change nothing, interrupt nobody.
        layouts, after = [g.layout for g in gpus], before
    result: dict[str, NodeAdvice] = {}
    for g, lay in zip(gpus, layouts):
        node = result.setdefault(g.node, NodeAdvice(g.node, g.pool, []))
        node.gpus.append(GpuAdvice(g.index, g.model, g.layout, lay, holders(g), g.family.key if g.family else None))
    return Advice(since, until, pools, len(requests), before, after, list(result.values()))


def _moved(devices: Counter, whole: dict[str, list[int]], g: SimGpu, node: int, old: GpuLayout, new: GpuLayout,
           n_nodes: int) -> tuple[Counter, dict[str, list[int]]]:
    """The room counts after one GPU goes from `old` to `new` (copies; the inputs stay)."""
    devices = Counter(devices)
    whole = {pool: list(v) for pool, v in whole.items()}
    for lay, sign in ((old, -1), (new, 1)):
        if lay.mode == "whole":
            whole.setdefault(g.pool, [0] * n_nodes)[node] += sign
        elif lay.mode == "shared":
            devices[(g.pool, "shared", lay.replicas)] += sign * lay.replicas
        elif lay.mode == "mig" and g.family:
            for p in lay.mig:
                devices[(g.pool, "mig", p)] += sign
    return devices, whole

