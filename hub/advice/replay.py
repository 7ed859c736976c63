"""Replaying a demand trace against an inventory: how many requests a placement and a layout
would have refused, how many GPU units they held, and how fragmented the free room was.

The model is the one the local and docker backends place on (quota/placement.py), per GPU:

- `whole`: one whole-GPU device (`gpu-N` takes N of them on one node);
- `shared`: `replicas` time-sliced slots (`shared-1/<replicas>`);
- `mig`: a fixed MIG layout, a count of devices per profile (what mig-parted applied);
- `mig-dynamic`: MIG mode on with the instances made per request, at start positions the
  GPU model's geometry allows (gpu.free_starts).

A request that finds no room is refused at once (a workspace start: people do not queue for
a workspace; they pick something else or come back), and never placed later.

Long because: one replay holds both placements compared (first fit by a scan, podbay's from
the index in rooms.py, which must choose as the placement does) and what it measures on the
way (units held, fragmentation); apart, each would need the replay's state passed around.
"""

from __future__ import annotations

import heapq
import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Literal

from ..config import PodbayConfig, ProfileKind, parse_profile_id, split_ci
from ..gpu import GpuFamily, family_for, instance_mask, room_for
from ..inventory import Device
from ..quota.placement import choose_mig_start, mig_room_value, mix_of
from .rooms import Index
from .trace import Request

Mode = Literal["whole", "shared", "mig", "mig-dynamic"]
Policy = Literal["first-fit", "podbay"]


@dataclass(frozen=True)
class GpuLayout:
    """How one GPU is offered."""

    mode: Mode
    replicas: int = 0
    # mode mig: the instances' profiles (1g.10gb, …), as mig-parted's mig-devices counts:
    # kept sorted, so that one layout is one value whatever order it was declared in.
    mig: tuple[str, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "mig", tuple(sorted(self.mig)))

    def __str__(self) -> str:
        if self.mode == "shared":
            return f"shared 1/{self.replicas}"
        if self.mode == "mig":
            return "mig " + "+".join(f"{n}x{p}" for p, n in sorted(Counter(self.mig).items()))
        return self.mode


WHOLE = GpuLayout("whole")
DYNAMIC = GpuLayout("mig-dynamic")


@dataclass
class SimGpu:
    node: str
    pool: str
    index: int
    model: str
    family: GpuFamily | None
    layout: GpuLayout
    # whole: 1 when taken; shared: slots taken; mig: instances held.
    held: int = 0
    # mig: free devices per profile.
    free: Counter = field(default_factory=Counter)
    # mig-dynamic: memory slots and compute slices taken.
    used: int = 0
    compute: int = 0

    def reset(self) -> None:
        self.held, self.used, self.compute = 0, 0, 0
        self.free = Counter(self.layout.mig) if self.layout.mode == "mig" else Counter()


def gpus_from_devices(devices: Iterable[Device]) -> list[SimGpu]:
    """The GPUs of an inventory's devices, each with the layout it is offered in now."""
    by_gpu: dict[tuple[str, int], list[Device]] = {}
    for d in devices:
        by_gpu.setdefault((d.node, d.gpu_index), []).append(d)
    out = []
    for (node, index), ds in by_gpu.items():
        first = ds[0]
        if first.on_request:
            layout = DYNAMIC
        elif first.kind == "mig":
            layout = GpuLayout("mig", mig=tuple(d.mig_profile for d in ds))
        elif first.kind == "shared":
            layout = GpuLayout("shared", replicas=first.replicas)
        else:
            layout = WHOLE
        gpu = SimGpu(node, first.pool, index, first.model, family_for(first.model, first.memory_mib), layout)
        gpu.reset()
        out.append(gpu)
    return out


def gpus_of(cfg: PodbayConfig, layouts: Callable[["SimGpu"], GpuLayout] | None = None) -> list[SimGpu]:
    """The inventory's GPUs as podbay.yaml declares them (`discover` nodes: as NVML finds
    them), each with the layout `layouts` gives it, else its own."""
    from ..inventory import Inventory

    out = gpus_from_devices(Inventory.from_config(cfg).devices)
    if layouts is not None:
        for gpu in out:
            gpu.layout = layouts(gpu)
            gpu.reset()
    return out


