"""The fewest refusals any placement could have had on a trace: a proven lower bound.

An offline placer that knew every arrival in advance, could refuse a request to keep room
for later ones, and could move nothing once placed, refuses at least as many requests as the
optimum of this mixed-integer program, which relaxes the GPUs to pools of slices:

- one variable per (request, kind of room it may take), 0 or 1, and each request takes at
  most one;
- at every arrival, the requests holding room of one kind fit its capacity: whole GPUs
  (`gpu-N` weighs N), a fixed layout's devices of one MIG profile, a shared GPU's slots, and
  for GPUs whose MIG instances are made per request, their compute slices and memory slots
  together, and each profile's instances at most its instances per GPU times the GPUs.

Every real placement satisfies these (geometry, nodes and whole GPUs only forbid more), so the
program's optimum, or HiGHS's dual bound when the time limit ends the search first, bounds
the refusals from below. Only for the replay's benchmark: scipy is a test dependency.
"""

from __future__ import annotations

import heapq
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from ..config import split_ci
from ..gpu import FAMILIES
from .replay import Replay, SimGpu
from .trace import Request


@dataclass
class Bound:
    refused: int  # at least this many requests are refused by any placement
    optimal: bool  # the program was solved to optimality (else: HiGHS's dual bound)
    seconds: float


def _rooms(gpus: Sequence[SimGpu]) -> dict[tuple, int]:
    """Kinds of room and how many GPUs (or devices, slots) of each."""
    rooms: dict[tuple, int] = defaultdict(int)
    for g in gpus:
        mode = g.layout.mode
        if mode == "whole":
            rooms[("whole", g.pool)] += 1
        elif mode == "shared":
            rooms[("shared", g.pool, g.layout.replicas)] += g.layout.replicas
        elif mode == "mig":
            for p in g.layout.mig:
                rooms[("mig", g.pool, p)] += 1
        elif mode == "mig-dynamic" and g.family:
            rooms[("dynamic", g.pool, g.family.key)] += 1
    return rooms


def _options(spec, pools: Sequence[str], rooms: dict[tuple, int]) -> list[tuple[tuple, list[tuple[tuple, int, int]]]]:
    """The kinds of room a request of `spec` may take, each with the limits it counts
    against: (limit, capacity, what one such request weighs)."""
    out = []
    for room, count in rooms.items():
        kind, pool = room[0], room[1]
        if pool not in pools:
            continue
        if spec.kind == "full" and kind == "whole" and spec.count <= count:
            out.append((room, [((room, "gpus"), count, spec.count)]))
        elif spec.kind == "shared" and kind == "shared" and room[2] == spec.replicas:
            out.append((room, [((room, "devices"), count, 1)]))
        elif spec.kind == "mig":
            base = split_ci(spec.mig_profile)[1]
            if kind == "mig" and room[2] == base:
                out.append((room, [((room, "devices"), count, 1)]))
            elif kind == "dynamic" and base in FAMILIES[room[2]].profiles:
                fam = FAMILIES[room[2]]
                p = fam.profiles[base]
                out.append((room, [((room, "compute"), count * fam.compute_slices, p.compute_slices),
                                   ((room, "memory"), count * fam.memory_slices, p.memory_slices),
                                   ((room, p.name), count * p.max_instances, 1)]))
    return out


