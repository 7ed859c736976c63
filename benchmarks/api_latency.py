"""Latency of podbay's `GET catalog` and `GET capacity` under load, against the hub's own
`GET /hub/api/`, in one run.

A real `podbay up` serves an inventory of 1,216 devices with 1,000 claims and 500 jobs in
the ledger; 20 concurrent clients call each endpoint for 10 s. Prints p50 and p95, and the
ratio to the hub's endpoint (targets: p95 <= 25 ms and <= 3x the hub's).

    .venv/bin/python benchmarks/api_latency.py
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from podbay.hub.config import Quota, load_config, parse_profile_id  # noqa: E402
from podbay.hub.inventory import Inventory  # noqa: E402
from podbay.hub.jobs import JobRow  # noqa: E402
from podbay.hub.quota import Demand, QuotaBook  # noqa: E402
from podbay.hub.quota.placement import DevicePlacement  # noqa: E402
from podbay.hub.procs import proc_start_time  # noqa: E402
from tests.harness import TEST_CONFIG, Hub, free_port_block  # noqa: E402


def write_config(path: Path, nodes: int) -> None:
    cfg = yaml.safe_load(TEST_CONFIG.read_text())
    for n in range(nodes):
        cfg["nodes"].append({"name": f"dgx-{n:03d}", "pool": "dev", "gpus": [
            {"index": i, "uuid": f"GPU-{uuid.uuid4()}", "model": "NVIDIA A100-SXM4-80GB", "memory_mib": 81920}
            for i in range(8)]})
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))


def fill_ledger(config: Path, data_dir: Path, claims: int, jobs: int) -> None:
    ledger = QuotaBook(f"sqlite:///{data_dir / 'ledger.sqlite'}")
    placement = DevicePlacement(Inventory.from_config(load_config(config)))
    gpu1 = Demand("gpu-1", parse_profile_id("gpu-1"), ("dev",))
    # Claims that reconciliation keeps: they point at this (living) process.
    ref = {"pid": os.getpid(), "start_time": proc_start_time(os.getpid())}
    quota = Quota(gpu_units=100_000, workspaces_per_user=100_000)
    for i in range(claims):
        key = f"workspace:user{i % 50}/ws{i}"
        ledger.claim(key=key, kind="workspace", user=f"user{i % 50}", team="vision", demand=gpu1, quota=quota,
                     placement=placement)
        ledger.set_ref(key, ref)
    with ledger.write_session() as s, s.begin():
        now = time.time()
        for j in range(jobs):
            s.add(JobRow(name=f"job-{j}", user=f"user{j % 50}", team="vision", image="pytorch",
                         command=json.dumps(["python", "train.py"]), workdir="/tmp", volumes="[]", env="{}",
                         gpus_per_node=1, pool="training", state="succeeded", exit_code=0, message="finished",
                         devices="[]", created=now, started=now, finished=now, ref="{}"))
    ledger.dispose()


async def load(url: str, headers: dict, clients: int, seconds: float) -> list[float]:
    latencies: list[float] = []
    async with httpx.AsyncClient(headers=headers, timeout=30,
                                 limits=httpx.Limits(max_connections=clients)) as http:
        deadline = time.monotonic() + seconds

        async def client():
            while time.monotonic() < deadline:
                t0 = time.perf_counter()
                r = await http.get(url)
                latencies.append(time.perf_counter() - t0)
                r.raise_for_status()

        await asyncio.gather(*(client() for _ in range(clients)))
    return latencies


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))] * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=10)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        config = tmp / "podbay.yaml"
        write_config(config, nodes=150)
        hub = Hub(config, tmp / "data", free_port_block(), keep_workspaces=True)
        hub.data_dir.mkdir()
        fill_ledger(config, hub.data_dir, claims=1000, jobs=500)
        hub.start()
        try:
            headers = {"Authorization": f"token {hub.token('alice')}"}
            api = f"{hub.url}/services/podbay/api/v1"
            targets = [("hub GET /hub/api/", f"{hub.url}/hub/api/"),
                       ("podbay GET catalog", f"{api}/catalog"),
                       ("podbay GET capacity", f"{api}/capacity")]
            runs = {}
            for clients in sorted({1, args.clients}):
                runs[clients] = {}
                for name, url in targets:
                    asyncio.run(load(url, headers, 2, 1.0))  # warm-up
                    runs[clients][name] = asyncio.run(load(url, headers, clients, args.seconds))
        finally:
            hub.stop()
    print("ledger: 1,000 claims, 500 jobs; 1,216 devices; every request through configurable-http-proxy")
    for clients, results in runs.items():
        print(f"-- {clients} concurrent client{'s' if clients > 1 else ''}, {args.seconds:.0f} s per endpoint")
        hub_p95 = pct(results["hub GET /hub/api/"], 0.95)
        for name, lat in results.items():
            p50, p95 = pct(lat, 0.5), pct(lat, 0.95)
            ratio = "" if name.startswith("hub") else f"  p95 vs hub: {p95 / hub_p95:.2f}x"
            print(f"{name:<22} n={len(lat):>6}  p50 {p50:6.1f} ms  p95 {p95:6.1f} ms  "
                  f"mean {statistics.mean(lat) * 1000:6.1f} ms{ratio}")
    print("targets: p95 <= 25 ms and <= 3x the hub's own endpoint (with 20 clients)")


if __name__ == "__main__":
    main()
