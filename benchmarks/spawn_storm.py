"""A spawn storm: 100 start requests at once through the hub's REST API, from 50 users in
five teams, against the demo inventory (config/podbay.yaml: 9 MIG 1g.10gb, a 3g.40gb, 8
time-sliced quarters, 4 whole GPUs in the dev pool).

A real hub (JupyterHub, configurable-http-proxy, podbay-local with its ledger on SQLite);
only the workspace is a stand-in (benchmarks/storm_singleuser.py answers HTTP where the hub
says), so that what is measured is podbay's part and the hub's. Reported:

- errors other than clear quota or capacity refusals (target 0), including spawns that were
  accepted and then failed;
- devices claimed beyond what exists (target 0): from the ledger, and from the running
  workspace processes' own CUDA_VISIBLE_DEVICES, per device against its capacity (1 for a
  MIG slice or a whole GPU, `replicas` for a time-sliced one);
- p50 / p95 of podbay's quota-and-claim step during the storm (target p95 <= 50 ms), as
  the spawner logs it for every claim and refusal;
- p50 / p95 from each start request to its workspace running as the user sees it (the POST
  answered 201: the hub answers once the server is up and routed, the hub's slow-spawn answer,
  202, put off past the storm), and the hub's own spawn time ("took … seconds to start").

With `--spawner plain` the same storm runs on plain JupyterHub (SimpleLocalProcessSpawner,
benchmarks/plain_spawners.py) with the same stand-in and hub settings. `--profiles cpu` asks
every start for the cpu profile under quotas that grant them all, so that podbay starts as
many workspaces as plain JupyterHub does. `--against-plain N` runs that storm N times on each,
in turns (a busy machine drifts between runs): "podbay over JupyterHub" per pair and their
median (target: podbay's request-to-running p95 within 0.5 s of plain JupyterHub's). A data
directory on tmpfs (TMPDIR=/dev/shm) keeps the disk's fsyncs (JupyterHub's own database
syncs every commit) out of the figures.

    .venv/bin/python benchmarks/spawn_storm.py
    .venv/bin/python benchmarks/spawn_storm.py --spawner plain --profiles cpu
    TMPDIR=/dev/shm .venv/bin/python benchmarks/spawn_storm.py --against-plain 3
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.harness import environ_of, free_port_block  # noqa: E402

PROFILES = ["mig-1g.10gb", "shared-1/4", "gpu-1", "cpu", "mig-3g.40gb"]
TOOK = re.compile(r"User (\S+) took ([\d.]+) seconds to start")
TIMING = re.compile(r"workspace:(\S+) (?:claimed .*\(([\d.]+) ms; ([\d.]+) ms with|refused \((quota|capacity)\) in ([\d.]+) ms)")


def storm_config(path: Path, users: int, teams: int, per_user: int = 2) -> list[str]:
    cfg = yaml.safe_load((ROOT / "config" / "podbay.yaml").read_text())
    names = [f"u{i:02d}" for i in range(users)]
    for t in range(teams):
        cfg["teams"][f"storm-{t}"] = {"members": names[t::teams],
                                      "quota": {"gpu_units": 3, "workspaces_per_user": max(2, per_user),
                                                "job_gpus": 0}}
    path.write_text(yaml.safe_dump(cfg))
    return names


def cpu_seconds(hub: int) -> Counter:
    """CPU seconds so far (user and system) of the hub's event loop (its main thread), its other
    threads, and the processes it started: the proxy, podbay's service, the workspaces. Less
    swayed by the rest of a busy machine than the wall clock: what each part costs."""
    tick = os.sysconf("SC_CLK_TCK")

    def used(stat: Path) -> float:
        fields = stat.read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / tick

    out: Counter = Counter()
    for task in Path(f"/proc/{hub}/task").iterdir():
        try:
            out["loop" if int(task.name) == hub else "threads"] += used(task / "stat")
        except OSError:
            pass
    for proc in Path("/proc").iterdir():
        try:
            if not proc.name.isdigit() or int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1]) != hub:
                continue
            cmd = (proc / "cmdline").read_bytes()
            part = ("proxy" if b"configurable-http-proxy" in cmd else "service" if b"podbay.hub.service" in cmd
                    else "workspaces")
            out[part] += used(proc / "stat") + sum(used(t / "stat") for t in (proc / "task").iterdir()
                                                   if t.name != proc.name)
        except OSError:
            pass
    return out


def start_hub(data: Path, config: Path, port: int, plain: bool = False) -> tuple[subprocess.Popen, dict]:
    (data / "jupyterhub_config.py").write_text(
        "import sys\n"
        "from podbay.hub.hubconfig import configure\n\n"
        "configure(c)  # noqa: F821\n"
        f"c.Spawner.cmd = [sys.executable, {str(ROOT / 'benchmarks' / 'storm_singleuser.py')!r}]  # noqa: F821\n"
        "c.JupyterHub.concurrent_spawn_limit = 200  # noqa: F821\n"
        # The POST answers when the workspace runs (201), not with 202 after 10 s: its answer
        # is when the user sees it running, with no polling to load the hub.
        "c.JupyterHub.tornado_settings = {**c.JupyterHub.get('tornado_settings', {}),  # noqa: F821\n"
        "                                 'slow_spawn_timeout': 600}\n")
    env = {**os.environ, "PODBAY_CONFIG": str(config), "PODBAY_DATA_DIR": str(data), "PODBAY_PORT": str(port),
           "PODBAY_DEMO_PASSWORD": "storm", "PODBAY_BACKEND": "local",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    if plain:
        env["PODBAY_PLAIN_SPAWNER"] = "benchmarks.plain_spawners:simple"
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    log = (data / "hub.log").open("ab")
    hub = subprocess.Popen([sys.executable, "-m", "jupyterhub", "-f", str(data / "jupyterhub_config.py")],
                           cwd=data, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/hub/api", timeout=2).status_code == 200:
                return hub, env
        except httpx.HTTPError:
            time.sleep(0.3)
    raise SystemExit(f"the hub did not start:\n{(data / 'hub.log').read_text()[-3000:]}")


async def storm(url: str, tokens: dict[str, str], per_user: int, profiles: list[str]) -> tuple[list[tuple], float]:
    requests = [(user, f"w{k}", profiles[(i * per_user + k) % len(profiles)])
                for i, user in enumerate(tokens) for k in range(per_user)]
    limits = httpx.Limits(max_connections=len(requests), max_keepalive_connections=len(requests))
    async with httpx.AsyncClient(base_url=f"{url}/hub/api", timeout=180, limits=limits) as http:
        async def one(user, ws, profile):
            sent = time.perf_counter()
            r = await http.post(f"/users/{user}/servers/{ws}", json={"user_options": {"profile": profile}},
                                headers={"Authorization": f"token {tokens[user]}"})
            return user, ws, profile, r.status_code, r.text, time.perf_counter() - sent
        t0 = time.perf_counter()
        results = await asyncio.gather(*(one(*req) for req in requests))
        return results, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=50)
    ap.add_argument("--per-user", type=int, default=2, help="start requests per user (default %(default)s)")
    ap.add_argument("--spawner", choices=("podbay", "plain"), default="podbay",
                    help="podbay's local spawner, or plain JupyterHub's SimpleLocalProcessSpawner (the anchor)")
    ap.add_argument("--profiles", choices=("mix", "cpu"), default="mix",
                    help="mix: five profiles in turn (quota and capacity refuse some); cpu: every start is granted")
    ap.add_argument("--against-plain", type=int, metavar="N", default=0,
                    help="N storms of cpu starts on podbay and on plain JupyterHub, in turns")
    ap.add_argument("--keep", type=Path, help="keep the data directory (hub.log, the ledger) in this folder")
    args = ap.parse_args()
    if not args.against_plain:
        run(args, args.spawner, args.profiles, args.keep)
        return
    over = []
    for i in range(args.against_plain):
        keep = args.keep / f"{i + 1}" if args.keep else None
        ours = run(args, "podbay", "cpu", keep and keep / "podbay")
        theirs = run(args, "plain", "cpu", keep and keep / "plain")
        over.append(ours - theirs)
        print(f"storm {i + 1}: request to running p95, podbay {ours:.2f} s, plain JupyterHub {theirs:.2f} s: "
              f"podbay over JupyterHub {ours - theirs:+.2f} s\n", flush=True)
    print(f"podbay over JupyterHub, request to running p95: median {statistics.median(over):+.2f} s, "
          f"most {max(over):+.2f} s over {len(over)} pairs  (target <= 0.5 s)")


def run(args, spawner: str, profiles: str, keep: Path | None) -> float:
    """One storm; its report printed. Returns the p95 from request to running (s)."""
    plain = spawner == "plain"
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        users = storm_config(data / "podbay.yaml", args.users, 5, args.per_user)
        port = free_port_block()
        url = f"http://127.0.0.1:{port}"
        hub, env = start_hub(data, data / "podbay.yaml", port, plain)
        try:
            admin = subprocess.run([sys.executable, "-m", "jupyterhub", "token", "admin", "-f",
                                    str(data / "jupyterhub_config.py")], cwd=data, env=env, capture_output=True,
                                   text=True, check=True).stdout.strip().splitlines()[-1]
            with httpx.Client(base_url=f"{url}/hub/api", headers={"Authorization": f"token {admin}"}) as api:
                tokens = {u: api.post(f"/users/{u}/tokens", json={"note": "storm"}).json()["token"] for u in users}
            cpu_before = cpu_seconds(hub.pid)
            results, elapsed = asyncio.run(storm(url, tokens, args.per_user,
                                                 ["cpu"] if profiles == "cpu" else PROFILES))
            cpu = cpu_seconds(hub.pid)
            cpu.subtract(cpu_before)
            outcome: Counter = Counter()
            errors, accepted, to_running = [], [], []
            for user, ws, profile, status, text, took in results:
                if status == 201:
                    to_running.append(took)
                if status in (201, 202):
                    if status == 202:
                        accepted.append((user, ws))
                    outcome["accepted"] += 1
                elif status == 403 and "Quota" in text:
                    outcome["refused: quota"] += 1
                elif status == 503 and "No capacity" in text:
                    outcome["refused: capacity"] += 1
                else:
                    errors.append((user, ws, profile, status, text[:200]))
            # Accepted spawns must come up; one that fails afterwards is an error too.
            deadline = time.monotonic() + 120
            pending = set(accepted)
            with httpx.Client(base_url=f"{url}/hub/api", headers={"Authorization": f"token {admin}"}) as api:
                while pending and time.monotonic() < deadline:
                    for user in {u for u, _ in pending}:
                        servers = api.get(f"/users/{user}").json()["servers"]
                        for u, ws in [p for p in pending if p[0] == user]:
                            s = servers.get(ws)
                            if s and s["ready"]:
                                pending.discard((u, ws))
                            elif not s or not s["pending"]:
                                errors.append((u, ws, "?", "failed after it was accepted", str(s)))
                                pending.discard((u, ws))
                    time.sleep(0.5)
            errors += [(u, ws, "?", "not ready after 120 s", "") for u, ws in pending]

            over, mismatched = (0, 0) if plain else overcommit(data, data / "podbay.yaml")
            log = (data / "hub.log").read_text()
            hub_took = [float(m.group(2)) for m in TOOK.finditer(log)]
            found = list(TIMING.finditer(log))
            steps = [float(m.group(2) or m.group(5)) for m in found]
            with_loop = [float(m.group(3)) for m in found if m.group(3)]
        finally:
            hub.send_signal(signal.SIGTERM)
            try:
                hub.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(hub.pid, signal.SIGKILL)
            if keep:
                shutil.copytree(data, keep, dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns("homes", "plain-homes", "logs"))
    print(f"{len(results)} start requests from {len(tokens)} users at once ({spawner}, {profiles} starts), "
          f"answered in {elapsed:.2f} s")
    for key in ("accepted", "refused: quota", "refused: capacity"):
        print(f"  {key}: {outcome[key]}")
    print(f"errors other than clear quota or capacity refusals: {len(errors)}  (target 0)")
    for e in errors[:10]:
        print(f"    {e}")
    print(f"devices claimed beyond what exists: {over}  (target 0; ledger and running processes; "
          f"{mismatched} workspaces whose devices differ from their claim)")
    for name, xs in (("request to running as the user sees it (POST answered 201)", to_running),
                     ("the hub's own spawn time (\"took … seconds to start\")", hub_took)):
        if len(xs) >= 2:
            qs = statistics.quantiles(xs, n=20)
            print(f"{name}, {len(xs)} workspaces: p50 {statistics.median(xs):.2f} s, p95 {qs[18]:.2f} s, "
                  f"max {max(xs):.2f} s")
    print(f"CPU the storm took: the hub's event loop {cpu['loop']:.2f} s, its other threads {cpu['threads']:.2f} s, "
          f"the proxy {cpu['proxy']:.2f} s, podbay's service {cpu['service']:.2f} s, the workspaces "
          f"{cpu['workspaces']:.2f} s")
    p95_running = statistics.quantiles(to_running, n=20)[18] if len(to_running) >= 2 else float("nan")
    if plain:
        return p95_running
    q = statistics.quantiles(steps, n=20)
    print(f"quota-and-claim step over {len(steps)} spawns (validation, quota check and claim, waits for the "
          f"ledger's write lock included): p50 {statistics.median(steps):.1f} ms, p95 {q[18]:.1f} ms, "
          f"max {max(steps):.1f} ms  (target p95 <= 50 ms)")
    ql = statistics.quantiles(with_loop, n=20)
    print(f"  the same, with the wait for the hub's busy event loop to take the result ({len(with_loop)} "
          f"granted): p50 {statistics.median(with_loop):.1f} ms, p95 {ql[18]:.1f} ms")
    return p95_running


def overcommit(data: Path, config: Path) -> tuple[int, int]:
    """Devices held beyond their capacity, by the ledger and by the processes that run."""
    from podbay.hub.config import load_config
    from podbay.hub.inventory import Inventory
    from podbay.hub.quota import QuotaBook

    inventory = Inventory.from_config(load_config(config))
    ledger = QuotaBook(f"sqlite:///{data / 'ledger.sqlite'}")
    # What each device can hold: 1 for a MIG slice or a whole GPU, `replicas` for a
    # time-sliced GPU (one inventory entry per slot, all with the GPU's UUID).
    capacity = Counter(d.visible_id for d in inventory.devices)
    by_ledger: Counter = Counter()
    by_process: Counter = Counter()
    mismatched = 0
    for alloc in ledger.allocations():
        for device in alloc.devices:
            by_ledger[device] += 1
        pid = alloc.ref.get("pid")
        if pid:
            try:
                seen = [d for d in environ_of(pid).get("CUDA_VISIBLE_DEVICES", "").split(",") if d]
            except OSError:
                continue
            for device in seen:
                by_process[device] += 1
            mismatched += sorted(set(seen)) != sorted(set(alloc.devices))
    ledger.dispose()
    over = sum(max(0, n - capacity[d]) for d, n in by_ledger.items())
    over += sum(max(0, n - capacity[d]) for d, n in by_process.items())
    return over, mismatched


if __name__ == "__main__":
    main()