def refusal_bound(replay: Replay, requests: Sequence[Request], time_limit: float = 60.0) -> Bound:
    import time

    import numpy as np
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import coo_array

    t0 = time.perf_counter()
    rooms = _rooms(replay.gpus)
    # Variables: (request, room) pairs the request may take, with the room's limits.
    variables: list[tuple[int, list[tuple[tuple, int, int]]]] = []
    for n, r in enumerate(requests):
        spec, pools = replay.spec(r.profile)
        if spec.kind != "cpu":
            variables += [(n, weights) for _, weights in _options(spec, pools, rooms)]
    if not variables:
        gpu = sum(1 for r in requests if replay.spec(r.profile)[0].kind != "cpu")
        return Bound(gpu, True, time.perf_counter() - t0)

    # Capacity rows: one per (limit, arrival of a request that may take that room).
    # A limit is (room, what is counted): weights per variable.
    limits: dict[tuple, tuple[float, dict[int, float]]] = {}
    for v, (_, weights) in enumerate(variables):
        for limit, cap, w in weights:
            limits.setdefault(limit, (cap, {}))[1][v] = w

    rows, cols, vals, upper = [], [], [], []
    row = 0
    for cap, members in limits.values():
        # A sweep over the members' arrivals: at each, the members holding room then. A
        # request of no duration holds its room at its own arrival.
        spans = sorted((requests[variables[v][0]].arrival,
                        max(requests[variables[v][0]].arrival + requests[variables[v][0]].duration,
                            math.nextafter(requests[variables[v][0]].arrival, math.inf)), v, w)
                       for v, w in members.items())
        active: dict[int, float] = {}
        ends: list[tuple[float, int]] = []
        i = 0
        while i < len(spans):
            t = spans[i][0]
            while i < len(spans) and spans[i][0] == t:
                _, end, v, w = spans[i]
                active[v] = w
                heapq.heappush(ends, (end, v))
                i += 1
            while ends and ends[0][0] <= t:
                active.pop(heapq.heappop(ends)[1], None)
            if sum(active.values()) <= cap:
                continue  # this row could never bind
            for v, w in active.items():
                rows.append(row)
                cols.append(v)
                vals.append(w)
            upper.append(cap)
            row += 1
    # Each request takes one room at most.
    per_request: dict[int, list[int]] = defaultdict(list)
    for v, (n, _) in enumerate(variables):
        per_request[n].append(v)
    for vs in per_request.values():
        if len(vs) > 1:
            for v in vs:
                rows.append(row)
                cols.append(v)
                vals.append(1)
            upper.append(1)
            row += 1
    a = coo_array((vals, (rows, cols)), shape=(row, len(variables))).tocsr()
    res = milp(c=-np.ones(len(variables)), constraints=LinearConstraint(a, -np.inf, np.array(upper, dtype=float)),
               integrality=np.ones(len(variables)), bounds=Bounds(0, 1),
               options={"time_limit": time_limit, "disp": False})
    gpu_requests = sum(1 for r in requests if replay.spec(r.profile)[0].kind != "cpu")
    optimal = res.status == 0
    if optimal:
        accepted = round(-res.fun)
    else:
        # The search stopped: what HiGHS proved no placement can beat.
        dual = getattr(res, "mip_dual_bound", None)
        if dual is None or not np.isfinite(dual):
            raise RuntimeError(f"the bound's program was not solved: {res.message}")
        accepted = int(np.floor(-dual + 1e-6))
    return Bound(gpu_requests - accepted, optimal, time.perf_counter() - t0)


def unfragmented_refusals(replay: Replay, requests: Sequence[Request]) -> int:
    """The refusals of a placer that accepts every request it has room for (as podbay and
    first-fit do) on GPUs that never fragment: each kind of room is one pool of slices
    (the limits of `refusal_bound`). What a placement refuses beyond this, fragmentation
    cost it; it is the reference for placement alone, since the offline bound may also
    refuse a long request to make room for many short ones, which no placement decides."""
    rooms = _rooms(replay.gpus)
    held: dict[tuple, float] = defaultdict(float)
    ends: list[tuple[float, int, list]] = []
    refused = 0
    for n, r in enumerate(requests):
        while ends and ends[0][0] <= r.arrival:
            for key, w in heapq.heappop(ends)[2]:
                held[key] -= w
        spec, pools = replay.spec(r.profile)
        if spec.kind == "cpu":
            continue
        options = [weights for _, weights in _options(spec, pools, rooms)]
        # Fixed devices first, as the placement takes them.
        options.sort(key=lambda o: o[0][0][0][0] == "dynamic")
        for option in options:
            if all(held[key] + w <= cap for key, cap, w in option):
                for key, _, w in option:
                    held[key] += w
                heapq.heappush(ends, (r.arrival + r.duration, n, [(key, w) for key, _, w in option]))
                break
        else:
            refused += 1
    return refused
