"""Spawn latency of podbay-docker against plain DockerSpawner, on the same image.

Two hubs run side by side on 127.0.0.1 with the docker backend's test catalog: podbay
(podbay-docker, a mig-1g.10gb claim and its GPU device request) and plain DockerSpawner
(host networking made to work the way its own docs suggest for issue 462, the same image,
a named home volume, remove on stop). The same workspace is started N times on each,
alternating which goes first; each time is the REST call until the server is up.
Prints the medians and the ratio podbay/plain (target <= 1.05).

Needs a Docker engine and the test image (`podbay images build base --config
tests/data/podbay-docker.yaml`, which the docker tests also do):

    .venv/bin/python benchmarks/docker_spawn_latency.py -n 11
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.spawn_latency import summarize  # noqa: E402
from tests.harness import Hub, free_port_block  # noqa: E402
from tests.harness import DOCKER_CONFIG  # noqa: E402


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=11, help="spawns per hub (default %(default)s)")
    args = ap.parse_args()
    from podbay.hub.backends.docker.images import docker_client

    docker = docker_client()
    docker.images.get("podbay/base:2026.11")  # fails with a clear message if not built
    docker_env = {"PODBAY_BACKEND": "docker"}
    podbay_opts = {"profile": "mig-1g.10gb", "image": "base"}
    with tempfile.TemporaryDirectory() as tmp:
        plain = Hub(DOCKER_CONFIG, Path(tmp) / "plain", free_port_block(), keep_workspaces=False,
                    spawner="benchmarks.plain_spawners:docker",
                    extra_env={**docker_env, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
        plain.data_dir.mkdir()
        plain.start()
        podbay = Hub(DOCKER_CONFIG, Path(tmp) / "podbay", free_port_block(), keep_workspaces=False,
                     extra_env=docker_env)
        podbay.data_dir.mkdir()
        podbay.start()
        try:
            spawn_once(plain, None)  # warm-up: page cache, home volumes created
            spawn_once(podbay, podbay_opts)
            times: dict[str, list[float]] = {"plain": [], "podbay": []}
            for i in range(args.n):
                order = [("plain", plain, None), ("podbay", podbay, podbay_opts)]
                for name, hub, opts in (order if i % 2 == 0 else order[::-1]):
                    times[name].append(spawn_once(hub, opts))
                print(f"  round {i + 1}: plain {times['plain'][-1]:.3f}s  podbay {times['podbay'][-1]:.3f}s",
                      flush=True)
        finally:
            plain.stop()
            podbay.stop()
            for c in docker.api.containers(all=True, filters={"name": "plain-alice"}):
                docker.api.remove_container(c["Id"], force=True)
    summarize(times, str(args.n), "plain DockerSpawner", "podbay-docker (mig-1g.10gb claim + device request)")


if __name__ == "__main__":
    main()
