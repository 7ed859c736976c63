"""Time to claim a device with many claims already held in the ledger.

Builds an inventory of 1,200 GPUs (150 nodes × 8), holds 1,000 claims, then times claim +
release of one more, repeated. Prints the median claim time (target < 5 ms).

    .venv/bin/python benchmarks/claim_latency.py                          # whole GPUs (gpu-1)
    .venv/bin/python benchmarks/claim_latency.py --gpus mig-on-request    # H100s, 1g.10gb held, a 3g.40gb asked

With `mig-on-request` the GPUs' MIG instances are made per request: what is timed is the
claim with its placement (the start that keeps room, over every GPU's geometry), not the
making of the instance, which is the NVIDIA driver's (hub/mig/).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from podbay.hub.config import Quota, parse_config, parse_profile_id  # noqa: E402
from podbay.hub.inventory import Inventory  # noqa: E402
from podbay.hub.quota import Demand, QuotaBook  # noqa: E402
from podbay.hub.quota.placement import DevicePlacement  # noqa: E402


def big_config(nodes: int, on_request: bool = False):
    model = {"model": "NVIDIA H100 80GB HBM3", "memory_mib": 81559, "mig_on_request": True} if on_request else {
        "model": "NVIDIA A100-SXM4-80GB", "memory_mib": 81920}
    return parse_config({
        "images": [{"name": "pt", "display_name": "PyTorch", "image": "pt"}],
        "profiles": [{"id": "mig-1g.10gb"}, {"id": "mig-3g.40gb"}] if on_request else [{"id": "gpu-1"}],
        "nodes": [{"name": f"dgx-{n:03d}", "pool": "dev", "gpus": [
            {"index": i, "uuid": f"GPU-{uuid.uuid4()}", **model} for i in range(8)]} for n in range(nodes)],
    })


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--held", type=int, default=1000)
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--db", help="SQLAlchemy URL (default: a SQLite file in a temp dir)")
    ap.add_argument("--gpus", choices=("whole", "mig-on-request"), default="whole")
    ap.add_argument("--nodes", type=int, default=150, help="servers of 8 GPUs (1: one server, as local and docker run)")
    args = ap.parse_args()
    on_request = args.gpus == "mig-on-request"
    cfg = big_config(nodes=args.nodes, on_request=on_request)
    held, probe = ("mig-1g.10gb", "mig-3g.40gb") if on_request else ("gpu-1", "gpu-1")
    quota = Quota(gpu_units=10_000, workspaces_per_user=10_000)
    with tempfile.TemporaryDirectory() as tmp:
        ledger = QuotaBook(args.db or f"sqlite:///{tmp}/ledger.sqlite")
        placement = DevicePlacement(Inventory.from_config(cfg))

        def claim(key: str, profile: str) -> None:
            ledger.claim(key=key, kind="workspace", user="bench", team="t", quota=quota, placement=placement,
                         demand=Demand(profile, parse_profile_id(profile), ("dev",)))

        for i in range(args.held):
            claim(f"workspace:bench/held-{i}", held)
        samples = []
        for i in range(args.samples):
            t0 = time.perf_counter()
            claim("workspace:bench/probe", probe)
            samples.append(time.perf_counter() - t0)
            ledger.release("workspace:bench/probe")
        ledger.dispose()
    samples.sort()
    print(f"claims held: {args.held} ({held}) on {len(cfg.nodes) * 8} GPUs ({args.gpus}); asked: {probe}; "
          f"samples: {args.samples}")
    print(f"claim median: {statistics.median(samples) * 1000:.2f} ms, "
          f"p95: {samples[int(len(samples) * 0.95)] * 1000:.2f} ms  (target: median < 5 ms)")


if __name__ == "__main__":
    main()
