"""Derive a podbay demand trace (hub/advice/trace.py's CSV shape) from Alibaba's public GPU
cluster trace of the FGD paper, cluster-trace-gpu-v2023.

    python benchmarks/derive_trace.py openb_pod_list_default.csv --keep 6 > trace.csv

The source: https://github.com/alibaba/clusterdata/tree/master/cluster-trace-gpu-v2023
(csv/openb_pod_list_*.csv: one row per pod, with `num_gpu`, `gpu_milli` and creation and
deletion times in seconds). Alibaba publishes it for research and study use (the repository's
README); tests/data/demand/README.md says what the sample shipped here is.

The rule, one row per pod that asked for a GPU (pods with `num_gpu` 0 are dropped: a CPU-only
request is never refused for GPU room):

- arrival: `creation_time`, moved so the first request arrives at 0;
- duration: `deletion_time - creation_time` (what the pod held, or waited before it gave up;
  pods still running at the trace's end stop there);
- profile, for a GPU with seven compute slices (`--family`, H100-80GB by default):
  - `num_gpu` of 2 or more: `gpu-<num_gpu>`;
  - `num_gpu` 1 and `gpu_milli` 1000: `gpu-1`;
  - `num_gpu` 1 and less: the smallest MIG profile with at least that share of the compute,
    k = ceil(gpu_milli * 7 / 1000) slices: 1g, 2g, 3g or 4g; above 4/7 of a GPU (k of 5 to 7,
    for which there is no MIG profile short of the whole 7g), `gpu-1`;
- team: the trace has none; the pod's QoS class stands for it (LS: serving, BE: research,
  Burstable: training, Guaranteed: platform);
- user: the trace has none; `u<NN>`, the pod's number modulo `--users` (50), so requests
  spread over people the way a portal's do;
- `--keep K` keeps every K-th GPU pod (by its number), to scale the cluster's load (about
  6,200 GPUs) to the inventory it is replayed on;
- `--last-days D` keeps the trace's last D days (most of its arrivals are there): a pod that
  arrived before and still runs arrives at the window's start with what it had left, so the
  window starts with the load it had.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys

TEAMS = {"LS": "serving", "BE": "research", "Burstable": "training", "Guaranteed": "platform"}


def profile_for(num_gpu: int, gpu_milli: int, names: dict[int, str]) -> str:
    if num_gpu >= 2:
        return f"gpu-{num_gpu}"
    if gpu_milli >= 1000:
        return "gpu-1"
    k = max(1, math.ceil(gpu_milli * 7 / 1000))
    return f"mig-{names[k]}" if k in names else "gpu-1"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("pods", help="an openb_pod_list_*.csv of cluster-trace-gpu-v2023")
    ap.add_argument("--keep", type=int, default=1, help="keep every K-th GPU pod (default: all)")
    ap.add_argument("--users", type=int, default=50)
    ap.add_argument("--last-days", type=float, default=None, help="keep only the trace's last D days")
    ap.add_argument("--family", default="H100-80GB", help="the MIG names' GPU family (podbay.hub.gpu.FAMILIES)")
    args = ap.parse_args(argv)

    from podbay.hub.gpu import FAMILIES

    family = FAMILIES[args.family]
    # For each compute share below a whole GPU, its profile with the least memory (1g.10gb,
    # not 1g.20gb), never a +me one.
    names: dict[int, str] = {}
    for name, p in sorted(family.profiles.items(), key=lambda kv: kv[1].memory_slices, reverse=True):
        if "+me" not in name and p.compute_slices < family.compute_slices:
            names[p.compute_slices] = name
    rows = []
    with open(args.pods, newline="") as f:
        for row in csv.DictReader(f):
            number = int(row["name"].rsplit("-", 1)[1])
            num_gpu = int(row["num_gpu"])
            if num_gpu == 0 or number % args.keep:
                continue
            created, deleted = int(row["creation_time"]), int(row["deletion_time"])
            rows.append((created, deleted - created, f"u{number % args.users:02d}",
                         TEAMS.get(row["qos"], "research"), profile_for(num_gpu, int(row["gpu_milli"]), names)))
    rows.sort()
    if args.last_days and rows:
        end = max(a + d for a, d, *_ in rows)
        start = end - args.last_days * 86400
        rows = [(max(a, start), a + d - max(a, start), *rest) for a, d, *rest in rows if a + d > start]
        rows.sort()
    origin = rows[0][0] if rows else 0
    out = csv.writer(sys.stdout, lineterminator="\n")
    out.writerow(["arrival", "duration", "user", "team", "profile"])
    for arrival, duration, user, team, profile in rows:
        out.writerow([arrival - origin, duration, user, team, profile])
    return 0


if __name__ == "__main__":
    sys.exit(main())
