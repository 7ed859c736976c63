"""GPU layouts on a Slurm cluster, for `podbay advise`: what each node's GPUs are cut into,
read from the node's GRES (whole GPUs of a type, gpu:a100:4; MIG slices of a type per
profile: AutoDetect=nvml's gpu:a100_3g.39gb:2, or a site's own names, slurm.mig_types), and
the jobs running on each node.

Slurm does not say which GPU holds which slice, nor how many GPUs its slices are cut from:
the slices are dealt out to as few GPUs as hold them (advice.layouts.fewest_gpus). podbay
applies nothing here: a node is drained, re-cut with mig-parted and its GRES updated by its
operator (the advice's steps)."""

from __future__ import annotations

import re
from collections import Counter

from ...advice.layouts import fewest_gpus
from ...advice.replay import WHOLE, GpuLayout, SimGpu
from ...gpu import FAMILIES, GpuFamily, family_for
from .commands import Commands, SlurmSettings
from .nodes import SlurmNode, parse_nodes


def parse_gres(text: str, gres: str = "gpu") -> list[tuple[str | None, int]]:
    """(type or None, count) of each `gres` item of a node's Gres=: gpu:a100:4(S:0-1) →
    ("a100", 4); gpu:2 → (None, 2). Other GRES (shard, mps) are not GPUs."""
    out = []
    for item in re.split(r",(?![^(]*\))", text or ""):
        parts = item.split("(")[0].strip().split(":")
        if parts[0] != gres or len(parts) < 2 or not parts[-1].isdigit():
            continue
        out.append((":".join(parts[1:-1]) or None, int(parts[-1])))
    return out


# A MIG slice's GRES type: the profile's name, or AutoDetect=nvml's <gpu>_<N>g.<M>gb (M in
# whole GiB as the driver reports the slice: 3g.40gb of an A100 80GB is a100_3g.39gb).
MIG_TYPE = re.compile(r"^(?:(?P<gpu>.+)_)?(?P<c>\d+)g\.(?P<gb>\d+)gb(?P<me>\+me)?$")


def _gb(profile: str) -> int:
    return int(profile.split(".")[1].split("gb")[0])


def mig_profile(kind: str, family: GpuFamily, settings: SlurmSettings) -> str | None:
    """The profile of `family` a MIG GRES type names: the site's own name for it
    (slurm.mig_types), the profile's name, or the profile with its compute slices and the
    nearest memory; None if the family has none such."""
    named = {t: p for p, t in settings.mig_types.items()}
    if named.get(kind) in family.profiles:
        return named[kind]
    m = MIG_TYPE.match(kind)
    if m is None:
        return None
    bare = kind.rsplit("_", 1)[1] if m["gpu"] else kind
    if bare in family.profiles:
        return bare
    # The driver's GiB differ from NVIDIA's names by rounding only (39 for 3g.40gb): a profile
    # further off is not this one.
    gb = int(m["gb"])
    same = [p for p, spec in family.profiles.items()
            if spec.compute_slices == int(m["c"]) and ("+me" in p) == bool(m["me"])
            and abs(_gb(p) - gb) <= max(2, _gb(p) * 0.15)]
    return min(same, key=lambda p: (abs(_gb(p) - gb), p), default=None)


def node_gpus(node: SlurmNode, pool: str, settings: SlurmSettings) -> list[SimGpu] | None:
    """The GPUs of one node with the layout each has now; None where advice leaves it alone:
    MIG slices whose type no model's geometry explains."""
    named = set(settings.mig_types.values())
    mig_types: Counter = Counter()
    whole: list[tuple[str | None, int]] = []
    for kind, n in parse_gres(node.gres, settings.gres):
        if kind and (kind in named or MIG_TYPE.match(kind)):
            mig_types[kind] += n
        else:
            whole.append((kind, n))
    # The model: the whole GPUs' type, else the GPU named in AutoDetect's MIG types.
    prefixes = [m["gpu"] for t in mig_types if (m := MIG_TYPE.match(t)) and m["gpu"]]
    kind = next((k for k, _ in whole if k), prefixes[0] if prefixes else "")
    model = settings.gpu_models.get(kind, kind)
    family = family_for(model) if model else None
    layouts = [WHOLE] * sum(n for _, n in whole)
    mig_model, mig_family = model, family
    if mig_types:
        def dealt_on(f: GpuFamily) -> list[tuple[str, ...]] | None:
            profiles = Counter()
            for t, n in mig_types.items():
                p = mig_profile(t, f, settings)
                if p is None:
                    return None
                profiles[p] += n
            return fewest_gpus(f, profiles) or None

        dealt = dealt_on(family) if family is not None else None
        if dealt is None:
            # The types alone say the geometry. A name two geometries read differently
            # (1g.10gb: one memory slot of an A100 80GB, two of an A100 40GB) is read as the one
            # needing the fewest GPUs for the node's slices.
            fits = [(len(d), i, f, d) for i, f in enumerate(FAMILIES.values()) if (d := dealt_on(f))]
            if not fits:
                return None
            _, _, mig_family, dealt = min(fits, key=lambda t: t[:2])
            mig_model = mig_family.key
        layouts += [GpuLayout("mig", mig=tuple(sorted(d))) for d in dealt]
    out = []
    for i, lay in enumerate(layouts):
        is_mig = lay.mode == "mig"
        out.append(SimGpu(node.name, pool, i, mig_model if is_mig else model, mig_family if is_mig else family, lay))
    return out


def running_jobs(commands: Commands) -> dict[str, list[str]]:
    """node → the jobs running on it, as lines for people ("Slurm job 12 of alice (train)")."""
    # Every partition's (--all), the name last: it may hold the separator.
    text = commands.run("squeue", "--all", "-h", "-t", "RUNNING,COMPLETING", "-o", "%i|%u|%N|%j")
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        parts = line.split("|", 3)
        if len(parts) != 4:
            continue
        job, user, nodes, name = parts
        hosts = (commands.run("scontrol", "show", "hostnames", nodes).split() if "[" in nodes
                 else [h for h in nodes.split(",") if h])
        for host in hosts:
            out.setdefault(host, []).append(f"Slurm job {job} of {user} ({name})")
    return out


def slurm_layouts(cfg, pools: list[str]) -> list[tuple[SimGpu, list[str]]]:
    """Every GPU of the nodes of these pools' partitions, with what runs on its node (Slurm
    does not say which GPU a job holds: each GPU names every job of its node). A node in
    several pools' partitions is advised for the first."""
    settings: SlurmSettings = cfg.slurm
    commands = Commands(settings)
    nodes = parse_nodes(commands.run("scontrol", "show", "node", "--oneliner"), settings.gres)
    jobs = running_jobs(commands)
    out, seen = [], set()
    for pool in pools:
        partition = settings.partition(cfg, pool)
        for node in nodes:
            if partition not in node.partitions or node.name in seen:
                continue
            seen.add(node.name)
            for gpu in node_gpus(node, pool, settings) or []:
                out.append((gpu, jobs.get(node.name, [])))
    return out
