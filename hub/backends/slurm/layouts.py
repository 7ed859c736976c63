"""GPU layouts on a Slurm cluster, for `podbay advise`: what each node's GPUs are cut into,
read from the node's GRES (whole GPUs of a type, gpu:a100:4; MIG slices typed by their
profile, gpu:1g.10gb:7, as gres.conf's MIG section and AutoDetect=nvml name them), and the
jobs running on each node.

Slurm does not say which GPU holds which slice, nor how many GPUs its slices are cut from:
the slices are dealt out to as few GPUs as hold them (advice.layouts.fewest_gpus). podbay
applies nothing here: a node is drained, re-cut with mig-parted and its GRES updated by its
operator (the advice's steps)."""

from __future__ import annotations

import re
from collections import Counter

from ...advice.layouts import fewest_gpus
from ...advice.replay import WHOLE, GpuLayout, SimGpu
from ...gpu import FAMILIES, MIG_NAME, family_for
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


def node_gpus(node: SlurmNode, pool: str, settings: SlurmSettings) -> list[SimGpu] | None:
    """The GPUs of one node with the layout each has now; None where advice leaves it alone:
    MIG slices of no profile set podbay knows the geometry of."""
    items = parse_gres(node.gres, settings.gres)
    mig = Counter()
    whole: list[tuple[str | None, int]] = []
    for kind, n in items:
        if kind and MIG_NAME.match(kind):
            mig[kind] += n
        else:
            whole.append((kind, n))
    model = next((settings.gpu_models.get(kind, kind) for kind, _ in whole if kind), "")
    family = family_for(model) if model else None
    layouts = [WHOLE] * sum(n for _, n in whole)
    mig_model, mig_family = model, family
    dealt: list[tuple[str, ...]] = []
    if mig:
        if family is not None and set(mig) <= set(family.profiles):
            dealt = fewest_gpus(family, mig)
        else:
            # The profiles' names tell the geometry (A100 80GB and H100 80GB share theirs). A
            # name two geometries use (1g.10gb: one memory slot of an A100 80GB, two of an
            # A100 40GB) is read as the one that needs the fewest GPUs for the node's slices.
            fits = [(len(d), i, f, d) for i, f in enumerate(FAMILIES.values())
                    if set(mig) <= set(f.profiles) and (d := fewest_gpus(f, mig))]
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
    text = commands.run("squeue", "-h", "-t", "RUNNING,COMPLETING", "-o", "%i|%u|%j|%N")
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) != 4:
            continue
        job, user, name, nodes = parts
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
