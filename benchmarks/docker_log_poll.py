"""What one poll of a running docker job's output costs once the job has written a lot.

A follower (`podbay jobs logs -f`, the TUI's log view) asks for the output from its offset
every 0.2 s. The job here writes --mb MB and then sleeps; the follower has read all of it,
so each poll finds nothing new. Measured, alternating, in one run:

- podbay: DockerBackend.output_from(ref, offset) (what read_logs reads): the output was streamed once into the
  job's spool, so a poll is a seek in a file;
- whole: what a backend that asks the engine for the container's log on each poll pays
  (`docker logs`, as read_logs did before the spool), sliced at the offset.

Prints the median seconds per poll of each and their ratio. Needs a Docker engine and the
test image (`podbay images build base --config tests/data/podbay-docker.yaml`):

    .venv/bin/python benchmarks/docker_log_poll.py --mb 50 -n 21
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.harness import DOCKER_CONFIG  # noqa: E402


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=int, default=50, help="output the job writes, in MB (default %(default)s)")
    ap.add_argument("-n", type=int, default=21, help="polls of each kind (default %(default)s)")
    args = ap.parse_args()
    from podbay.hub.config import load_config
    from podbay.hub.backends.docker.images import docker_client
    from podbay.hub.training import JobSpec
    from podbay.hub.backends.docker.jobs import DockerBackend

    docker = docker_client()
    docker.images.get("podbay/base:2026.11")  # fails with a clear message if not built
    # 1 MB is 16384 lines of 64 bytes; then the job waits, still running, for the polls.
    script = (f"python3 -c \"import sys; line = b'x' * 63 + b'\\n'; "
              f"[sys.stdout.buffer.write(line * 16384) for _ in range({args.mb})]\"; sleep 3600")
    total = args.mb * 16384 * 64
    with tempfile.TemporaryDirectory() as tmp:
        backend = DockerBackend(load_config(DOCKER_CONFIG), Path(tmp) / "jobs", client=docker)
        ref = {**await backend.submit(JobSpec(id=990001, name="bench-logs", user="alice", image="base",
                                              workdir="/home/jovyan", env={}, command=["sh", "-c", script])),
               "job_id": 990001}
        try:
            offset, deadline = 0, time.monotonic() + 300
            while offset < total:
                assert time.monotonic() < deadline, f"the job wrote {offset} of {total} bytes"
                offset += len(backend.output_from(ref, offset))
                await asyncio.sleep(0.05)
            times: dict[str, list[float]] = {"podbay": [], "whole": []}
            polls = {
                "podbay": lambda: backend.output_from(ref, offset),
                "whole": lambda: docker.api.logs(ref["container"], stdout=True, stderr=True)[offset:],
            }
            for i in range(args.n):
                for name in (["podbay", "whole"] if i % 2 == 0 else ["whole", "podbay"]):
                    t0 = time.perf_counter()
                    assert polls[name]() == b""
                    times[name].append(time.perf_counter() - t0)
        finally:
            await backend.cancel(ref)
    mp, mw = statistics.median(times["podbay"]), statistics.median(times["whole"])
    print(f"output: {args.mb} MB, polls of each: {args.n}")
    print(f"median poll, podbay (spool): {mp * 1000:.3f} ms")
    print(f"median poll, whole log from the engine: {mw * 1000:.1f} ms")
    print(f"ratio whole/podbay: {mw / mp:.0f}x")


if __name__ == "__main__":
    asyncio.run(main())
