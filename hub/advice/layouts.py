"""GPU layouts: which MIG layouts a GPU model allows, and how a chosen layout is written for
the tools that apply it (NVIDIA's mig-parted / the GPU Operator's MIG Manager) and for
podbay.yaml.

A layout is applied per GPU, only when nothing runs on it: MIG Manager stops the GPU's
clients (or waits for them), mig-parted needs the GPU idle. What advice changes is
therefore said with what it would interrupt (advise.py).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from functools import lru_cache

from ..gpu import FAMILIES, GpuFamily, layout_fits
from .replay import WHOLE, GpuLayout


def mig_layouts(family: GpuFamily, profiles: Iterable[str]) -> list[tuple[str, ...]]:
    """Every maximal layout of these profiles on one GPU of `family`: no other instance of
    any of them could be added. Largest instances first in each."""
    return list(_mig_layouts(family.key, tuple(sorted(set(profiles) & set(family.profiles)))))


@lru_cache(maxsize=256)
def _mig_layouts(key: str, profiles: tuple[str, ...]) -> tuple[tuple[str, ...], ...]:
    family = FAMILIES[key]
    names = sorted((p for p in profiles if "+me" not in p),
                   key=lambda p: (-family.profiles[p].memory_slices, -family.profiles[p].compute_slices, p))
    found: set[tuple[str, ...]] = set()

    def grow(layout: list[str], start: int) -> None:
        grown = False
        for i in range(len(names)):
            if layout_fits(family, layout + [names[i]]):
                grown = True
                if i >= start:
                    grow(layout + [names[i]], i)
        if not grown and layout:
            found.add(tuple(layout))

    grow([], 0)
    return tuple(sorted(found, key=lambda t: (len(t), t)))


def mig_parted_devices(layout: GpuLayout) -> dict:
    """One `mig-configs` entry's body for a GPU of this layout (devices: filled in by the caller)."""
    if layout.mode != "mig":
        return {"mig-enabled": False}
    return {"mig-enabled": True, "mig-devices": dict(sorted(Counter(layout.mig).items()))}


# Names every mig-parted config file of NVIDIA's carries (config-default.yaml; the GPU
# Operator's default-mig-parted-config): a node whose GPUs all get one of these needs no
# custom config.
def predefined_name(family: GpuFamily | None, layout: GpuLayout) -> str | None:
    if layout.mode in ("whole", "shared"):
        return "all-disabled"
    if layout.mode != "mig" or family is None:
        return None
    counts = Counter(layout.mig)
    if len(counts) == 1:
        (name, n), = counts.items()
        if name in family.profiles and n == family.profiles[name].max_instances and "+me" not in name:
            return f"all-{name}"
    if any(counts == Counter(lay) for lay in _balanced(family)):
        return "all-balanced"
    return None


def predefined_layout(family: GpuFamily | None, name: str) -> GpuLayout | None:
    """The layout a predefined mig-parted config gives each GPU of `family`, or None for a
    name this does not know (a custom config)."""
    if name == "all-disabled":
        return WHOLE
    if family is None or not name.startswith("all-"):
        return None
    if name == "all-balanced":
        found = _balanced(family)
        return GpuLayout("mig", mig=found[0]) if found else None
    profile = name[len("all-"):].replace(".me", "+me")
    if profile in family.profiles:
        return GpuLayout("mig", mig=(profile,) * family.profiles[profile].max_instances)
    return None


def _balanced(family: GpuFamily) -> list[tuple[str, ...]]:
    """mig-parted's all-balanced for this model: 2x 1g, 1x 2g and (seven-slice GPUs) 1x 3g,
    each the smallest-memory profile of its compute size."""
    def smallest(slices: int) -> str | None:
        names = [p for p, spec in family.profiles.items() if spec.compute_slices == slices and "+me" not in p]
        return min(names, key=lambda p: family.profiles[p].memory_slices) if names else None

    one, two, three = smallest(1), smallest(2), smallest(3)
    if family.compute_slices == 7 and one and two and three:
        return [(three, two, one, one)]
    if one and two:
        return [(two, one, one)]
    return []


def layout_yaml(layout: GpuLayout) -> dict:
    """A GPU's layout as podbay.yaml's GPU entry says it (without the UUIDs, which the GPU
    has only once the layout is applied: `podbay gpus --as-inventory` prints them)."""
    if layout.mode == "mig":
        return {"mig": [{"profile": p} for p in layout.mig]}
    if layout.mode == "shared":
        return {"replicas": layout.replicas}
    return {}


__all__ = ["WHOLE", "layout_yaml", "mig_layouts", "mig_parted_devices", "predefined_name"]


def deal_out(family: GpuFamily, counts: Counter, gpus: int) -> list[tuple[str, ...]]:
    """MIG devices counted per node (what Kubernetes' allocatable and Slurm's GRES say) dealt
    out to the node's MIG GPUs, largest first, each GPU taking what still fits its geometry:
    the counts are right, which GPU has which slices is a guess."""
    layouts: list[list[str]] = [[] for _ in range(gpus)]

    def size(p: str) -> tuple[int, int, str]:
        spec = family.profiles.get(p)
        return (-spec.memory_slices, -spec.compute_slices, p) if spec else (0, 0, p)

    for name in sorted(counts.elements(), key=size):
        for lay in layouts:
            if name in family.profiles and layout_fits(family, lay + [name]):
                lay.append(name)
                break
    return [tuple(lay) for lay in layouts]


def fewest_gpus(family: GpuFamily, counts: Counter) -> list[tuple[str, ...]]:
    """The MIG devices dealt out to as few GPUs as hold them all (where the engine does not
    say how many GPUs its MIG devices are cut from)."""
    known = Counter({p: n for p, n in counts.items() if p in family.profiles})
    need = sum(family.profiles[p].compute_slices * n for p, n in known.items())
    for gpus in range(max(1, -(-need // family.compute_slices)), sum(known.values()) + 1):
        dealt = deal_out(family, known, gpus)
        if sum(len(d) for d in dealt) == sum(known.values()):
            return dealt
    return []
