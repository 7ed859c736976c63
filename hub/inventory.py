"""The claimable devices of the local and docker backends, built from the config.

What is free is the capacity source's business (quota/capacity.py), which device a request
gets the placement's (quota/placement.py).

One `Device` is what one claim takes: a whole GPU, a MIG device, or one of the N
time-sliced slots of a shared GPU. Its `key` is unique on its node (the quota book's unique
constraint); its `visible_id` is what CUDA/NVIDIA_VISIBLE_DEVICES get. Slots of a shared
GPU use the device plugin's annotated form `<uuid>::<n>` as key, and the bare UUID as
visible id.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Callable, Literal

from .config import GpuDecl, MigDeviceDecl, Node, PodbayConfig, ProfileKind, split_ci
from .discovery import Gpu, discover_nvml
from .gpu import family_for


@dataclass(frozen=True)
class Device:
    node: str
    pool: str
    key: str
    visible_id: str
    kind: Literal["full", "mig", "shared"]
    weight: Fraction
    gpu_index: int
    model: str
    mig_profile: str | None = None
    replicas: int | None = None
    # MIG: the parent GPU's UUID and the GPU instance id (how DCGM names its utilisation).
    parent_uuid: str | None = None
    gpu_instance: int | None = None
    # The GPU's memory, where declared or discovered (tells H100 NVL from H100 80GB).
    memory_mib: int | None = None


def mig_weight(model: str, memory_mib: int | None, profile: str) -> Fraction:
    family = family_for(model, memory_mib)
    ci, base = split_ci(profile)
    if family is None:  # unknown model: assume the common 7-slice geometry
        return Fraction(ci or int(base.split("g")[0]), 7)
    slices = ci or family.profiles[base].compute_slices
    return Fraction(slices, family.compute_slices)


def devices_of_gpu(node: Node, gpu: GpuDecl) -> list[Device]:
    common = dict(node=node.name, pool=node.pool, gpu_index=gpu.index, model=gpu.model, memory_mib=gpu.memory_mib)
    if gpu.mig is not None:
        return [
            Device(key=d.uuid, visible_id=d.uuid, kind="mig", mig_profile=d.profile,
                   weight=mig_weight(gpu.model, gpu.memory_mib, d.profile), parent_uuid=gpu.uuid,
                   gpu_instance=d.gpu_instance, **common)
            for d in gpu.mig
        ]
    if gpu.replicas:
        return [
            Device(key=f"{gpu.uuid}::{n}", visible_id=gpu.uuid, kind="shared",
                   replicas=gpu.replicas, weight=Fraction(1, gpu.replicas), **common)
            for n in range(gpu.replicas)
        ]
    return [Device(key=gpu.uuid, visible_id=gpu.uuid, kind="full", weight=Fraction(1), **common)]


def gpus_to_decls(gpus: list[Gpu], time_sliced: dict[int, int] | None = None) -> list[GpuDecl]:
    """Discovered GPUs as config declarations (also what `podbay gpus --as-inventory` prints)."""
    decls = []
    for g in gpus:
        mig = None
        if g.mig_enabled:
            mig = [MigDeviceDecl(profile=m.profile, uuid=m.uuid, gpu_instance=m.gpu_instance_id) for m in g.mig_devices
                   if m.uuid and m.profile]
        replicas = (time_sliced or {}).get(g.index) if not g.mig_enabled else None
        decls.append(GpuDecl(index=g.index, uuid=g.uuid, model=g.model, memory_mib=g.memory_mib,
                             mig=mig, replicas=replicas))
    return decls


class InventoryError(Exception):
    pass


class Inventory:
    def __init__(self, devices: list[Device]):
        self.devices = devices
        self.by_key = {(d.node, d.key): d for d in devices}
        # The inventory never changes while it lives: candidates per (profile, pools) once.
        self._candidates: dict[tuple, list[Device]] = {}

    @classmethod
    def from_config(cls, cfg: PodbayConfig,
                    discover: Callable[[], list[Gpu]] = discover_nvml) -> "Inventory":
        devices: list[Device] = []
        for node in cfg.nodes:
            gpus = node.gpus
            if node.discover:
                try:
                    found = discover()
                except Exception as e:
                    raise InventoryError(f"node {node.name}: discover is set, but {e}") from e
                ts = node.time_slicing
                gpus = gpus_to_decls(found, {i: ts.replicas for i in ts.gpus} if ts else None)
            for gpu in gpus:
                devices += devices_of_gpu(node, gpu)
        return cls(devices)

    def candidates(self, spec: ProfileKind, pools: list[str]) -> list[Device]:
        """Devices that could serve one unit of this profile, in the given pools."""
        key = (spec, tuple(pools))
        if key not in self._candidates:
            self._candidates[key] = self._find_candidates(spec, pools)
        return self._candidates[key]

    def _find_candidates(self, spec: ProfileKind, pools: list[str]) -> list[Device]:
        def fits(d: Device) -> bool:
            if d.pool not in pools:
                return False
            if spec.kind == "mig":
                return d.kind == "mig" and d.mig_profile == spec.mig_profile
            if spec.kind == "shared":
                return d.kind == "shared" and d.replicas == spec.replicas
            return spec.kind == "full" and d.kind == "full"
        return [d for d in self.devices if fits(d)] if spec.kind != "cpu" else []
