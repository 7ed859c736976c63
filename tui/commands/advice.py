"""`podbay advise`: the layout advice, read, saved and applied (admins)."""

from __future__ import annotations

import json

from ..client import PodbayClient
from .common import print_json, print_table, run, visible


def _dump(data) -> str:
    """YAML where PyYAML is installed (the portal's extra), else JSON, which YAML reads too."""
    try:
        import yaml
    except ImportError:
        return json.dumps(data, indent=2) + "\n"
    return yaml.safe_dump(data, sort_keys=False)


def _refused(r: dict) -> str:
    parts = ", ".join(f"{p} {n}" for p, n in sorted(r["refused_by_profile"].items(), key=lambda kv: -kv[1]))
    return f"{r['refused']}" + (f" ({parts})" if parts else "")


def cmd_advise(args) -> int:
    async def go(c: PodbayClient) -> int:
        out = await c.advice(days=args.days, pool=args.pool or None)
        if args.apply:
            node = next((n for n in out["nodes"] if n["node"] == args.apply), None)
            if node is not None and node["changes"]:
                for g in node["gpus"]:
                    if g["changes"]:
                        print(f"{args.apply} GPU {g['index']}: {g['current']} → {g['advised']}")
            # The service makes the advice again and applies that node's part of it, if it is
            # still what was shown here.
            done = await c.apply_advice(args.apply, days=args.days, pool=args.pool or None,
                                        config=node["config"] if node else None)
            print(visible(done["message"]))
            return 0
        if args.mig_parted:
            with open(args.mig_parted, "w") as f:
                f.write(_dump(out["mig_parted"]))
        if args.json:
            print_json(out)
            return 0
        days = (out["until"] - out["since"]) / 86400
        print(f"Layout advice from {out['requests']} requests over the last {days:g} days "
              f"(pools {', '.join(out['pools']) or 'none'}, {out['engine']})")
        b, a = out["before"], out["after"]
        print(f"  refused with today's layouts: {_refused(b)}")
        print(f"  refused with the advised ones: {_refused(a)}")
        print(f"  GPU-hours held {b['gpu_hours_held']:g} → {a['gpu_hours_held']:g}, "
              f"idle {b['gpu_hours_idle']:g} → {a['gpu_hours_idle']:g}")
        for why in out.get("left_out", []):
            print(f"  not in this advice: {visible(why)}")
        changed = [n for n in out["nodes"] if n["changes"]]
        if not changed:
            print("\nEvery node already has the advised layout.")
            return 0
        rows = []
        for n in changed:
            for g in n["gpus"]:
                if g["changes"]:
                    rows.append([n["node"], g["index"], g["current"], g["advised"], n["config"],
                                 "; ".join(g["holders"]) or "-"])
        print()
        print_table(rows, ["node", "GPU", "now", "advised", "mig-parted config", "interrupts"])
        print("\nSteps:")
        for i, step in enumerate(out["steps"], 1):
            print(f"  {i}. {visible(step)}")
        if out["mig_parted"]["mig-configs"]:
            if args.mig_parted:
                print(f"\nThe mig-parted config is in {args.mig_parted}.")
            else:
                print("\nThe mig-parted config (podbay-mig.yaml; --mig-parted FILE writes it):\n")
                print(_dump(out["mig_parted"]))
        if out["nodes_yaml"]:
            print("podbay.yaml, the changed nodes (UUIDs: `podbay gpus --as-inventory` once applied):\n")
            print(_dump({"nodes": out["nodes_yaml"]}))
        return 0
    return run(args, go)
