"""GPU facts podbay relies on: MIG profiles per GPU family, placement rules and unit weights.

The tables come from NVIDIA's MIG User Guide and real `nvidia-smi mig -lgip/-lgipp`
outputs (see shared/GPU.md). Profiles are addressed by *name*, never by the numeric
profile ID: the IDs differ between models (A30's 1g is 14, A100's is 19).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache


@dataclass(frozen=True)
class MigProfile:
    name: str
    compute_slices: int
    memory_slices: int
    max_instances: int
    # Memory slots a GPU instance of this profile may start at (`-lgipp` placements).
    starts: tuple[int, ...]


@dataclass(frozen=True)
class GpuFamily:
    key: str
    compute_slices: int
    memory_slices: int
    profiles: dict[str, MigProfile]
    # SMs that all MIG slices of one GPU add up to (the 7g profile's count).
    multiprocessors: int

    def weight(self, profile: str) -> Fraction:
        """GPU units of one instance: its compute slices over the GPU's."""
        return Fraction(self.profiles[profile].compute_slices, self.compute_slices)


def _seven_slice_family(key: str, mem: tuple[int, int, int, int, int], sms: int) -> GpuFamily:
    """A100/H100/H200/B200 share one geometry; only the memory in the names differs.

    `mem` gives the GB in the names of (1g, 1g-with-two-memory-slices, 2g, 3g/4g, 7g).
    """
    one, one_wide, two, three, seven = mem
    rows = [
        (f"1g.{one}gb", 1, 1, 7, (0, 1, 2, 3, 4, 5, 6)),
        (f"1g.{one}gb+me", 1, 1, 1, (0, 1, 2, 3, 4, 5, 6)),
        (f"1g.{one_wide}gb", 1, 2, 4, (0, 2, 4, 6)),
        (f"2g.{two}gb", 2, 2, 3, (0, 2, 4)),
        (f"3g.{three}gb", 3, 4, 2, (0, 4)),
        (f"4g.{three}gb", 4, 4, 1, (0,)),
        (f"7g.{seven}gb", 7, 8, 1, (0,)),
    ]
    return GpuFamily(key, 7, 8, {r[0]: MigProfile(*r) for r in rows}, sms)


def _four_slice_family(key: str, one: int, two: int, four: int, sms: int) -> GpuFamily:
    rows = [
        (f"1g.{one}gb", 1, 1, 4, (0, 1, 2, 3)),
        (f"1g.{one}gb+me", 1, 1, 1, (0, 1, 2, 3)),
        (f"2g.{two}gb", 2, 2, 2, (0, 2)),
        (f"2g.{two}gb+me", 2, 2, 1, (0, 2)),
        (f"4g.{four}gb", 4, 4, 1, (0,)),
    ]
    return GpuFamily(key, 4, 4, {r[0]: MigProfile(*r) for r in rows}, sms)


FAMILIES: dict[str, GpuFamily] = {
    f.key: f
    for f in [
        _seven_slice_family("A100-40GB", (5, 10, 10, 20, 40), 98),
        _seven_slice_family("A100-80GB", (10, 20, 20, 40, 80), 98),
        _seven_slice_family("H100-80GB", (10, 20, 20, 40, 80), 132),
        _seven_slice_family("H100-94GB", (12, 24, 24, 47, 94), 132),
        _seven_slice_family("H100-96GB", (12, 24, 24, 48, 96), 132),
        _seven_slice_family("H200-141GB", (18, 35, 35, 71, 141), 132),
        _seven_slice_family("B200-180GB", (23, 45, 45, 90, 180), 148),
        _four_slice_family("A30-24GB", 6, 12, 24, 56),
        _four_slice_family("RTX-PRO-6000", 24, 48, 96, 188),
    ]
}


def family_for(model: str, memory_mib: int | None = None) -> GpuFamily | None:
    """The MIG family of a GPU model name as NVML/nvidia-smi print it, or None if not MIG-capable."""
    name = model.upper()
    mem_gb = (memory_mib or 0) / 1024

    def has(*words: str) -> bool:
        return all(w in name for w in words)

    if has("A100"):
        big = "80GB" in name or mem_gb > 60
        return FAMILIES["A100-80GB" if big else "A100-40GB"]
    if has("GH200") or (has("H20") and not has("H200")):
        return FAMILIES["H100-96GB"] if mem_gb < 120 else None
    if has("H200"):
        return FAMILIES["H200-141GB"]
    if has("H100"):
        if has("NVL") or "94GB" in name or 88 < mem_gb < 95:
            return FAMILIES["H100-94GB"]
        if "96GB" in name or 95 <= mem_gb < 120:
            return FAMILIES["H100-96GB"]
        return FAMILIES["H100-80GB"]
    if has("A30"):
        return FAMILIES["A30-24GB"]
    if has("B200"):
        return FAMILIES["B200-180GB"]
    if has("RTX PRO 6000") and has("BLACKWELL"):
        return FAMILIES["RTX-PRO-6000"]
    return None


