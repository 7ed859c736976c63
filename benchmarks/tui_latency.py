"""TUI latency.

1. Cold start to the first painted Workspaces view: the whole-process time of
   `podbay tui --first-paint` (headless; it exits right after the first paint of real
   data from a real hub), median of N runs, against the start of an empty Textual app
   (headless, exiting after its first paint: what any Textual app costs on this machine),
   the two alternating in one run. Target: <= 2.0x the empty app (and <= 0.6 s).
   `--compare TREE` also runs another checkout's TUI (its hub/ and tui/), alternating too:
   before and after a change, on the same hub and the same machine state.
2. A refresh of the Jobs view holding 5,000 jobs: the time the UI thread spends redrawing
   (fetching happens in a worker and never blocks input), median of N refreshes, and the
   longest gap the event loop saw during them. Target <= 150 ms.

    .venv/bin/python benchmarks/tui_latency.py
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from podbay.tui.app import PodbayApp  # noqa: E402
from tests.harness import TEST_CONFIG, Hub, free_port_block  # noqa: E402
from tests.unit.test_tui_snapshots import NOW, FixedClient  # noqa: E402


EMPTY_APP = """
from textual.app import App

class Empty(App):
    def on_mount(self):
        self.call_after_refresh(self.exit)

Empty().run(headless=True)
"""


def shadow(tree: Path, where: Path) -> str:
    """A folder to put first on PYTHONPATH so that `podbay.hub` and `podbay.tui` are TREE's."""
    (where / "podbay").mkdir(parents=True)
    for part in ("hub", "tui"):
        (where / "podbay" / part).symlink_to(tree.resolve() / part)
    return str(where)


def cold_start(runs: int, compare: Path | None = None) -> dict[str, list[float]]:
    with tempfile.TemporaryDirectory() as tmp:
        hub = Hub(TEST_CONFIG, Path(tmp), free_port_block(), keep_workspaces=False)
        hub.start()
        try:
            # Two workspaces, one started with the catalog's default image (no image named).
            hub.start_server("alice", "bench", {"profile": "cpu"})
            hub.start_server("alice", "named", {"profile": "cpu", "image": "base"})
            env = {**os.environ, "PODBAY_URL": hub.url, "PODBAY_TOKEN": hub.token("alice")}
            tui = [str(Path(sys.executable).parent / "podbay"), "tui", "--first-paint"]
            commands = {"podbay": (tui, env), "empty Textual app": ([sys.executable, "-c", EMPTY_APP], env)}
            if compare is not None:
                path = shadow(compare, Path(tmp) / "compare")
                commands["podbay (--compare)"] = (tui, {**env, "PYTHONPATH": path})
            times: dict[str, list[float]] = {name: [] for name in commands}
            for _ in range(runs):
                for name, (cmd, run_env) in commands.items():
                    t0 = time.perf_counter()
                    subprocess.run(cmd, env=run_env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    times[name].append(time.perf_counter() - t0)
            return times
        finally:
            hub.stop()


class ManyJobs(FixedClient):
    calls = 0

    async def jobs(self, **_):
        # Something changes on every refresh, so each one really redraws.
        self.calls += 1
        base = (await super().jobs())[0]
        return [{**base, "id": i, "name": f"job-{i}", "message": f"waiting ({self.calls})"}
                for i in range(5000, 0, -1)]


async def jobs_refresh(runs: int) -> tuple[list[float], float]:
    app = PodbayApp("http://x", "t", client=ManyJobs(), refresh_interval=3600, clock=lambda: NOW)
    draws: list[float] = []
    worst_gap = 0.0
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press(":", *"jobs", "enter")
        await pilot.pause(0.5)
        view = app.query_one("#jobs")
        stop = False

        async def heartbeat():
            nonlocal worst_gap
            last = time.perf_counter()
            while not stop:
                await asyncio.sleep(0.005)
                now = time.perf_counter()
                worst_gap = max(worst_gap, now - last)
                last = now

        beat = asyncio.create_task(heartbeat())
        for _ in range(runs):
            data = await view.load(app.client)
            t0 = time.perf_counter()
            view.show(data)
            await pilot.pause()  # let it paint
            draws.append(time.perf_counter() - t0)
        stop = True
        await beat
    return draws, worst_gap


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--compare", type=Path, help="another checkout whose TUI runs alternately too")
    args = ap.parse_args()
    starts = cold_start(args.runs, args.compare)
    draws, gap = asyncio.run(jobs_refresh(20))
    anchor = statistics.median(starts["empty Textual app"])
    print(f"cold start to the first paint (whole process, {args.runs} runs each, alternating):")
    for name, times in starts.items():
        print(f"  {name:<20} median {statistics.median(times):.3f} s, max {max(times):.3f} s, "
              f"{statistics.median(times) / anchor:.2f}x the empty app")
    print("  (target: podbay <= 2.0x the empty app, and <= 0.6 s)")
    print(f"Jobs view refresh with 5,000 jobs (a page of 200 shown, / filters to the rest; 20 runs): "
          f"median {statistics.median(draws) * 1000:.0f} ms, max {max(draws) * 1000:.0f} ms  (target <= 150 ms)")
    print(f"longest event-loop stall during those refreshes: {gap * 1000:.0f} ms")


if __name__ == "__main__":
    main()
