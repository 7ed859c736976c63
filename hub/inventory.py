"""The claimable devices of the local and docker backends, built from the config.

What is free is the capacity source's business (quota/capacity.py), which device a request
gets the placement's (quota/placement.py).

One `Device` is what one claim takes: a whole GPU, a MIG device, or one of the N
time-sliced slots of a shared GPU. Its `key` is unique on its node (the quota book's unique
constraint); its `visible_id` is what CUDA/NVIDIA_VISIBLE_DEVICES get. Slots of a shared
GPU use the device plugin's annotated form `<uuid>::<n>` as key, and the bare UUID as
visible id.

A GPU whose MIG instances podbay makes per request (`mig_on_request`) offers one device per
profile and start position (`<uuid>/<profile>@<start>`): the placement never picks two that
overlap (gpu.free_starts), and the instance is made after the claim (hub/mig/), which then
records its MIG UUID as the claim's visible id.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
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
    # A MIG instance made per request: the memory slot it starts at.
    mig_start: int | None = None

    @property
    def on_request(self) -> bool:
        return self.mig_start is not None


def on_request_key(gpu_uuid: str, profile: str, start: int) -> str:
    return f"{gpu_uuid}/{profile}@{start}"


@lru_cache(maxsize=1 << 16)  # every placement reads every claim's key: the same keys again
def parse_on_request_key(key: str) -> tuple[str, str, int] | None:
    """(GPU UUID, profile, start) of an on-request device's key; None for other keys."""
    gpu, sep, rest = key.partition("/")
    # A leftover's claim (quota book: hold_leftover) is the key with "#leftover".
    profile, at, start = rest.split("#", 1)[0].rpartition("@")
    if not (sep and at and start.isdigit()):
        return None
    return gpu, profile, int(start)


class InventoryError(Exception):
    pass


def mig_weight(model: str, memory_mib: int | None, profile: str) -> Fraction:
    family = family_for(model, memory_mib)
    ci, base = split_ci(profile)
    if family is None:  # unknown model: assume the common 7-slice geometry
        return Fraction(ci or int(base.split("g")[0]), 7)
    slices = ci or family.profiles[base].compute_slices
    return Fraction(slices, family.compute_slices)


def devices_of_gpu(node: Node, gpu: GpuDecl) -> list[Device]:
    common = dict(node=node.name, pool=node.pool, gpu_index=gpu.index, model=gpu.model, memory_mib=gpu.memory_mib)
    if gpu.mig_on_request:
        family = family_for(gpu.model, gpu.memory_mib)
        return [
            Device(key=on_request_key(gpu.uuid, p.name, start), visible_id=on_request_key(gpu.uuid, p.name, start),
                   kind="mig", mig_profile=p.name, weight=family.weight(p.name), parent_uuid=gpu.uuid,
                   mig_start=start, **common)
            for p in family.profiles.values() for start in p.starts
            if start + p.memory_slices <= family.memory_slices
        ] if family else []
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


def gpus_to_decls(gpus: list[Gpu], time_sliced: dict[int, int] | None = None,
                  on_request: frozenset[int] = frozenset()) -> list[GpuDecl]:
    """Discovered GPUs as config declarations (also what `podbay gpus --as-inventory` prints).
    The GPUs in `on_request` have their MIG instances made per request: what is on them now
    is not offered (podbay removes it once nothing runs on it)."""
    missing = sorted(set(on_request) - {g.index for g in gpus})
    if missing:
        raise InventoryError(f"mig_on_request lists GPU {', '.join(map(str, missing))}, which this machine does not "
                             f"have (it has {', '.join(str(g.index) for g in gpus) or 'none'})")
    decls = []
    for g in gpus:
        if g.index in on_request:
            if not g.mig_enabled:
                raise InventoryError(f"GPU {g.index} ({g.model}) is listed under mig_on_request, but its MIG "
                                     f"mode is off: enable it (nvidia-smi -i {g.index} -mig 1) or take it off the list")
            decls.append(GpuDecl(index=g.index, uuid=g.uuid, model=g.model, memory_mib=g.memory_mib,
                                 mig_on_request=True))
            continue
        mig = None
        if g.mig_enabled:
            mig = [MigDeviceDecl(profile=m.profile, uuid=m.uuid, gpu_instance=m.gpu_instance_id) for m in g.mig_devices
                   if m.uuid and m.profile]
        replicas = (time_sliced or {}).get(g.index) if not g.mig_enabled else None
        decls.append(GpuDecl(index=g.index, uuid=g.uuid, model=g.model, memory_mib=g.memory_mib,
                             mig=mig, replicas=replicas))
    return decls


class Inventory:
    def __init__(self, devices: list[Device]):
        self.devices = devices
        self.by_key = {(d.node, d.key): d for d in devices}
        # The devices of the GPUs whose MIG instances are made per request, and those GPUs:
        # (node, UUID) → (pool, MIG family).
        self.on_request = [d for d in devices if d.on_request]
        self.on_request_info = {(d.node, d.parent_uuid): (d.pool, family_for(d.model, d.memory_mib))
                                for d in self.on_request}
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
                try:
                    gpus = gpus_to_decls(found, {i: ts.replicas for i in ts.gpus} if ts else None,
                                         frozenset(node.mig_on_request))
                except InventoryError as e:
                    raise InventoryError(f"node {node.name}: {e}") from e
            for gpu in gpus:
                devices += devices_of_gpu(node, gpu)
        return cls(devices)

    def candidates(self, spec: ProfileKind, pools: list[str], made: bool = True) -> list[Device]:
        """Devices that could serve one unit of this profile, in the given pools (without
        `made`: not those of GPUs whose instances are made per request)."""
        key = (spec, tuple(pools), made)
        if key not in self._candidates:
            found = self._find_candidates(spec, pools)
            self._candidates[key] = found if made else [d for d in found if not d.on_request]
        return self._candidates[key]

    def on_request_for(self, spec: ProfileKind, pools: list[str]) -> list[tuple[str, str]]:
        """(node, GPU UUID) of the on-request GPUs that can make this profile in these pools,
        in order."""
        key = ("on-request", spec, tuple(pools))
        if key not in self._candidates:
            self._candidates[key] = sorted({(d.node, d.parent_uuid) for d in self.candidates(spec, pools)
                                            if d.on_request})
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