def layout_fits(family: GpuFamily, profiles: list[str]) -> bool:
    """Whether these GPU instances can coexist on one GPU of `family`.

    Tries every placement (at most 7 instances on 8 memory slots, so this is tiny):
    instances may not overlap in memory slots, compute slices may not exceed the GPU's,
    and at most one `+me` instance exists per GPU.
    """
    specs = [family.profiles[p] for p in profiles]
    if sum(s.compute_slices for s in specs) > family.compute_slices:
        return False
    if sum(1 for s in specs if "+me" in s.name) > 1:
        return False
    specs.sort(key=lambda s: -s.memory_slices)

    def place(i: int, used: frozenset[int]) -> bool:
        if i == len(specs):
            return True
        spec = specs[i]
        for start in spec.starts:
            slots = frozenset(range(start, start + spec.memory_slices))
            if max(slots) < family.memory_slices and not slots & used:
                if place(i + 1, used | slots):
                    return True
        return False

    return place(0, frozenset())


# One bit per memory slot of a GPU (bit i: slot i), and one more for the media engines a
# `+me` instance takes: at most one of those per GPU.
MEDIA_BIT = 1 << 8


def instance_mask(profile: MigProfile, start: int) -> int:
    """The memory slots (and the media-engine bit) a GPU instance at `start` takes."""
    mask = ((1 << profile.memory_slices) - 1) << start
    return mask | MEDIA_BIT if "+me" in profile.name else mask


def free_starts(family: GpuFamily, profile: str, used: int, compute_used: int) -> tuple[int, ...]:
    """Where a new instance of `profile` may start on a GPU whose instances take the slots in
    `used` and `compute_used` compute slices: the profile's own start positions (`-lgipp`)
    whose slots are all free, inside the GPU, within its compute slices."""
    spec = family.profiles[profile]
    if compute_used + spec.compute_slices > family.compute_slices:
        return ()
    return tuple(s for s in spec.starts
                 if s + spec.memory_slices <= family.memory_slices and not instance_mask(spec, s) & used)


def room_for(family: GpuFamily, used: int, compute_used: int) -> dict[str, int]:
    """How many more instances of each profile fit on a GPU in this state, each counted alone.

    Instances of one profile all have one length and fixed starts, so taking the earliest
    free start each time packs the most (interval scheduling's greedy choice); compute slices
    and the one `+me` instance cap it. A GPU has at most 2**9 states per family: cached."""
    return _room_for(family.key, used, compute_used)


@lru_cache(maxsize=None)
def _room_for(key: str, used: int, compute_used: int) -> dict[str, int]:
    family = FAMILIES[key]
    room = {}
    for name, spec in family.profiles.items():
        n, mask, compute = 0, used, compute_used
        while True:
            starts = free_starts(family, name, mask, compute)
            if not starts:
                break
            n += 1
            mask |= instance_mask(spec, starts[0])
            compute += spec.compute_slices
        room[name] = n
    return room


GPU_UUID = re.compile(r"^GPU-[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
MIG_UUID = re.compile(
    r"^MIG-(?:[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
    # Drivers before R470 named MIG devices by parent and instance ids.
    r"|GPU-[0-9a-fA-F-]{36}/\d+/\d+)$"
)
MIG_NAME = re.compile(r"^\d+g\.\d+gb(?:\+me(?:\.all)?|\+gfx|-me)?$")


def known_mig_profiles() -> set[str]:
    return {name for f in FAMILIES.values() for name in f.profiles}


__all__ = [
    "FAMILIES",
    "GPU_UUID",
    "MIG_NAME",
    "MEDIA_BIT",
    "MIG_UUID",
    "GpuFamily",
    "MigProfile",
    "family_for",
    "free_starts",
    "instance_mask",
    "known_mig_profiles",
    "layout_fits",
    "room_for",
]
