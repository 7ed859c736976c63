"""A DCGM exporter stand-in for the tests: dcgm-exporter's text format (the label set of the
recorded outputs in fixtures/gpu/dcgm/), served on the loopback with values a test changes."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def exporter_text(gpus: dict[str, float], mig: dict[tuple[str, int, str], float] = (), host="dev-01",
                  pods: dict[str, tuple[str, str]] | None = None, jobs: dict[str, str] | None = None) -> str:
    """What dcgm-exporter 3.x/4.x serves (the fixtures' label set), for the given values; with
    `pods` ({uuid: (namespace, pod)}) as in Kubernetes mode, where a GPU in use carries its
    pod's labels and a free one empty ones; with `jobs` ({uuid: Slurm job id}) as with its HPC
    job mapping, where a GPU a job's file names carries `hpc_job` and a free one none."""
    lines = ["# HELP DCGM_FI_DEV_GPU_UTIL GPU utilization (in %).", "# TYPE DCGM_FI_DEV_GPU_UTIL gauge"]
    for i, (uuid, v) in enumerate(gpus.items()):
        mapped = ""
        if pods is not None:
            namespace, pod = pods.get(uuid, ("", ""))
            mapped = f',container="{"notebook" if pod else ""}",namespace="{namespace}",pod="{pod}"'
        if jobs and uuid in jobs:
            mapped += f',hpc_job="{jobs[uuid]}"'
        lines.append(f'DCGM_FI_DEV_GPU_UTIL{{gpu="{i}",UUID="{uuid}",device="nvidia{i}",modelName="NVIDIA A100-SXM4-80GB",'
                     f'Hostname="{host}",DCGM_FI_DRIVER_VERSION="550.54.15"{mapped}}} {v:g}')
    lines += ["# HELP DCGM_FI_PROF_GR_ENGINE_ACTIVE Ratio of time the graphics engine is active.",
              "# TYPE DCGM_FI_PROF_GR_ENGINE_ACTIVE gauge"]
    for (uuid, gi, profile), v in dict(mig).items():
        lines.append(f'DCGM_FI_PROF_GR_ENGINE_ACTIVE{{gpu="0",UUID="{uuid}",device="nvidia0",modelName="NVIDIA A100-SXM4-80GB",'
                     f'GPU_I_PROFILE="{profile}",GPU_I_ID="{gi}",Hostname="{host}"}} {v:.6f}')
    return "\n".join(lines) + "\n"


class Exporter:
    """dcgm-exporter's /metrics on the loopback for these GPUs, at `default` percent unless a
    test sets one (`util[uuid] = …`), changing as the test goes."""

    def __init__(self, uuids: list[str], default: float, pods: dict[str, tuple[str, str]] | None = None):
        self.util = {u: default for u in uuids}
        self.pods = pods
        self.jobs: dict[str, str] = {}
        self.scrapes = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                outer.scrapes += 1
                body = exporter_text(dict(outer.util), pods=outer.pods, jobs=dict(outer.jobs)).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/metrics"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
