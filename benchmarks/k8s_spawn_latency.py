"""Spawn latency on the kubernetes backend: podbay-kubernetes against plain KubeSpawner 7.1.

Two hubs run side by side on 127.0.0.1 against one stand-in cluster (tests/standins/k8s_cluster.py:
the emulated API server with its scheduler, kubelet and device plugin, which runs each pod's
JupyterLab as a host process). The same workspace is started N times on each, alternating,
and each time is the REST call's duration until the server answers; podbay's asks for a
MIG slice (its quota claim, capacity check, pod overrides, home PVC), plain KubeSpawner's for
nothing. Prints the medians and the ratio podbay/plain (target <= 1.05).

    .venv/bin/python benchmarks/k8s_spawn_latency.py -n 11
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.spawn_latency import spawn_once, summarize  # noqa: E402
from tests.harness import Hub, free_port_block, stand_in_cluster_running  # noqa: E402

CONTRACT = ROOT / "tests" / "data" / "podbay-contract.yaml"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=11, help="spawns per hub (default %(default)s)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="podbay-k8s-spawn-"))  # kept if the run fails, for its logs
    if True:
        with stand_in_cluster_running(tmp, ROOT / "tests" / "data" / "k8s-contract-nodes.yaml",
                                      namespace="podbay-contract") as (_, kubeconfig):
            hubs = {}
            for name, spawner in (("plain", "benchmarks.plain_spawners:kubernetes"), ("podbay", None)):
                cfg = yaml.safe_load(CONTRACT.read_text())
                cfg["backend"] = "kubernetes"
                # Each hub its own namespace: both name their pod jupyter-alice--bench.
                cfg["kubernetes"]["namespace"] = f"bench-{name}"
                (tmp / name).mkdir()
                (tmp / name / "podbay.yaml").write_text(yaml.safe_dump(cfg))
                hubs[name] = Hub(tmp / name / "podbay.yaml", tmp / name, free_port_block(), keep_workspaces=False,
                                 spawner=spawner, extra_env={"KUBECONFIG": str(kubeconfig), "PYTHONPATH": str(ROOT)})
                hubs[name].start()
            options = {"plain": None, "podbay": {"profile": "mig-1g.10gb", "image": "base"}}
            try:
                for name in ("plain", "podbay"):  # one warm-up each (imports, the home PVC)
                    spawn_once(hubs[name], options[name])
                times: dict[str, list[float]] = {"plain": [], "podbay": []}
                for i in range(args.n):
                    order = ["plain", "podbay"] if i % 2 == 0 else ["podbay", "plain"]
                    for name in order:
                        times[name].append(spawn_once(hubs[name], options[name]))
                    print(f"  round {i + 1}: plain {times['plain'][-1]:.3f}s  podbay {times['podbay'][-1]:.3f}s",
                          flush=True)
            finally:
                for hub in hubs.values():
                    hub.stop()
    shutil.rmtree(tmp, ignore_errors=True)
    summarize(times, f"{args.n}, against the stand-in cluster", "plain KubeSpawner",
              "podbay-kubernetes (mig-1g.10gb)")


if __name__ == "__main__":
    main()
