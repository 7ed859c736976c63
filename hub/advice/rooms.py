"""Where each kind of room is during a replay (replay.py), kept as GPUs are taken and given
back, so that a keep-room replay of a large inventory finds the GPU it wants without a scan of
every GPU: whole GPUs by node and how many each has free, shares and fixed MIG slices by how
busy their GPU is, GPUs making MIG instances per request by their state."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .replay import SimGpu


class Buckets:
    """GPUs by how much they hold, so that the busiest one with room is found without a scan:
    held count → the GPUs (an insertion-ordered dict as an ordered set)."""

    def __init__(self):
        self.by_held: dict[int, dict[int, None]] = {}
        self.where: dict[int, int] = {}

    def put(self, i: int, held: int) -> None:
        self.drop(i)
        self.by_held.setdefault(held, {})[i] = None
        self.where[i] = held

    def drop(self, i: int) -> None:
        held = self.where.pop(i, None)
        if held is not None:
            bucket = self.by_held[held]
            del bucket[i]
            if not bucket:
                del self.by_held[held]

    def busiest(self) -> int | None:
        if not self.by_held:
            return None
        bucket = self.by_held[max(self.by_held)]
        return next(iter(bucket))


class Index:
    """Where each kind of room is, kept as GPUs are taken and given back, for a keep-room
    replay of a large inventory: O(kinds) per request instead of a scan of every GPU."""

    def __init__(self, gpus: list[SimGpu]):
        self.gpus = gpus
        # whole: pool → node → free whole GPUs (their indexes, lowest first); and the nodes by
        # how many they have free (best fit: the fewest that fit).
        self.whole: dict[str, dict[str, list[int]]] = {}
        self.whole_by_free: dict[str, dict[int, dict[str, None]]] = {}
        # shared (pool, replicas) and static MIG (pool, profile): the GPUs with room, by held.
        self.rooms: dict[tuple, Buckets] = {}
        # mig-dynamic (pool, family): GPUs by state (used, compute, held) → their indexes.
        self.states: dict[tuple, dict[tuple, dict[int, None]]] = {}
        self.state_of: dict[int, tuple] = {}
        for i, g in enumerate(gpus):
            mode = g.layout.mode
            if mode == "whole":
                self.whole.setdefault(g.pool, {}).setdefault(g.node, []).append(i)
            elif mode == "shared":
                self.rooms.setdefault((g.pool, "shared", g.layout.replicas), Buckets()).put(i, 0)
            elif mode == "mig":
                for p in set(g.layout.mig):
                    self.rooms.setdefault((g.pool, "mig", p), Buckets()).put(i, 0)
            elif mode == "mig-dynamic" and g.family:
                self._set_state(i)
        for pool, nodes in self.whole.items():
            for node, free in nodes.items():
                self.whole_by_free.setdefault(pool, {}).setdefault(len(free), {})[node] = None

    def _set_state(self, i: int) -> None:
        g = self.gpus[i]
        key = (g.pool, g.family.key)
        old = self.state_of.get(i)
        if old is not None:
            members = self.states[key][old]
            del members[i]
            if not members:
                del self.states[key][old]
        state = (g.used, g.compute, g.held)
        self.states.setdefault(key, {}).setdefault(state, {})[i] = None
        self.state_of[i] = state

    # whole GPUs
    def take_whole(self, pool: str, n: int) -> list[int] | None:
        by_free = self.whole_by_free.get(pool, {})
        for count in sorted(c for c in by_free if c >= n):
            node = next(iter(by_free[count]))
            free = self.whole[pool][node]
            taken, self.whole[pool][node] = free[:n], free[n:]
            self._move(pool, node, count, count - n)
            return taken
        return None

    def give_whole(self, i: int) -> None:
        g = self.gpus[i]
        free = self.whole[g.pool][g.node]
        self._move(g.pool, g.node, len(free), len(free) + 1)
        free.append(i)
        free.sort()

    def _move(self, pool: str, node: str, old: int, new: int) -> None:
        by_free = self.whole_by_free[pool]
        del by_free[old][node]
        if not by_free[old]:
            del by_free[old]
        by_free.setdefault(new, {})[node] = None

    # shared slots and fixed MIG slices: the busiest GPU with room
    def busiest(self, key: tuple) -> int | None:
        rooms = self.rooms.get(key)
        return rooms.busiest() if rooms else None

    def changed(self, i: int) -> None:
        """GPU i took or gave back a share or a slice: file it again under what it holds."""
        g = self.gpus[i]
        if g.layout.mode == "shared":
            rooms = self.rooms[(g.pool, "shared", g.layout.replicas)]
            rooms.put(i, g.held) if g.held < g.layout.replicas else rooms.drop(i)
        elif g.layout.mode == "mig":
            for p in set(g.layout.mig):
                rooms = self.rooms[(g.pool, "mig", p)]
                rooms.put(i, g.held) if g.free[p] else rooms.drop(i)
        elif g.layout.mode == "mig-dynamic" and g.family:
            self._set_state(i)
