"""Replay a demand trace against an inventory: placements and layouts compared, and how long
an advice takes for a large cluster.

    python benchmarks/placement_replay.py [--trace CSV] [--config podbay.yaml]

Any trace in hub/advice/trace.py's CSV shape (arrival, duration, user, team, profile: podbay
profile ids) and any podbay.yaml whose `nodes:` declare the GPUs. Defaults: the sample
derived from Alibaba's cluster-trace-gpu-v2023 (tests/data/demand/) on one 8-GPU H100
server (benchmarks/data/one-h100-server.yaml).

1. Placement, on the inventory with its MIG GPUs' instances made per request (the placement
   then chooses GPU and start slot by the model's geometry):
   - first-fit: the first GPU and the first start that fit (what podbay did before);
   - podbay: quota/placement.py (the start that costs the likely requests least);
   - unfragmented: the same accept-if-room rule on GPUs pooled into slices, which never
     fragment: what any placement that takes what it has room for refuses at least, but for
     the luck of refusing early (the reference for placement);
   - offline bound: advice/bound.py, proven: no placement at all, even one that knew the
     future and refused a long request to make room for short ones, refuses fewer.
2. Layouts, each GPU's layout fixed (MIG instances as mig-parted makes them), podbay's
   placement: all 1g, all whole, as configured, the best of balanced mixes (k whole GPUs per
   node, the rest mig-parted's all-balanced), the best static layout of one cut (k whole, the
   rest all cut alike into any one of the model's maximal MIG layouts, or time-sliced as the
   catalog offers), and the advised one (advice/advise.py) — the
   advice made on the whole trace (in-sample), and made on its first half and replayed on the
   second (out of sample).
3. The advice's speed: the inventory's nodes copied to --nodes nodes, and the trace's
   requests copied and spread over --days days to the same load per node.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_TRACE = ROOT / "tests" / "data" / "demand" / "alibaba-v2023-sample.csv"
DEFAULT_CONFIG = ROOT / "benchmarks" / "data" / "one-h100-server.yaml"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trace", default=str(DEFAULT_TRACE))
    ap.add_argument("--config", default=str(DEFAULT_CONFIG))
    ap.add_argument("--bound-seconds", type=float, default=120, help="HiGHS's time for the offline bound")
    ap.add_argument("--nodes", type=int, default=200, help="nodes of the advice's speed test")
    ap.add_argument("--days", type=float, default=30, help="days of demand of the advice's speed test")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    from podbay.hub.advice.advise import advise
    from podbay.hub.advice.bound import refusal_bound, unfragmented_refusals
    from podbay.hub.advice.layouts import predefined_layout
    from podbay.hub.advice.replay import DYNAMIC, WHOLE, GpuLayout, Replay, gpus_of
    from podbay.hub.advice.trace import read_trace
    from podbay.hub.config import load_config

    cfg = load_config(args.config)
    requests = read_trace(args.trace)
    out: dict = {"trace": args.trace, "config": args.config, "requests": len(requests)}

    def row(result) -> dict:
        return {"refused": result.refused, "refused_pct": round(100 * result.refused_share, 2),
                "gpu_hours_held": round(result.unit_seconds_held / 3600, 1),
                "gpu_hours_idle": round((result.unit_seconds - result.unit_seconds_held) / 3600, 1),
                "fragmentation": round(result.fragmentation, 3)}

    # 1. Placement.
    def dynamic(g):
        return DYNAMIC if g.layout.mode == "mig" else g.layout

    placement = {}
    for policy in ("first-fit", "podbay"):
        placement[policy] = row(Replay(cfg, gpus_of(cfg, dynamic), policy).run(requests))
    pooled = Replay(cfg, gpus_of(cfg, dynamic), "podbay")
    placement["unfragmented"] = {"refused": unfragmented_refusals(pooled, requests)}
    bound = refusal_bound(pooled, requests, args.bound_seconds)
    placement["offline bound"] = {"refused": bound.refused, "optimal": bound.optimal, "seconds": round(bound.seconds, 1)}
    out["placement"] = placement

    # 2. Layouts.
    def every(layout_of):
        return lambda g: layout_of(g) if g.family else WHOLE

    def all_1g(g):
        one = min((p for p in g.family.profiles if p.startswith("1g.") and "+me" not in p),
                  key=lambda p: g.family.profiles[p].memory_slices)
        return GpuLayout("mig", mig=(one,) * g.family.profiles[one].max_instances)

    def balanced(g):
        return predefined_layout(g.family, "all-balanced") or WHOLE

    layouts = {
        "all 1g": row(Replay(cfg, gpus_of(cfg, every(all_1g))).run(requests, "all 1g")),
        "all whole": row(Replay(cfg, gpus_of(cfg, lambda g: WHOLE)).run(requests, "all whole")),
        "as configured": row(Replay(cfg, gpus_of(cfg)).run(requests, "as configured")),
    }
    # Static layouts of one kind: k whole GPUs per node, the rest all cut alike, into any of
    # the model's maximal MIG layouts (mig-parted's all-balanced among them) or time-sliced
    # as the catalog offers; the best of them.
    from podbay.hub.advice.layouts import mig_layouts

    gpus = gpus_of(cfg)
    per_node = max(sum(1 for g in gpus if g.node == n) for n in {g.node for g in gpus})
    families = {g.family.key: g.family for g in gpus if g.family}
    cuts = [("balanced", balanced)]
    for fam in families.values():
        for lay in mig_layouts(fam, [p for p in fam.profiles if "+me" not in p]):
            cuts.append((str(GpuLayout("mig", mig=lay)),
                         lambda g, lay=lay, fam=fam: GpuLayout("mig", mig=lay) if g.family is fam else WHOLE))
    for r in {p.spec.replicas for p in cfg.profiles if p.spec.kind == "shared"}:
        cuts.append((f"shared 1/{r}", lambda g, r=r: GpuLayout("shared", replicas=r)))
    best = best_balanced = None
    for name, cut in cuts:
        for k in range(per_node + 1):
            def mix(g, k=k, cut=cut):
                return WHOLE if g.index < k or not g.family else cut(g)
            r = row(Replay(cfg, gpus_of(cfg, mix), measure=False).run(requests))
            r["layout"] = f"{k} whole per node, the rest {name}"
            key = (r["refused"], r["gpu_hours_idle"])
            if best is None or key < (best["refused"], best["gpu_hours_idle"]):
                best = r
            if name == "balanced" and (best_balanced is None
                                       or key < (best_balanced["refused"], best_balanced["gpu_hours_idle"])):
                best_balanced = r
    layouts["best balanced mix"] = best_balanced
    layouts["best static (one cut per node)"] = best
    t0 = time.perf_counter()
    advice = advise(cfg, gpus_of(cfg), requests)
    layouts["advised (in sample)"] = {**row(advice.after), "advice_seconds": round(time.perf_counter() - t0, 2)}
    half = requests[len(requests) // 2].arrival
    early, second = [r for r in requests if r.arrival < half], [r for r in requests if r.arrival >= half]
    trained = advise(cfg, gpus_of(cfg), early)
    chosen = {(n.node, g.index): g.advised for n in trained.nodes for g in n.gpus}
    layouts["second half: as configured"] = row(Replay(cfg, gpus_of(cfg)).run(second))
    layouts["second half: advised on the first"] = row(
        Replay(cfg, gpus_of(cfg, lambda g: chosen[(g.node, g.index)])).run(second))
    layouts["advised layout"] = {f"{n.node} GPU {g.index}": str(g.advised) for n in advice.nodes for g in n.gpus}
    out["layouts"] = layouts

    # 3. The advice's speed on a large cluster.
    base = gpus_of(cfg)
    nodes = sorted({g.node for g in base})
    copies = max(1, args.nodes // len(nodes))
    big = []
    for c in range(copies):
        for g in base:
            copy = replace(g, node=f"{g.node}-{c:03d}")
            copy.reset()
            big.append(copy)
    # Demand: the last --days of the trace (tiled in time if it is shorter), once per copy of
    # the inventory, each copy's by other people: the trace's load on every node.
    first, last = requests[0].arrival, requests[-1].arrival
    window = args.days * 86400
    span = max(last - first, 1.0)
    if span >= window:
        base_reqs = [r for r in requests if r.arrival >= last - window]
    else:
        base_reqs = [replace(r, arrival=r.arrival + k * span) for k in range(int(window // span) + 1)
                     for r in requests if r.arrival + k * span <= first + window]
    month = sorted((replace(r, arrival=r.arrival + c * 1e-3, user=f"{r.user}-{c}")
                    for c in range(copies) for r in base_reqs), key=lambda r: r.arrival)
    t0 = time.perf_counter()
    big_advice = advise(cfg, big, month)
    out["advice_speed"] = {"nodes": len({g.node for g in big}), "gpus": len(big), "requests": len(month),
                           "days": args.days, "seconds": round(time.perf_counter() - t0, 2),
                           "refused_before": big_advice.before.refused, "refused_after": big_advice.after.refused}

    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"trace {args.trace}: {len(requests)} requests; inventory {args.config}")
    print("\n1. Placement (MIG instances made per request):")
    for name, r in placement.items():
        print(f"   {name:>14}: refused {r['refused']}"
              + (f" ({r['refused_pct']}%), GPU-h held {r['gpu_hours_held']}, fragmentation {r['fragmentation']}"
                 if "refused_pct" in r else "")
              + (f" ({'optimal' if r['optimal'] else 'dual bound'}, {r['seconds']} s)" if "optimal" in r else ""))
    print("\n2. Layouts (fixed), podbay's placement:")
    for name, r in layouts.items():
        if name == "advised layout":
            continue
        print(f"   {name:>36}: refused {r['refused']} ({r['refused_pct']}%), GPU-h held {r['gpu_hours_held']}, "
              f"idle {r['gpu_hours_idle']}" + (f" [k={r['whole_per_node']}]" if "whole_per_node" in r else "")
              + (f" [{r['advice_seconds']} s]" if "advice_seconds" in r else ""))
    for gpu, lay in layouts["advised layout"].items():
        print(f"   {'':>36}  {gpu}: {lay}")
    s = out["advice_speed"]
    print(f"\n3. Advice for {s['nodes']} nodes ({s['gpus']} GPUs), {s['requests']} requests over {s['days']:g} days: "
          f"{s['seconds']} s (refused {s['refused_before']} → {s['refused_after']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
