"""Submitting Slurm jobs as the person (sudo, run_as: person) against the service's own account
(run_as: service), in one run, on the same cluster.

A real Slurm (tests/standins/slurm_cluster.py) with the identity tests' accounts and sudoers
rules (`people`). A job of the cluster's own holds all eight GPUs, so every job submitted
waits in the queue (nothing runs to skew the figures). Then rounds alternate: `-n` submits
through the slurm backend's SlurmJobs.submit as pbt-alice, `-n` as the service (root here),
`-c` at once. Reported: jobs per second and p50/p95 of one submit, each way, and the ratio
(target: as the person ≤ 1.2× the service's time per job).

    .venv/bin/python benchmarks/slurm_as_person.py -n 100 -c 4 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from podbay.hub.backends.slurm.jobs import SlurmJobs  # noqa: E402
from podbay.hub.config import parse_config  # noqa: E402
from podbay.hub.training import JobSpec  # noqa: E402
from tests.standins import slurm_cluster as sc  # noqa: E402


def backend(cluster, run_as: str, homes: Path) -> SlurmJobs:
    cfg = parse_config({
        "backend": "slurm",
        "images": [{"name": "base", "display_name": "Base", "image": "debian:12"}],
        "profiles": [{"id": "cpu"}, {"id": "gpu-1", "pools": ["training"]}],
        "pools": {"dev": {}, "training": {"queue": "gpu"}},
        "teams": {"vision": {"members": ["alice"]}},
        "cluster_accounts": {"table": {"alice": "pbt-alice"}},
        "slurm": {"conf": str(cluster.conf), "run_as": run_as, "container": "none", "time_limit": "10",
                  "job_prefix": f"b{uuid.uuid4().hex[:6]}"},
    })
    return SlurmJobs(cfg, homes)


async def submit_all(jobs: SlurmJobs, n: int, c: int, first_id: int) -> tuple[float, list[float]]:
    home = jobs.home_of("alice") or jobs.homes / "alice"
    home.mkdir(parents=True, exist_ok=True)
    gate = asyncio.Semaphore(c)
    times: list[float] = []

    async def one(i: int) -> None:
        job = JobSpec(id=first_id + i, name=f"b{i}", user="alice", image="base", command=["true"], workdir=str(home),
                      env={"HOME": str(home)}, gpus_per_node=1, pool="training", queue="gpu", team="vision",
                      created=time.time())
        async with gate:
            t0 = time.perf_counter()
            await jobs.submit(job)
            times.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    return time.perf_counter() - t0, times


def pct(xs: list[float], q: int) -> float:
    return statistics.quantiles(xs, n=100)[q - 1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=100, help="jobs each way, each round (default %(default)s)")
    ap.add_argument("-c", type=int, default=4, help="submits at once (default %(default)s)")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="podbay-bench-") as tmp:
        Path(tmp).chmod(0o755)
        cluster = sc.start(Path(tmp) / "cluster")
        people = sc.people(cluster, Path(tmp) / "shared")
        try:
            holder = cluster.run("sbatch", "--parsable", "--nodes=2", "--gres=gpu:4", "--account=vision",
                                 "--wrap=sleep 3600").stdout.strip()
            sc.wait_for(lambda: "RUNNING" in cluster.run("squeue", "-h", "-j", holder, "-o", "%T").stdout, 60,
                        "the holder job to run")
            figures = {"person": ([], []), "service": ([], [])}
            next_id = 1
            for r in range(args.rounds):
                for way in ("person", "service") if r % 2 == 0 else ("service", "person"):
                    jobs = backend(cluster, way, Path(tmp) / "homes")
                    wall, times = asyncio.run(submit_all(jobs, args.n, args.c, next_id))
                    next_id += args.n
                    figures[way][0].append(wall)
                    figures[way][1].extend(times)
                    print(f"round {r + 1} {way:8s} {args.n / wall:6.1f} jobs/s", flush=True)
                    cluster.run("scancel", f"--name={jobs.settings.job_prefix}", check=False)
                    ids = [line.split()[0] for line in cluster.run("squeue", "-h", "-o", "%i %j").stdout.splitlines()
                           if line.split()[1].startswith(jobs.settings.job_prefix + "-")]
                    if ids:
                        cluster.run("scancel", *ids, check=False)
            print(f"\n{args.rounds} rounds of {args.n} submits, {args.c} at once:")
            for way, (walls, times) in figures.items():
                rate = args.n * len(walls) / sum(walls)
                print(f"  {way:8s} {rate:6.1f} jobs/s   one submit p50 {statistics.median(times) * 1000:6.1f} ms"
                      f"  p95 {pct(times, 95) * 1000:6.1f} ms")
            ratio = sum(figures["person"][0]) / sum(figures["service"][0])
            print(f"  as the person / as the service: {ratio:.2f}x the time per job (target <= 1.2x)")
        finally:
            people.remove()
            cluster.stop()


if __name__ == "__main__":
    main()
