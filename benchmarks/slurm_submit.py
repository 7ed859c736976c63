"""Submitting to a full Slurm partition through podbay, against plain sbatch, in one run.

A real Slurm (tests/standins/slurm_cluster.py: slurmctld, two slurmd nodes with 4 GPUs each,
slurmdbd on MariaDB) and a hub on the slurm backend (the contract's podbay.yaml). A job of
the cluster's own holds all eight GPUs, so every job submitted after it waits. Then:

- 500 one-GPU jobs through podbay's REST API (POST /jobs: validation, the team's limits,
  `sbatch --test-only`), from 10 clients at once, and 500 plain `sbatch` of the same job from
  10 threads: p50/p95 of each submit;
- once podbay's scheduler has handed all of them to Slurm: GET /jobs (500 pending jobs)
  against `squeue` listing the pending jobs directly, medians of 20 (target: within 1.5×).

    .venv/bin/python benchmarks/slurm_submit.py -n 500 -c 10
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.standins import slurm_cluster as sc  # noqa: E402



def pct(xs: list[float], q: int) -> float:
    return statistics.quantiles(xs, n=100)[q - 1]


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=500, help="jobs each way (default %(default)s)")
    ap.add_argument("-c", type=int, default=10, help="clients at once (default %(default)s)")
    args = ap.parse_args()
    if sc.missing_programs():
        raise SystemExit(f"Slurm's programs are missing: {', '.join(sc.missing_programs())}")
    state = Path(tempfile.mkdtemp(prefix="podbay-slurm-"))
    state.chmod(0o755)
    cluster = sc.start(state / "cluster")
    hub = None
    try:
        env = {**os.environ, **cluster.env}
        # The partition full: everything submitted from now on waits.
        cluster.run("sbatch", "-A", "vision", "-p", "gpu", "-N", "2", "--gres=gpu:4", "-o", "/dev/null", "--wrap", "sleep 3600")
        hub = sc.start_hub(cluster, state)
        token = hub.token("alice")
        api = f"{hub.url}/services/podbay/api/v1"
        body = {"name": "bench", "image": "base", "gpus": 1, "command": ["true"]}

        def via_podbay(client: httpx.Client) -> float:
            return timed(lambda: client.post("/jobs", json=body).raise_for_status())

        def via_sbatch(_client) -> float:
            return timed(lambda: subprocess.run(
                ["sbatch", "--parsable", "-A", "contract-vision", "-p", "gpu", "--gres=gpu:1", "-J", "plain", "-o", "/dev/null",
                 "--wrap", "true"], env=env, check=True, capture_output=True))

        results: dict[str, list[float]] = {}
        for name, submit in (("sbatch", via_sbatch), ("podbay", via_podbay)):
            def client_run(_i: int, submit=submit) -> list[float]:
                with httpx.Client(base_url=api, headers={"Authorization": f"token {token}"}, timeout=120) as client:
                    return [submit(client) for _ in range(args.n // args.c)]
            with ThreadPoolExecutor(args.c) as pool:
                results[name] = [t for times in pool.map(client_run, range(args.c)) for t in times]
            print(f"  {name}: {len(results[name])} submits, p50 {pct(results[name], 50) * 1000:.1f} ms, "
                  f"p95 {pct(results[name], 95) * 1000:.1f} ms", flush=True)

        with httpx.Client(base_url=api, headers={"Authorization": f"token {token}"}, timeout=120) as client:
            deadline, t0 = time.monotonic() + 1800, time.monotonic()
            while True:
                jobs = client.get("/jobs", params={"state": "queued"}).json()
                handed = sum(1 for j in jobs if j["message"].startswith("queued in slurm: "))
                if handed >= args.n:
                    break
                if time.monotonic() > deadline:
                    raise SystemExit(f"only {handed} of {args.n} jobs were handed to Slurm")
                time.sleep(2)
            print(f"  podbay's scheduler handed {args.n} jobs to Slurm in {time.monotonic() - t0:.0f} s", flush=True)
            listing = [timed(lambda: client.get("/jobs").raise_for_status()) for _ in range(20)]
        squeue = [timed(lambda: subprocess.run(["squeue", "-h", "-t", "PD", "-o", "%i|%j|%T|%r|%u"], env=env,
                                               check=True, capture_output=True)) for _ in range(20)]
        pending = subprocess.run(["squeue", "-h", "-t", "PD", "-o", "%i"], env=env, capture_output=True,
                                 text=True).stdout.split()
    finally:
        if hub is not None:
            hub.stop()
        cluster.stop()
        shutil.rmtree(state, ignore_errors=True)
    print(f"submit of {args.n} jobs from {args.c} clients to a full partition:")
    for name in ("sbatch", "podbay"):
        print(f"  {name}: p50 {pct(results[name], 50) * 1000:.1f} ms, p95 {pct(results[name], 95) * 1000:.1f} ms")
    print(f"  ratio podbay/sbatch: p50 {pct(results['podbay'], 50) / pct(results['sbatch'], 50):.2f}, "
          f"p95 {pct(results['podbay'], 95) / pct(results['sbatch'], 95):.2f}")
    lm, sm = statistics.median(listing), statistics.median(squeue)
    print(f"listing with {len(pending)} jobs pending in Slurm: GET /jobs median {lm * 1000:.1f} ms, "
          f"squeue median {sm * 1000:.1f} ms, ratio {lm / sm:.2f} (target <= 1.5)")


if __name__ == "__main__":
    main()
