"""Time to claim a device with many claims already held in the ledger.

Builds an inventory of 1,200 whole GPUs (150 nodes × 8), holds 1,000 claims, then times
claim + release of one more GPU, repeated. Prints the median claim time (target < 5 ms).

    .venv/bin/python benchmarks/claim_latency.py
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


def big_config(nodes: int):
    return parse_config({
        "images": [{"name": "pt", "display_name": "PyTorch", "image": "pt"}],
        "profiles": [{"id": "gpu-1"}],
        "nodes": [{"name": f"dgx-{n:03d}", "pool": "dev", "gpus": [
            {"index": i, "uuid": f"GPU-{uuid.uuid4()}", "model": "NVIDIA A100-SXM4-80GB", "memory_mib": 81920}
            for i in range(8)]} for n in range(nodes)],
    })


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--held", type=int, default=1000)
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--db", help="SQLAlchemy URL (default: a SQLite file in a temp dir)")
    args = ap.parse_args()
    cfg = big_config(nodes=150)
    spec, quota = parse_profile_id("gpu-1"), Quota(gpu_units=10_000, workspaces_per_user=10_000)
    with tempfile.TemporaryDirectory() as tmp:
        ledger = QuotaBook(args.db or f"sqlite:///{tmp}/ledger.sqlite")
        placement, demand = DevicePlacement(Inventory.from_config(cfg)), Demand("gpu-1", spec, ("dev",))

        def claim(key: str) -> None:
            ledger.claim(key=key, kind="workspace", user="bench", team="t", demand=demand, quota=quota,
                         placement=placement)

        for i in range(args.held):
            claim(f"workspace:bench/held-{i}")
        samples = []
        for i in range(args.samples):
            t0 = time.perf_counter()
            claim("workspace:bench/probe")
            samples.append(time.perf_counter() - t0)
            ledger.release("workspace:bench/probe")
        ledger.dispose()
    samples.sort()
    print(f"claims held: {args.held} of {len(cfg.nodes) * 8} GPUs; samples: {args.samples}")
    print(f"claim median: {statistics.median(samples) * 1000:.2f} ms, "
          f"p95: {samples[int(len(samples) * 0.95)] * 1000:.2f} ms  (target: median < 5 ms)")


if __name__ == "__main__":
    main()
