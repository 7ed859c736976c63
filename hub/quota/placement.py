"""Device placement: which devices a workspace or job gets, where nobody else decides.

On one machine (the local and docker backends) no scheduler or device plugin assigns GPUs,
so podbay picks them from its inventory, inside the quota book's transaction. A backend
whose engine places devices itself (Kubernetes' device plugin, Slurm's GRES) has no
placement: podbay then records only what the request weighs and never sets
`CUDA_VISIBLE_DEVICES`.

The picks keep room for the requests likely to come next, rather than taking the first
device that fits:

- whole GPUs come from the node with the fewest free that still fit (best fit), so nodes
  with many free GPUs stay whole for the big requests;
- a time-sliced share or a MIG slice goes on the GPU already holding the most, so GPUs with
  nothing on them stay empty: free for whole-GPU work, and for a new MIG layout without
  interrupting anyone (`podbay advise`);
- where the MIG instance is made for the request (`free_starts`), the start position is
  the one that costs the fewest likely requests, by the MIG geometry of the GPU's model and
  the mix of profiles people asked for (`Mix`): the fragmentation-gradient idea of FGD
  (Weng et al., USENIX ATC '23), on MIG's fixed slots instead of fractional shares.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from ..config import ProfileKind
from ..gpu import GpuFamily, free_starts, instance_mask, room_for
from ..inventory import Device, Inventory, on_request_key, parse_on_request_key


class Placement(Protocol):
    def pick(self, spec: ProfileKind, pools: list[str], taken: set[tuple[str, str]]) -> list[Device] | None:
        """Free devices for one allocation, or None when none fit."""


# How often each profile is asked for, by profile id (mig-1g.10gb, gpu-2, shared-1/4),
# normalised to sum to 1: what "likely next requests" means.
Mix = Mapping[str, float]


def mix_of(counts: Mapping[str, float], prior: Mapping[str, float] | None = None) -> dict[str, float]:
    """Counts of requests per profile as a mix. The prior (one request each of the profiles
    on offer, say) keeps a profile nobody asked for yet from being worth nothing."""
    total: dict[str, float] = dict(prior or {})
    for p, n in counts.items():
        total[p] = total.get(p, 0.0) + n
    s = sum(total.values())
    return {p: n / s for p, n in total.items()} if s else {}


def mig_room_value(family: GpuFamily, used: int, compute_used: int, mix: Mix) -> float:
    """What a GPU in this state still offers the likely requests: for each MIG profile, its
    share of the mix times the GPU units of the instances of it that still fit."""
    room = room_for(family, used, compute_used)
    value = 0.0
    for name, n in room.items():
        w = mix.get(f"mig-{name}", 0.0)
        if w and n:
            value += w * n * family.profiles[name].compute_slices / family.compute_slices
    return value


class MigGpu(Protocol):
    """A GPU whose MIG instances are made for the requests (what `choose_mig_start` reads)."""

    family: GpuFamily
    used: int  # memory slots taken (gpu.instance_mask)
    compute: int  # compute slices taken
    held: int  # instances on it now


def choose_mig_start(gpus: Sequence[MigGpu], profile: str, mix: Mix, *,
                     keep_room: bool = True) -> tuple[int, int] | None:
    """(the GPU's index in `gpus`, the start slot) for a new instance of `profile`, or None.

    With `keep_room`, the start that loses the least of what the GPUs offer the mix; on a tie
    the busier GPU (empty GPUs stay empty), then the lower index and slot. Without it, the
    first GPU and its first free start: what a placement that does not look ahead does."""
    best: tuple | None = None
    # GPUs in one state lose the same for each start: each state is valued once (a server
    # room of GPUs is a handful of states).
    losses: dict[tuple[str, int, int], list[tuple[float, int]]] = {}
    for i, g in enumerate(gpus):
        spec = g.family.profiles.get(profile)
        if spec is None:
            continue
        if not keep_room:
            starts = free_starts(g.family, profile, g.used, g.compute)
            if starts:
                return i, starts[0]
            continue
        state = (g.family.key, g.used, g.compute)
        if state not in losses:
            before = mig_room_value(g.family, g.used, g.compute, mix)
            losses[state] = [(round(before - mig_room_value(g.family, g.used | instance_mask(spec, s),
                                                             g.compute + spec.compute_slices, mix), 12), s)
                             for s in free_starts(g.family, profile, g.used, g.compute)]
        for loss, s in losses[state]:
            key = (loss, -g.held, i, s)
            if best is None or key < best[0]:
                best = (key, i, s)
    return None if best is None else (best[1], best[2])


@dataclass
class OnRequestGpu:
    """A GPU whose MIG instances are made per request, as the quota book's claims leave it."""

    node: str
    pool: str
    uuid: str
    family: GpuFamily
    used: int = 0
    compute: int = 0
    held: int = 0
    # The claims on it, by profile.
    by_profile: dict[str, int] = field(default_factory=dict)


def on_request_gpus(inventory: Inventory, taken, only_held: bool = False) -> dict[tuple[str, str], OnRequestGpu]:
    """The on-request GPUs of the inventory, (node, GPU UUID) → its state under `taken`
    (with `only_held`: only those holding something)."""
    info = inventory.on_request_info
    gpus: dict[tuple[str, str], OnRequestGpu] = {}
    for node, key in taken:
        parsed = parse_on_request_key(key)
        if parsed is None or (node, parsed[0]) not in info:
            continue
        g = gpus.get((node, parsed[0]))
        if g is None:
            pool, family = info[(node, parsed[0])]
            g = gpus[(node, parsed[0])] = OnRequestGpu(node, pool, parsed[0], family)
        spec = g.family.profiles.get(parsed[1])
        if spec is None:
            continue
        g.used |= instance_mask(spec, parsed[2])
        g.compute += spec.compute_slices
        g.held += 1
        g.by_profile[parsed[1]] = g.by_profile.get(parsed[1], 0) + 1
    if not only_held:
        for (node, uuid), (pool, family) in info.items():
            gpus.setdefault((node, uuid), OnRequestGpu(node, pool, uuid, family))
    return gpus


def gpu_of(d: Device) -> str:
    """The UUID of the GPU a device is on: a MIG slice's parent, a share's or a whole GPU's own."""
    return d.parent_uuid or d.visible_id


class DevicePlacement:
    """Placement from the inventory: the quota book's claims say what is taken.

    `mix` tells what people ask for (the portal gives the recorded demand's); without it
    every MIG profile counts the same."""

    def __init__(self, inventory: Inventory, mix: Callable[[], Mix] | None = None):
        self.inventory = inventory
        self.mix = mix

    def pick(self, spec: ProfileKind, pools: list[str], taken: set[tuple[str, str]]) -> list[Device] | None:
        if spec.kind == "cpu":
            return []
        # (Devices made on request are chosen by their GPU's state, below.)
        free = [d for d in self.inventory.candidates(spec, pools, made=False) if (d.node, d.key) not in taken]
        if spec.kind == "full":
            per_node: dict[str, list[Device]] = {}
            for d in free:
                per_node.setdefault(d.node, []).append(d)
            fitting = [ds for ds in per_node.values() if len(ds) >= spec.count]
            if not fitting:
                return None
            best = min(fitting, key=len)
            return sorted(best, key=lambda d: d.gpu_index)[: spec.count]
        # A slice that exists costs nothing to give: those first, then one made on request.
        if free:
            held = self._held_per_gpu(taken)
            return [min(free, key=lambda d: (-held.get((d.node, gpu_of(d)), 0), d.node, d.gpu_index, d.key))]
        if spec.kind == "mig":
            return self._pick_on_request(spec, pools, taken)
        return None

    def _pick_on_request(self, spec: ProfileKind, pools: list[str], taken) -> list[Device] | None:
        """The start, on the GPUs whose instances are made per request, that loses the least
        room for what people ask for (choose_mig_start)."""
        wanted = self.inventory.on_request_for(spec, pools)
        if not wanted:
            return None
        profile = spec.mig_profile
        states = on_request_gpus(self.inventory, taken, only_held=True)
        # GPUs holding nothing are all alike: the first of each model stands for them (the
        # choice would fall on it: it comes first of equals).
        gpus, empty = [], set()
        for k in wanted:
            if k in states:
                gpus.append(states[k])
            elif (family := self.inventory.on_request_info[k][1]).key not in empty:
                empty.add(family.key)
                gpus.append(OnRequestGpu(k[0], self.inventory.on_request_info[k][0], k[1], family))
        mix = self.mix() if self.mix is not None else {}
        if not mix:
            mix = mix_of({}, {f"mig-{p}": 1.0 for f in {g.family.key: g.family for g in gpus}.values()
                              for p in f.profiles})
        chosen = choose_mig_start(gpus, profile, mix)
        if chosen is None:
            return None
        g = gpus[chosen[0]]
        return [self.inventory.by_key[(g.node, on_request_key(g.uuid, profile, chosen[1]))]]

    def _held_per_gpu(self, taken: set[tuple[str, str]]) -> dict[tuple[str, str], int]:
        """How many claims each GPU holds, a MIG slice's or a share's counted for its GPU."""
        held: dict[tuple[str, str], int] = {}
        for node, key in taken:
            d = self.inventory.by_key.get((node, key))
            gpu = (node, gpu_of(d) if d else key.split("::")[0])
            held[gpu] = held.get(gpu, 0) + 1
        return held
