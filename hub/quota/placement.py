"""Device placement: which devices a workspace or job gets, where nobody else decides.

On one machine (the local and docker backends) no scheduler or device plugin assigns GPUs,
so podbay picks them from its inventory, inside the quota book's transaction. A backend
whose engine places devices itself (Kubernetes' device plugin, Slurm's GRES) has no
placement: podbay then records only what the request weighs and never sets
`CUDA_VISIBLE_DEVICES`.
"""

from __future__ import annotations

from typing import Protocol

from ..config import ProfileKind
from ..inventory import Device, Inventory


class Placement(Protocol):
    def pick(self, spec: ProfileKind, pools: list[str], taken: set[tuple[str, str]]) -> list[Device] | None:
        """Free devices for one allocation, or None when none fit."""


class DevicePlacement:
    """Placement from the inventory: the quota book's claims say what is taken."""

    def __init__(self, inventory: Inventory):
        self.inventory = inventory

    def pick(self, spec: ProfileKind, pools: list[str], taken: set[tuple[str, str]]) -> list[Device] | None:
        """Whole GPUs come from one node, best fit first, so big nodes stay whole for big
        requests. Shares pack onto GPUs that are already shared, so whole GPUs stay free."""
        if spec.kind == "cpu":
            return []
        free = [d for d in self.inventory.candidates(spec, pools) if (d.node, d.key) not in taken]
        if spec.kind == "full":
            per_node: dict[str, list[Device]] = {}
            for d in free:
                per_node.setdefault(d.node, []).append(d)
            fitting = [ds for ds in per_node.values() if len(ds) >= spec.count]
            if not fitting:
                return None
            best = min(fitting, key=len)
            return sorted(best, key=lambda d: d.gpu_index)[: spec.count]
        if not free:
            return None
        if spec.kind == "shared":
            busy = {(n, k.split("::")[0]) for n, k in taken}
            free.sort(key=lambda d: ((d.node, d.visible_id) not in busy, d.node, d.gpu_index, d.key))
        return [free[0]]
