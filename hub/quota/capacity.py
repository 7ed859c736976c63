"""Capacity sources: what is free, per backend, for the spawn form, `catalog`, `capacity`,
the TUI and the checks of a job's size.

A backend gives one (`Backend.capacity`). On one machine it is the inventory and the quota
book's device claims (`InventoryCapacity`); a cluster backend answers from the cluster's
own view (Kubernetes' nodes and pods, Slurm's partitions and GRES). Answers are memoised
per version of the quota book's snapshot, so a page of profiles costs one small query.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from fractions import Fraction

from ..config import ProfileKind
from ..gpu import room_for
from ..inventory import Inventory, mig_weight
from .book import Snapshot
from .placement import on_request_gpus


@dataclass
class Usage:
    total: int
    used: int
    free: int


@dataclass
class NodeState:
    """A node of a pool whose devices the engine places, as the capacity page draws it: its
    whole GPUs and how many are taken, in the engine's words for its state."""

    name: str
    state: str
    gpus: int
    gpus_used: int
    reason: str = ""

    @property
    def usable(self) -> bool:
        """Takes new work (an engine with states such as drained says otherwise)."""
        return True


class CapacitySource(ABC):
    """What is free, for the form, the API, the capacity page and the TUI. Every member the
    core calls is declared here: abstract where each engine must answer, with a default where
    one engine's answer is "nothing to say"."""

    @abstractmethod
    def unit_weight(self, spec: ProfileKind, pools: list[str]) -> Fraction:
        """GPU units one workspace of this profile weighs."""

    @abstractmethod
    def counts(self, spec: ProfileKind, pools: list[str], snap: Snapshot) -> tuple[int, int]:
        """(total, free) workspaces of this profile in these pools; -1 free means unlimited."""

    @abstractmethod
    def devices(self, pool: str, snap: Snapshot) -> dict[str, Usage]:
        """Devices of a pool by kind (`gpu`, `mig-1g.10gb`, `shared-1/4`): total, used, free."""

    @abstractmethod
    def most_gpus_per_node(self, pool: str) -> int:
        """The most whole GPUs one node of the pool has: the largest `gpus_per_node` a job
        there can ever get."""

    def shortage(self, spec: ProfileKind, pools: list[str]) -> str | None:
        """Why one more workspace of this profile cannot start now, where the engine places
        (the claim cannot find out by picking devices); None when it may."""
        return None

    def node_states(self, pool: str) -> list[NodeState]:
        """The nodes of a pool where the engine places devices (the capacity page draws
        them); [] where podbay's inventory does (its devices are drawn from the book)."""
        return []


class PoolCapacities(CapacitySource):
    """The backend's capacity source for most pools, another engine's for the pools it runs
    (pools.<name>.engine: a Slurm training pool beside docker or local workspaces)."""

    def __init__(self, main: CapacitySource, pools: dict[str, CapacitySource]):
        self.main, self.pools = main, pools

    def of(self, pool: str) -> CapacitySource:
        return self.pools.get(pool, self.main)

    def _split(self, pools: list[str]) -> list[tuple[CapacitySource, list[str]]]:
        groups: list[tuple[CapacitySource, list[str]]] = []
        for pool in pools:
            source = self.of(pool)
            for known, names in groups:
                if known is source:
                    names.append(pool)
                    break
            else:
                groups.append((source, [pool]))
        return groups

    def unit_weight(self, spec, pools):
        # The backend's own pools weigh a workspace where they are among them (the inventory
        # knows the devices), whatever the order.
        groups = self._split(pools)
        source, names = next(((src, n) for src, n in groups if src is self.main), groups[0] if groups else (self.main, []))
        return source.unit_weight(spec, names)

    def counts(self, spec, pools, snap):
        total = free = 0
        for source, names in self._split(pools):
            t, f = source.counts(spec, names, snap)
            if t == -1 or f == -1:
                return (-1, -1)
            total, free = total + t, free + f
        return total, free

    def devices(self, pool, snap):
        return self.of(pool).devices(pool, snap)

    def most_gpus_per_node(self, pool):
        return self.of(pool).most_gpus_per_node(pool)

    def shortage(self, spec, pools):
        return next((why for source, names in self._split(pools) if (why := source.shortage(spec, names))), None)

    def node_states(self, pool):
        return self.of(pool).node_states(pool)


def default_weight(spec: ProfileKind) -> Fraction:
    """A profile's weight without a declared device to ask: full = count, shared =
    1/replicas, MIG = its compute slices in the common 7-slice geometry."""
    if spec.kind == "cpu":
        return Fraction(0)
    if spec.kind == "full":
        return Fraction(spec.count)
    if spec.kind == "shared":
        return Fraction(1, spec.replicas)
    return mig_weight("", None, spec.mig_profile)


class InventoryCapacity(CapacitySource):
    """The local and docker backends: the declared (or discovered) inventory, minus what the
    quota book's claims hold."""

    def __init__(self, inventory: Inventory):
        self.inventory = inventory

    def unit_weight(self, spec, pools):
        if spec.kind in ("mig", "shared"):
            cands = self.inventory.candidates(spec, pools)
            if cands:
                return cands[0].weight  # the model's own geometry (A30 has 4 slices)
        return default_weight(spec)

    def _free(self, spec: ProfileKind, pools: list[str], taken) -> int:
        if spec.kind == "cpu":
            return -1  # unlimited
        cands = self.inventory.candidates(spec, pools)
        free = [d for d in cands if (d.node, d.key) not in taken and not d.on_request]
        if spec.kind != "full":
            made = 0
            if wanted := self.inventory.on_request_for(spec, pools):
                # GPUs whose instances are made per request: how many more fit, by their geometry.
                states = on_request_gpus(self.inventory, taken)
                made = sum(room_for(states[k].family, states[k].used, states[k].compute)[spec.mig_profile]
                           for k in wanted)
            return len(free) + made
        per_node: dict[str, int] = {}
        for d in free:
            per_node[d.node] = per_node.get(d.node, 0) + 1
        return sum(n // spec.count for n in per_node.values())

    def counts(self, spec, pools, snap):
        key = ("counts", spec, tuple(pools))
        if key not in snap.memo:
            snap.memo[key] = (self._free(spec, pools, frozenset()), self._free(spec, pools, snap.taken))
        return snap.memo[key]

    def devices(self, pool, snap):
        out: dict[str, Usage] = {}
        for g in on_request_gpus(self.inventory, snap.taken).values():
            if g.pool != pool:
                continue
            # Each profile: the instances held, and how many more would fit now.
            for name, room in room_for(g.family, g.used, g.compute).items():
                row = out.setdefault(f"mig-{name}", Usage(0, 0, 0))
                used = g.by_profile.get(name, 0)
                row.total, row.used, row.free = row.total + used + room, row.used + used, row.free + room
        for d in self.inventory.devices:
            if d.pool != pool or d.on_request:
                continue
            kind = {"full": "gpu", "mig": f"mig-{d.mig_profile}", "shared": f"shared-1/{d.replicas}"}[d.kind]
            row = out.setdefault(kind, Usage(0, 0, 0))
            row.total += 1
            if (d.node, d.key) in snap.taken:
                row.used += 1
            else:
                row.free += 1
        return out

    def most_gpus_per_node(self, pool):
        per_node: dict[str, int] = {}
        for d in self.inventory.devices:
            if d.pool == pool and d.kind == "full":
                per_node[d.node] = per_node.get(d.node, 0) + 1
        return max(per_node.values(), default=0)
