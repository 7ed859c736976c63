"""Latency of podbay's `GET catalog` and `GET capacity` on the kubernetes backend, against the
local backend's on the same machine, in one run.

The kubernetes hub reads an emulated cluster (tests/standins/k8s_cluster.py, API server only) of 200
GPU nodes with 8 GPUs each and 5,000 pods in its watch cache (GPU workspaces and jobs, CPU
pods, some ended); the local hub has the same 200 nodes as its inventory and 1,000 claims in
its quota book. 20 concurrent clients call each endpoint for 10 s, through the proxy.
Prints p50 and p95 and the ratio kubernetes/local (target: <= 1.2x).

    .venv/bin/python benchmarks/k8s_api_latency.py [--clients 20] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.api_latency import fill_ledger, load, pct  # noqa: E402
from tests.harness import Hub, free_port_block, stand_in_cluster_running  # noqa: E402

NODES, GPUS, PODS = 200, 8, 5000
NS = "podbay"


def config(path: Path, backend: str) -> None:
    cfg = {
        "backend": backend,
        "images": [{"name": "base", "display_name": "CPU base", "image": "podbay/base:2026.11", "default": True}],
        "profiles": [{"id": p} for p in ("cpu", "gpu-1", "gpu-2", "gpu-4", "gpu-8")],
        "pools": {"dev": {"node_selector": {"podbay.io/pool": "dev"}}},
        "teams": {"vision": {"members": ["alice"], "quota": {"gpu_units": 64, "workspaces_per_user": 8, "job_gpus": 64}}},
        "kubernetes": {"namespace": NS, "pools": {"dev": {}}},
    }
    if backend == "local":
        cfg["nodes"] = [{"name": f"dgx-{n:03d}", "pool": "dev", "gpus": [
            {"index": i, "uuid": f"GPU-{n:08d}-0000-4000-8000-{i:012d}", "model": "NVIDIA A100-SXM4-80GB",
             "memory_mib": 81920} for i in range(GPUS)]} for n in range(NODES)]
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))


def cluster_objects(path: Path) -> None:
    """200 nodes, 5,000 pods: as many GPUs asked as the local hub's claims hold, and the rest
    CPU pods and pods that ended (which the watch drops)."""
    rng = random.Random(7)
    docs = [{"apiVersion": "v1", "kind": "Node", "metadata": {"name": f"dgx-{n:03d}", "labels": {
        "podbay.io/pool": "dev", "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB", "nvidia.com/gpu.count": str(GPUS)}},
        "status": {"allocatable": {"cpu": "128", "memory": "1Ti", "pods": "110", "nvidia.com/gpu": str(GPUS)}}}
        for n in range(NODES)]
    for p in range(PODS):
        gpu = p < 1000
        docs.append({"apiVersion": "v1", "kind": "Pod", "metadata": {
            "name": f"pod-{p}", "namespace": NS if p % 2 else "other",
            "labels": {"podbay.io/component": "workspace" if gpu else "job", "podbay.io/team": "vision"}},
            "spec": {"nodeName": f"dgx-{p % NODES:03d}", "containers": [{"name": "c", "image": "x", "resources": {
                "limits": {"nvidia.com/gpu": "1"} if gpu else {"cpu": "1"}}}]},
            "status": {"phase": "Succeeded" if rng.random() < 0.1 and not gpu else "Running"}})
    path.write_text(yaml.safe_dump_all(docs))


def measure(hub: Hub, clients: int, seconds: float) -> dict[str, list[float]]:
    headers = {"Authorization": f"token {hub.token('alice')}"}
    api = f"{hub.url}/services/podbay/api/v1"
    out = {}
    for name in ("catalog", "capacity"):
        asyncio.run(load(f"{api}/{name}", headers, 2, 1.0))  # warm-up
        out[name] = asyncio.run(load(f"{api}/{name}", headers, clients, seconds))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=10)
    args = ap.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "local").mkdir()
        config(tmp / "local" / "podbay.yaml", "local")
        fill_ledger(tmp / "local" / "podbay.yaml", tmp / "local", claims=1000, jobs=0)
        hub = Hub(tmp / "local" / "podbay.yaml", tmp / "local", free_port_block(), keep_workspaces=True)
        hub.start()
        try:
            results["local"] = measure(hub, args.clients, args.seconds)
        finally:
            hub.stop()

        (tmp / "k8s").mkdir()
        config(tmp / "k8s" / "podbay.yaml", "kubernetes")
        cluster_objects(tmp / "k8s" / "cluster.yaml")
        with stand_in_cluster_running(tmp / "k8s", tmp / "k8s" / "cluster.yaml", namespace=NS,
                                      controllers=False) as (url, kubeconfig):
            hub = Hub(tmp / "k8s" / "podbay.yaml", tmp / "k8s", free_port_block(), keep_workspaces=True,
                      extra_env={"KUBECONFIG": str(kubeconfig)})
            hub.start()
            try:
                headers = {"Authorization": f"token {hub.token('alice')}"}
                deadline = time.monotonic() + 60
                while True:  # until the service's watch has the whole cluster
                    pools = httpx.get(f"{hub.url}/services/podbay/api/v1/capacity", headers=headers).json()["pools"]
                    if pools and pools[0]["devices"].get("gpu", {}).get("total") == NODES * GPUS:
                        break
                    assert time.monotonic() < deadline, pools
                    time.sleep(0.5)
                print(f"cluster view: {json.dumps(pools[0]['devices'])}")
                results["kubernetes"] = measure(hub, args.clients, args.seconds)
            finally:
                hub.stop()
    print(f"{NODES} nodes x {GPUS} GPUs; kubernetes: {PODS} pods in the watch cache; local: 1,000 claims; "
          f"{args.clients} clients, {args.seconds:.0f} s per endpoint, through the proxy")
    for name in ("catalog", "capacity"):
        loc, k8s = results["local"][name], results["kubernetes"][name]
        for backend, lat in (("local", loc), ("kubernetes", k8s)):
            print(f"{name:<9} {backend:<11} n={len(lat):>6}  p50 {pct(lat, 0.5):6.1f} ms  p95 {pct(lat, 0.95):6.1f} ms")
        print(f"{name:<9} kubernetes/local: p50 {pct(k8s, 0.5) / pct(loc, 0.5):.2f}x  "
              f"p95 {pct(k8s, 0.95) / pct(loc, 0.95):.2f}x")
    print("target: <= 1.2x the local backend's")


if __name__ == "__main__":
    main()
