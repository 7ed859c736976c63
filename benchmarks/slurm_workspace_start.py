"""Time from asking for a workspace to a JupyterLab that answers through the hub, for a
workspace as a Slurm job: podbay-slurm (as the person, through sudo) against batchspawner's
SlurmSpawner (1.3, JupyterHub 6; as the hub's account), on the same real Slurm
(tests/standins/slurm_cluster.py) and the same partition, in alternating rounds.

Each round: POST the server, then ask `/user/alice/<name>/api/status` through the hub's proxy
until JupyterLab answers 200 (what a person's browser waits for), then stop it and wait
until its job has left the queue. Reported: each side's median, p90 and the ratio.

    .venv/bin/python benchmarks/slurm_workspace_start.py -n 7
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
PLAIN_ENV = {"PYTHONPATH": str(Path(__file__).resolve().parent.parent)}

from tests.standins import slurm_cluster as sc  # noqa: E402


def edit(cfg) -> None:
    cfg["profiles"] = [{"id": "cpu"}]
    cfg["pools"]["dev"]["queue"] = "debug"
    cfg["slurm"] = {**cfg["slurm"], "run_as": "person", "workspaces": "slurm", "hub_address": "127.0.0.1",
                    "workspace_bind": "127.0.0.1", "workspace_time": "30", "job_prefix": "bench"}
    cfg["cluster_accounts"] = {"table": {"alice": "pbt-alice", "bob": "pbt-bob"}}


def once(hub, name: str, cluster) -> float:
    headers = {"Authorization": f"token {hub.token('alice')}"}
    with httpx.Client(timeout=30, headers=headers) as client:
        t0 = time.perf_counter()
        r = client.post(f"{hub.url}/hub/api/users/alice/servers/{name}", json={"user_options": {"profile": "cpu"}})
        if r.status_code not in (201, 202):
            logs = "".join(p.read_text() for p in (hub.data_dir / "plain-homes").glob("*.log"))
            raise SystemExit(f"the spawn failed: {r.status_code} {r.text}\n{hub.log_path.read_text()[-3000:]}\n{logs}")
        while True:
            r = client.get(f"{hub.url}/user/alice/{name}/api/status", follow_redirects=False)
            if r.status_code == 200 and r.headers.get("content-type", "").startswith("application/json"):
                break
            if time.perf_counter() - t0 > 120:
                said = [line for line in hub.log_path.read_text().splitlines() if "api/status" not in line]
                raise SystemExit(f"{name} never answered: {r.status_code}\n" + "\n".join(said[-60:]))
            time.sleep(0.05)
        elapsed = time.perf_counter() - t0
    hub.stop_server("alice", name)
    sc.wait_for(lambda: not cluster.run("squeue", "-h", "-t", "pending,running", "-o", "%i").stdout.strip(), 60,
                "the workspace's job to leave the queue")
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=7, help="rounds (default %(default)s; at least 5)")
    args = ap.parse_args()
    import importlib.util

    if importlib.util.find_spec("batchspawner") is None:
        raise SystemExit("batchspawner is not installed: bash scripts/dev.sh test sets up the test extra, which has it")
    with tempfile.TemporaryDirectory(prefix="podbay-bench-") as tmp:
        Path(tmp).chmod(0o755)
        cluster = sc.start(Path(tmp) / "cluster")
        people = sc.people(cluster, Path("/var/tmp/podbay-tests/shared"))
        hubs = {}
        try:
            for side in ("podbay", "batchspawner"):
                folder = Path(tmp) / side
                folder.mkdir()
                hubs[side] = sc.start_hub(cluster, folder, edit, plain="benchmarks.plain_spawners:batchspawner"
                                          if side == "batchspawner" else None, extra_env=PLAIN_ENV)
            once(hubs["podbay"], "warm", cluster)  # the first start imports and caches what all others reuse
            once(hubs["batchspawner"], "warm", cluster)
            times: dict[str, list[float]] = {"podbay": [], "batchspawner": []}
            for i in range(args.n):
                for side in ("podbay", "batchspawner") if i % 2 == 0 else ("batchspawner", "podbay"):
                    times[side].append(once(hubs[side], f"b{i}", cluster))
                print(f"  round {i + 1}: podbay-slurm {times['podbay'][-1]:.2f}s  "
                      f"batchspawner {times['batchspawner'][-1]:.2f}s", flush=True)
            print(f"\n{args.n} starts each, request to a JupyterLab answering through the hub:")
            for side, xs in times.items():
                print(f"  {side:13s} median {statistics.median(xs):6.2f}s  p90 "
                      f"{statistics.quantiles(xs, n=10)[-1]:6.2f}s  min {min(xs):6.2f}s")
            print(f"  podbay-slurm / batchspawner: {statistics.median(times['podbay']) / statistics.median(times['batchspawner']):.2f}x "
                  "(median)")
        finally:
            for hub in hubs.values():
                hub.stop()
            people.remove()
            cluster.stop()


if __name__ == "__main__":
    main()