@dataclass
class Result:
    policy: str
    layout: str
    requests: int = 0
    refused: int = 0
    refused_by_profile: Counter = field(default_factory=Counter)
    # GPU units held, integrated over the replay (unit-seconds), and the capacity's.
    unit_seconds_held: float = 0.0
    unit_seconds: float = 0.0
    # GPU units free but of no use to the likely requests, averaged over the arrivals.
    fragmentation: float = 0.0
    # Which request got which GPUs (index into the request list → GPU indexes), for tests.
    placed: dict[int, tuple[int, ...]] = field(default_factory=dict)

    @property
    def refused_share(self) -> float:
        return self.refused / self.requests if self.requests else 0.0

    @property
    def held_share(self) -> float:
        return self.unit_seconds_held / self.unit_seconds if self.unit_seconds else 0.0


class Replay:
    """One replay of a trace over a list of GPUs with one policy."""

    def __init__(self, cfg: PodbayConfig, gpus: list[SimGpu], policy: Policy = "podbay",
                 prior: Mapping[str, float] | None = None, measure: bool = True):
        self.cfg, self.gpus, self.policy = cfg, gpus, policy
        self.keep_room = policy == "podbay"
        # Fragmentation at every arrival looks at every GPU: for the benchmark's comparisons,
        # not for advice over a large cluster.
        self.measure = measure
        self.index: Index | None = None
        # The likely next requests: one of each profile on offer, then what was asked so far
        # (placement never looks at what comes later in the trace).
        self.prior = dict(prior) if prior is not None else {p.id: 1.0 for p in cfg.profiles if p.spec.kind != "cpu"}
        self.by_node: dict[str, list[int]] = {}
        for i, g in enumerate(gpus):
            self.by_node.setdefault(g.node, []).append(i)
        self._specs: dict[str, tuple[ProfileKind, tuple[str, ...]]] = {}
        self._bases: dict[str, tuple[int | None, str]] = {}
        # Whether any GPU makes MIG instances per request: only then does a placement need
        # the mix of likely requests (and the fragmentation measure does).
        self.dynamic = any(g.layout.mode == "mig-dynamic" for g in gpus)

    def spec(self, profile: str) -> tuple[ProfileKind, tuple[str, ...]]:
        """A profile's kind and pools: the catalog's, or all pools for a bare kind."""
        if profile not in self._specs:
            p = self.cfg.profile(profile)
            spec = parse_profile_id(profile)
            pools = tuple(p.pools) if p else tuple({g.pool for g in self.gpus})
            self._specs[profile] = (spec, pools)
        return self._specs[profile]

    def weight(self, spec: ProfileKind, gpu: SimGpu) -> float:
        """GPU units one device of this kind weighs on this GPU (a float: a replay's sums are
        statistics, not a quota)."""
        if spec.kind == "full":
            return 1.0
        if spec.kind == "shared":
            return 1.0 / spec.replicas
        if spec.kind == "mig" and gpu.family:
            ci, base = self.base(spec)
            return (ci or gpu.family.profiles[base].compute_slices) / gpu.family.compute_slices
        return 0.0

    def base(self, spec: ProfileKind) -> tuple[int | None, str]:
        """A MIG profile's compute instance count and GPU instance profile (split_ci), cached."""
        found = self._bases.get(spec.mig_profile)
        if found is None:
            found = self._bases[spec.mig_profile] = split_ci(spec.mig_profile)
        return found

    # --- placing ------------------------------------------------------------------------

    def place(self, spec: ProfileKind, pools: tuple[str, ...], mix: Mapping[str, float]) -> list[tuple[int, object]] | None:
        """[(gpu index, what it holds there)] or None: refused."""
        if spec.kind == "cpu":
            return []
        if self.index is not None:
            return self._place_indexed(spec, pools, mix)
        if spec.kind == "full":
            return self._place_whole(spec.count, pools)
        if spec.kind == "shared":
            free = [i for i, g in enumerate(self.gpus) if g.pool in pools and g.layout.mode == "shared"
                    and g.layout.replicas == spec.replicas and g.held < spec.replicas]
            if not free:
                return None
            i = min(free, key=lambda i: (-self.gpus[i].held, i)) if self.keep_room else free[0]
            return [(i, None)]
        return self._place_mig(self.base(spec)[1], pools, mix)

    def _place_indexed(self, spec: ProfileKind, pools: tuple[str, ...], mix: Mapping[str, float]):
        """What `place` does with keep_room, from the index: the same choices, found faster
        (on a tie between best-fit nodes or equally busy GPUs, the index's order decides)."""
        index = self.index
        for pool in pools:
            if spec.kind == "full":
                taken = index.take_whole(pool, spec.count)
                if taken is not None:
                    return [(i, None) for i in taken]
            elif spec.kind == "shared":
                i = index.busiest((pool, "shared", spec.replicas))
                if i is not None:
                    return [(i, None)]
            else:
                profile = self.base(spec)[1]
                i = index.busiest((pool, "mig", profile))
                if i is not None:
                    return [(i, ("static", profile))]
        if spec.kind != "mig" or not self.dynamic:
            return None
        profile = self.base(spec)[1]
        # One GPU of each state stands for all GPUs in it (the same starts, the same loss).
        best = None
        for pool in pools:
            for (p, fam), states in index.states.items():
                if p != pool:
                    continue
                for state, members in states.items():
                    i = next(iter(members))
                    at = choose_mig_start([self.gpus[i]], profile, mix)
                    if at is None:
                        continue
                    g = self.gpus[i]
                    spec_p = g.family.profiles[profile]
                    loss = (mig_room_value(g.family, g.used, g.compute, mix)
                            - mig_room_value(g.family, g.used | instance_mask(spec_p, at[1]),
                                             g.compute + spec_p.compute_slices, mix))
                    key = (round(loss, 12), -g.held, min(members), at[1])
                    if best is None or key < best[0]:
                        best = (key, min(members), at[1])
            if best is not None:
                return [(best[1], ("dynamic", profile, best[2]))]
        return None

    def _place_whole(self, n: int, pools: tuple[str, ...]) -> list[tuple[int, object]] | None:
        fitting = []
        for node, idx in self.by_node.items():
            free = [i for i in idx if self.gpus[i].pool in pools and self.gpus[i].layout.mode == "whole"
                    and not self.gpus[i].held]
            if len(free) >= n:
                fitting.append(free)
                if not self.keep_room:
                    break
        if not fitting:
            return None
        best = min(fitting, key=len) if self.keep_room else fitting[0]
        return [(i, None) for i in best[:n]]

    def _place_mig(self, profile: str, pools: tuple[str, ...], mix: Mapping[str, float]):
        static = [i for i, g in enumerate(self.gpus) if g.pool in pools and g.layout.mode == "mig" and g.free[profile]]
        dynamic = [i for i, g in enumerate(self.gpus) if g.pool in pools and g.layout.mode == "mig-dynamic"
                   and g.family and profile in g.family.profiles]
        if not self.keep_room:
            # In inventory order, whatever kind of MIG GPU comes first.
            for i in sorted(static + dynamic):
                if i in static:
                    return [(i, ("static", profile))]
                at = choose_mig_start([self.gpus[i]], profile, mix, keep_room=False)
                if at is not None:
                    return [(i, ("dynamic", profile, at[1]))]
            return None
        if static:
            # A slice of a fixed layout serves no other profile: use it before making one.
            i = min(static, key=lambda i: (-self.gpus[i].held, i))
            return [(i, ("static", profile))]
        at = choose_mig_start([self.gpus[i] for i in dynamic], profile, mix, keep_room=True)
        if at is None:
            return None
        return [(dynamic[at[0]], ("dynamic", profile, at[1]))]

    def _take(self, i: int, what) -> None:
        g = self.gpus[i]
        g.held += 1
        if what and what[0] == "static":
            g.free[what[1]] -= 1
        elif what and what[0] == "dynamic":
            spec = g.family.profiles[what[1]]
            g.used |= instance_mask(spec, what[2])
            g.compute += spec.compute_slices
        if self.index is not None and g.layout.mode != "whole":
            self.index.changed(i)

    def _give_back(self, i: int, what) -> None:
        g = self.gpus[i]
        g.held -= 1
        if what and what[0] == "static":
            g.free[what[1]] += 1
        elif what and what[0] == "dynamic":
            spec = g.family.profiles[what[1]]
            g.used &= ~instance_mask(spec, what[2])
            g.compute -= spec.compute_slices
        if self.index is not None:
            if g.layout.mode == "whole":
                self.index.give_whole(i)
            else:
                self.index.changed(i)

    # --- measuring ----------------------------------------------------------------------

    def capacity_units(self) -> Fraction:
        return Fraction(len(self.gpus))

    def free_units(self, g: SimGpu) -> Fraction:
        if g.layout.mode == "whole":
            return Fraction(0 if g.held else 1)
        if g.layout.mode == "shared":
            return Fraction(g.layout.replicas - g.held, g.layout.replicas)
        if g.layout.mode == "mig":
            fam = g.family
            return sum((Fraction(fam.profiles[p].compute_slices, fam.compute_slices) * n
                        for p, n in g.free.items() if n and fam), Fraction(0))
        return Fraction(g.family.compute_slices - g.compute, g.family.compute_slices) if g.family else Fraction(0)

    def fragmentation(self, mix: Mapping[str, float]) -> float:
        """GPU units that are free but that the likely next request could not use, in
        expectation over the mix (FGD's measure, per profile kind)."""
        free_total = float(sum((self.free_units(g) for g in self.gpus), Fraction(0)))
        if not free_total:
            return 0.0
        frag = 0.0
        for profile, share in mix.items():
            spec, pools = self.spec(profile)
            frag += share * (free_total - self._usable(spec, pools))
        return frag

    def _usable(self, spec: ProfileKind, pools: tuple[str, ...]) -> float:
        """Free GPU units that requests of this kind alone could still take."""
        if spec.kind == "cpu":
            return 0.0
        if spec.kind == "full":
            total = 0
            for idx in self.by_node.values():
                free = sum(1 for i in idx if self.gpus[i].pool in pools and self.gpus[i].layout.mode == "whole"
                           and not self.gpus[i].held)
                total += free // spec.count * spec.count
            return float(total)
        usable = 0.0
        for g in self.gpus:
            if g.pool not in pools:
                continue
            if spec.kind == "shared" and g.layout.mode == "shared" and g.layout.replicas == spec.replicas:
                usable += (g.layout.replicas - g.held) / g.layout.replicas
            elif spec.kind == "mig" and g.family:
                base = split_ci(spec.mig_profile)[1]
                p = g.family.profiles.get(base)
                if p is None:
                    continue
                if g.layout.mode == "mig":
                    usable += g.free[base] * p.compute_slices / g.family.compute_slices
                elif g.layout.mode == "mig-dynamic":
                    usable += room_for(g.family, g.used, g.compute)[base] * p.compute_slices / g.family.compute_slices
        return usable

    # --- the replay ---------------------------------------------------------------------

    def run(self, requests: Sequence[Request], layout_name: str = "") -> Result:
        for g in self.gpus:
            g.reset()
        self.index = Index(self.gpus) if self.keep_room else None
        result = Result(self.policy, layout_name, requests=len(requests))
        if not requests:
            return result
        seen: Counter = Counter()
        ends: list[tuple[float, int, list]] = []
        held = 0.0
        last = requests[0].arrival
        frag_sum = 0.0
        needs_mix = self.dynamic or self.measure
        mix = mix_of(seen, self.prior) if needs_mix else {}

        def advance(to: float) -> None:
            """Give back what ended by `to`, each at its own time, counting what was held."""
            nonlocal held, last
            while ends and ends[0][0] <= to:
                t, _, taken = heapq.heappop(ends)
                result.unit_seconds_held += held * (t - last)
                last = t
                for i, what, w in taken:
                    self._give_back(i, what)
                    held -= w
            if to != math.inf:
                result.unit_seconds_held += held * (to - last)
                last = to

        for n, r in enumerate(requests):
            advance(r.arrival)
            spec, pools = self.spec(r.profile)
            if spec.kind != "cpu" and self.measure:
                frag_sum += self.fragmentation(mix)
            placed = self.place(spec, pools, mix)
            if placed is None:
                result.refused += 1
                result.refused_by_profile[r.profile] += 1
            else:
                taken = []
                for i, what in placed:
                    w = self.weight(spec, self.gpus[i])
                    self._take(i, what)
                    held += w
                    taken.append((i, what, w))
                result.placed[n] = tuple(i for i, _ in placed)
                heapq.heappush(ends, (r.arrival + r.duration, n, taken))
            if needs_mix:
                seen[r.profile] += 1
                mix = mix_of(seen, self.prior)
        advance(math.inf)
        span = last - requests[0].arrival
        result.unit_seconds = float(self.capacity_units()) * span
        gpu_requests = sum(1 for r in requests if self.spec(r.profile)[0].kind != "cpu")
        result.fragmentation = frag_sum / gpu_requests if gpu_requests else 0.0
        return result


def replay(cfg: PodbayConfig, requests: Sequence[Request], policy: Policy = "podbay",
           layouts: Callable[[SimGpu], GpuLayout] | None = None, layout_name: str = "as configured") -> Result:
    return Replay(cfg, gpus_of(cfg, layouts), policy).run(requests, layout_name)
