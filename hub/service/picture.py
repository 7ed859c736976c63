"""Capacity as a picture: pools → nodes → GPUs → devices (a whole GPU, its MIG slices, its
shared slots), each with who holds it. The capacity page draws it; the API serves it
(`GET capacity/gpus`) for the TUI's and the CLI's picture of the same."""

from __future__ import annotations

from fractions import Fraction
from typing import TYPE_CHECKING

from sqlalchemy import select

from ..gpu import room_for
from ..quota import fmt_units
from ..quota.database import AllocationRow, ClaimRow
from ..quota.placement import on_request_gpus

if TYPE_CHECKING:
    from ..portal import Portal


def holders(portal: "Portal") -> dict[tuple[str, str], dict]:
    """(node, device key) → who holds it, from the quota book's claims."""
    with portal.book.read_session() as s:
        rows = s.execute(select(ClaimRow.node, ClaimRow.device, AllocationRow.key, AllocationRow.user,
                                AllocationRow.kind, AllocationRow.profile)
                         .join(AllocationRow, AllocationRow.id == ClaimRow.allocation_id))
        return {(node, dev): {"key": key, "user": user, "kind": kind, "profile": profile,
                              "what": key.split(":", 1)[1].split("/", 1)[-1] if kind == "workspace" else key}
                for node, dev, key, user, kind, profile in rows}


def on_request_room(portal: "Portal") -> dict[tuple[str, int], Fraction]:
    """(node, GPU index) → the GPU units of the largest MIG instance that can still be made
    there, for the GPUs whose instances are made per request."""
    states = on_request_gpus(portal.inventory, portal.book.snapshot().taken)
    index = {(d.node, d.parent_uuid): d.gpu_index for d in portal.inventory.on_request}
    room = {}
    for g in states.values():
        fits = [g.family.weight(p) for p, n in room_for(g.family, g.used, g.compute).items() if n]
        room[(g.node, index[(g.node, g.uuid)])] = max(fits, default=Fraction(0))
    return room


def capacity_picture(portal: "Portal") -> list[dict]:
    """Pools → nodes → GPUs → devices (a whole GPU, its MIG slices, its shared slots), each
    with its holder or none. A pool whose devices podbay does not place (Kubernetes, a
    Slurm partition) shows what its engine says of each node: GPUs used and free."""
    pools: dict[str, dict] = {name: {"name": name, "nodes": {}} for name in portal.cfg.pools}
    placed = {d.pool for d in portal.inventory.devices} if portal.places_devices else set()
    if placed:
        held = holders(portal)
        made_room = on_request_room(portal)
        for d in portal.inventory.devices:
            node = pools.setdefault(d.pool, {"name": d.pool, "nodes": {}})["nodes"].setdefault(
                d.node, {"name": d.node, "gpus": {}, "state": None, "reason": None})
            gpu = node["gpus"].setdefault(d.gpu_index, {"index": d.gpu_index, "model": d.model, "devices": [],
                                                        "kind": d.kind, "replicas": d.replicas,
                                                        "on_request": d.on_request})
            holder = held.get((d.node, d.key))
            if d.on_request:
                # A GPU whose MIG instances are made per request: only those made are drawn (an
                # instance that outlived its claim as "in use"), in slot order; the rest of it
                # is its room.
                holder = holder or held.get((d.node, f"{d.key}#leftover"))
                if holder is None:
                    continue
            gpu["devices"].append({"label": d.mig_profile or (f"1/{d.replicas}" if d.kind == "shared" else "GPU"),
                                   "id": d.key, "units": d.weight, "weight": float(d.weight),
                                   "holder": holder, "start": d.mig_start or 0})
        for pool in pools.values():
            for node in pool["nodes"].values():
                for gpu in node["gpus"].values():
                    if gpu.get("on_request"):
                        gpu["devices"].sort(key=lambda dev: dev["start"])
                        # By the geometry: the largest instance that can still be made.
                        free = made_room.get((node["name"], gpu["index"]), Fraction(0))
                    else:
                        free = sum((dev["units"] for dev in gpu["devices"] if dev["holder"] is None), Fraction(0))
                    gpu["free_units"] = fmt_units(free)
                    # A MIG GPU's unsliced room (its holes) is what its slices do not cover.
                    covered = sum(dev["weight"] for dev in gpu["devices"]) if gpu["kind"] == "mig" else 1
                    gpu["unsliced"] = max(0.0, 1 - covered)
    for name in pools:
        if name in placed:
            continue
        for n in portal.capacity.node_states(name):
            pools[name]["nodes"][n.name] = {
                "name": n.name, "state": n.state, "reason": n.reason,
                "gpus": {i: {"index": i, "model": "", "kind": "full", "replicas": None, "unsliced": 0,
                             "free_units": "", "devices": [{"label": "GPU", "id": f"{n.name}/{i}", "weight": 1,
                                                            "holder": {"what": "in use"} if i < n.gpus_used else None}]}
                         for i in range(n.gpus)}}
    out = []
    for pool in pools.values():
        nodes = [dict(node, gpus=[node["gpus"][k] for k in sorted(node["gpus"])]) for node in pool["nodes"].values()]
        out.append({"name": pool["name"], "nodes": nodes})
    return out


__all__ = ["capacity_picture", "holders", "on_request_room"]
