"""An advice written out for the people and tools that act on it: the mig-parted config file
(NVIDIA's nvidia-mig-parted, and the GPU Operator's MIG Manager, which runs it), podbay.yaml's
`nodes:` entries, and the steps, with what each step interrupts."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from ..gpu import FAMILIES
from .advise import Advice, NodeAdvice
from .layouts import layout_yaml, mig_parted_devices, predefined_name


def mig_parted_config(advice: Advice) -> dict:
    """A mig-parted config file with one custom config per changed node that no predefined
    config names (`version: v1`, `mig-configs:`; GPU indexes in `devices:`)."""
    configs: dict[str, list] = {}
    for node in advice.changed:
        name = node.config_name
        if not name.startswith("podbay-"):
            continue  # all-balanced, all-1g.10gb, …: already in every mig-parted config
        # GPUs of one layout share an entry, in the order they first appear.
        groups: dict[str, tuple[dict, list[int]]] = {}
        for g in node.gpus:
            body = mig_parted_devices(g.advised)
            groups.setdefault(repr(sorted(body.items())), (body, []))[1].append(g.index)
        configs[name] = [{"devices": indexes, **body} for body, indexes in groups.values()]
    return {"version": "v1", "mig-configs": configs}


def nodes_entries(advice: Advice, placed: Callable[[str], bool] = lambda pool: True) -> list[dict]:
    """The changed nodes as podbay.yaml's `nodes:` says them, of the pools podbay places on
    (`placed`: local, docker). MIG UUIDs exist only once the layout is applied: `podbay gpus
    --as-inventory` prints the entry whole."""
    out = []
    for node in advice.changed:
        if not placed(node.pool):
            continue
        out.append({"name": node.node, "pool": node.pool,
                    "gpus": [{"index": g.index, "model": g.model, **layout_yaml(g.advised)} for g in node.gpus]})
    return out


# The engines on whose nodes podbay itself places devices (podbay.yaml's nodes: say their GPUs).
PLACING_ENGINES = frozenset({"local", "docker"})


@dataclass(frozen=True)
class GresNames:
    """How a Slurm cluster names its GPUs' GRES types: the whole GPUs' type (slurm.gpu_type)
    and each MIG profile's (slurm.mig_types; else the profile's own name)."""

    whole: str | None = None
    mig: Mapping[str, str] = field(default_factory=dict)


def steps(advice: Advice, engines: str | Mapping[str, str], gres: GresNames = GresNames()) -> list[str]:
    """What an operator does to apply the advice, node by node, in order. `engines`: the
    engine of every node, or of each pool (a Slurm training pool beside docker workspaces)."""
    def engine_of(pool: str) -> str:
        return engines if isinstance(engines, str) else engines.get(pool, "local")

    out = []
    custom = any(n.config_name.startswith("podbay-") for n in advice.changed)
    if custom:
        out.append("Save the mig-parted config below as podbay-mig.yaml"
                   + (" and add its configs to MIG Manager's ConfigMap (the GPU Operator's "
                      "migManager.config.name)" if any(engine_of(n.pool) == "kubernetes" for n in advice.changed)
                      else "") + ".")
    for node in advice.changed:
        stop = "; ".join(node.interrupts)
        name = node.config_name
        engine = engine_of(node.pool)
        if engine == "kubernetes":
            out.append(f"{node.node}: " + (f"wait for, or stop, what runs on its GPUs ({stop}); " if stop else "")
                       + f"`podbay advise --apply {node.node}` (or `kubectl label node {node.node} "
                       f"nvidia.com/mig.config={name} --overwrite`); MIG Manager applies it and sets "
                       "nvidia.com/mig.config.state to success.")
        elif engine == "slurm":
            out.append(f"{node.node}: drain it in Slurm (`scontrol update nodename={node.node} state=drain "
                       f"reason=mig-layout`)" + (f" and wait for {stop}" if stop else "") + "; on the node "
                       f"`nvidia-mig-parted apply -f {'podbay-mig.yaml' if name.startswith('podbay-') else '<config-default.yaml>'}"
                       f" -c {name}`; give it `Gres={slurm_gres(node, gres)}` in slurm.conf (gres.conf: AutoDetect=nvml, "
                       "or one line per MIG device); `scontrol reconfigure` (slurm.conf is the whole cluster's) and "
                       f"restart its slurmd; then resume it (`scontrol update nodename={node.node} state=resume`).")
        else:
            out.append(f"{node.node}: " + (f"stop what runs on the GPUs that change ({stop}); " if stop else "")
                       + f"on the node, `nvidia-mig-parted apply -f "
                       f"{'podbay-mig.yaml' if name.startswith('podbay-') else '<config-default.yaml>'} -c {name}`; "
                       "then `podbay gpus --as-inventory` and put its output in the node's entry in podbay.yaml "
                       "(or use discover: true), and restart the hub.")
    shared = sorted({g.advised.replicas for n in advice.changed for g in n.gpus
                     if g.changes and g.advised.mode == "shared"})
    if gres.whole is None and any(engine_of(n.pool) == "slurm" and any(g.advised.mode == "mig" for g in n.gpus)
                                  for n in advice.changed):
        out.append("Set slurm.gpu_type in podbay.yaml to the whole GPUs' type (and give it them in slurm.conf): a job "
                   "that asks for untyped GPUs (gpu:N) may otherwise be given MIG slices.")
    if shared and any(engine_of(n.pool) == "kubernetes" for n in advice.changed):
        out.append("GPUs advised as shared are time-sliced by the device plugin: give their nodes a "
                   f"time-slicing config with replicas {', '.join(map(str, shared))} (the node label "
                   "nvidia.com/device-plugin.config names it) and kubernetes.pools.<pool>.time_slicing in podbay.yaml.")
    return out


def slurm_gres(node: NodeAdvice, gres: GresNames = GresNames()) -> str:
    """The node's Gres= for its advised layout: its whole GPUs under their type, and its MIG
    slices under theirs."""
    whole = sum(1 for g in node.gpus if g.advised.mode != "mig")
    slices = Counter(p for g in node.gpus if g.advised.mode == "mig" for p in g.advised.mig)
    out = [f"gpu:{gres.whole}:{whole}" if gres.whole else f"gpu:{whole}"] if whole else []
    return ",".join(out + [f"gpu:{gres.mig.get(p, p)}:{n}" for p, n in sorted(slices.items())])


def as_dict(advice: Advice, engines: str | Mapping[str, str], gres: GresNames = GresNames(),
            left_out: list[str] | None = None) -> dict:
    """The advice as the API and `podbay advise --json` give it. `engines`: the engine, or
    each pool's; `left_out`: the engines that could not say what their nodes have, and why."""
    engine = engines if isinstance(engines, str) else ", ".join(sorted({engines[p] for p in advice.pools
                                                                         if p in engines})) or "local"
    def result(r):
        return {"refused": r.refused, "refused_by_profile": dict(r.refused_by_profile),
                "gpu_hours_held": round(r.unit_seconds_held / 3600, 3),
                "gpu_hours_idle": round(max(0.0, r.unit_seconds - r.unit_seconds_held) / 3600, 3)}

    return {
        "since": advice.since, "until": advice.until, "pools": advice.pools, "requests": advice.requests,
        "engine": engine, "before": result(advice.before), "after": result(advice.after),
        "nodes": [_node(n) for n in advice.nodes],
        "mig_parted": mig_parted_config(advice),
        "nodes_yaml": nodes_entries(advice, lambda pool: (engines if isinstance(engines, str)
                                                          else engines.get(pool, "local")) in PLACING_ENGINES),
        "steps": steps(advice, engines, gres),
        "left_out": left_out or [],
    }


def _node(n: NodeAdvice) -> dict:
    return {"node": n.node, "pool": n.pool, "changes": n.changes, "config": n.config_name,
            "interrupts": n.interrupts,
            "gpus": [{"index": g.index, "model": g.model, "current": str(g.current), "advised": str(g.advised),
                      "changes": g.changes, "holders": g.holders,
                      "known_config": predefined_name(FAMILIES.get(g.family), g.advised)} for g in n.gpus]}
