"""Spawn latency: podbay-local against plain JupyterHub (SimpleLocalProcessSpawner).

Two hubs run side by side on 127.0.0.1, each with configurable-http-proxy. The same
JupyterLab workspace is started N times on each, alternating, and each time is the REST
call's duration until the server answers (JupyterHub returns 201 once the server is up).
Prints the medians and the ratio podbay/plain (target ≤ 1.05).

    .venv/bin/python benchmarks/spawn_latency.py -n 15
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
# The hub imports the plain spawner from benchmarks/plain_spawners.py.
PLAIN_ENV = {"PYTHONPATH": str(Path(__file__).resolve().parent.parent)}

from tests.harness import TEST_CONFIG, Hub, free_port_block  # noqa: E402


def spawn_once(hub: Hub, options: dict | None) -> float:
    with hub.api("alice") as api:
        t0 = time.perf_counter()
        r = api.post("/users/alice/servers/bench", json={"user_options": options or {}})
        if r.status_code == 202:  # slower than the hub's slow_spawn_timeout: wait for ready
            hub.wait_ready("alice", "bench")
        elapsed = time.perf_counter() - t0
        if r.status_code not in (201, 202):
            raise SystemExit(f"spawn failed: {r.status_code} {r.text}")
    hub.stop_server("alice", "bench")
    return elapsed


def summarize(times: dict[str, list[float]], n: str, plain: str, podbay: str) -> None:
    """Medians of the alternating runs and the ratio podbay/plain (target <= 1.05)."""
    ratios = [p / q for p, q in zip(times["podbay"], times["plain"])]
    mp, mq = statistics.median(times["podbay"]), statistics.median(times["plain"])
    print(f"spawns per hub: {n}")
    print(f"median {plain}: {mq:.3f}s")
    print(f"median {podbay}: {mp:.3f}s")
    print(f"ratio of medians podbay/plain: {mp / mq:.3f}  (median of per-round ratios "
          f"{statistics.median(ratios):.3f}; target <= 1.05)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=15, help="spawns per hub (default %(default)s)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        plain = Hub(TEST_CONFIG, Path(tmp) / "plain", free_port_block(), keep_workspaces=False,
                    spawner="benchmarks.plain_spawners:simple", extra_env=PLAIN_ENV)
        plain.data_dir.mkdir()
        plain.start()
        podbay = Hub(TEST_CONFIG, Path(tmp) / "podbay", free_port_block(), keep_workspaces=False)
        podbay.data_dir.mkdir()
        podbay.start()
        try:
            # One warm-up each: first imports fill the page cache.
            spawn_once(plain, None)
            spawn_once(podbay, {"profile": "mig-1g.10gb"})
            times: dict[str, list[float]] = {"plain": [], "podbay": []}
            for i in range(args.n):
                order = [("plain", plain, None), ("podbay", podbay, {"profile": "mig-1g.10gb"})]
                for name, hub, opts in (order if i % 2 == 0 else order[::-1]):
                    times[name].append(spawn_once(hub, opts))
                print(f"  round {i + 1}: plain {times['plain'][-1]:.3f}s  podbay {times['podbay'][-1]:.3f}s",
                      flush=True)
        finally:
            plain.stop()
            podbay.stop()
    summarize(times, str(args.n), "plain SimpleLocalProcessSpawner", "podbay-local (mig-1g.10gb claim)")


if __name__ == "__main__":
    main()
