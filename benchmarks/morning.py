"""A morning at 9 a.m.: the requests people's browsers, TUIs and CLIs make, against the same
hub twice in one run: idle (its users exist, nothing runs, an empty book), then in the
morning's state (200 users, 300 workspaces running, 1,000 jobs in the book).

A real hub (JupyterHub, configurable-http-proxy, podbay's service, the local backend with its
quota book on SQLite); only the workspaces are stand-ins (benchmarks/storm_singleuser.py), so
that 300 of them fit on one machine. 100 of the 300 hold a whole GPU of a 150-server
inventory (1,200 GPUs), the rest none. The jobs are the book's history (finished ones), as a
month of training leaves it.

Each phase runs the same mix for the same time from the same number of clients, each client
one person going round what they look at: their workspaces (JupyterHub's API, as the TUI
asks), the catalog, capacity, their standing, their jobs, their notices. Reported, per
request: p50, p95 and the longest, idle and morning, and the morning's p95 over the idle
one's; the requests over 2 s; the resident memory of the hub, the service and the proxy in
each phase. Targets: p95 per request <= 1.2x the idle hub's, none over 2 s.

    .venv/bin/python benchmarks/morning.py [--users 200] [--workspaces 300] [--jobs 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from spawn_storm import start_hub  # noqa: E402
from tests.harness import free_port_block  # noqa: E402

TEAMS = 5


def morning_config(path: Path, users: int, gpu_nodes: int) -> list[str]:
    cfg = yaml.safe_load((ROOT / "config" / "podbay.yaml").read_text())
    names = [f"u{i:03d}" for i in range(users)]
    for t in range(TEAMS):
        cfg["teams"][f"team-{t}"] = {"members": names[t::TEAMS],
                                     "quota": {"gpu_units": 1000, "workspaces_per_user": 4, "job_gpus": 64}}
    for n in range(gpu_nodes):
        cfg["nodes"].append({"name": f"dgx-{n:03d}", "pool": "dev", "gpus": [
            {"index": i, "uuid": f"GPU-{uuid.uuid4()}", "model": "NVIDIA A100-SXM4-80GB", "memory_mib": 81920}
            for i in range(8)]})
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return names


def fill_jobs(ledger_url: str, users: list[str], jobs: int) -> None:
    """Finished jobs: the book's history (a queued one would run)."""
    from podbay.hub.jobs import JobRow
    from podbay.hub.quota import QuotaBook

    book = QuotaBook(ledger_url)
    now = time.time()
    with book.write_session() as s, s.begin():
        for j in range(jobs):
            user = users[j % len(users)]
            state = ("succeeded", "failed", "cancelled")[j % 3]
            s.add(JobRow(name=f"run-{j}", user=user, team=f"team-{users.index(user) % TEAMS}", image="pytorch",
                         command=json.dumps(["python", "train.py", f"--seed={j}"]), workdir="/tmp", volumes="[]",
                         env="{}", gpus_per_node=1 + j % 4, pool="training", state=state,
                         exit_code=0 if state == "succeeded" else 1, message=state, devices="[]",
                         created=now - 86400 * 30 + j * 2000, started=now - 86400 * 30 + j * 2000 + 60,
                         finished=now - 86400 * 30 + j * 2000 + 3600, ref="{}"))
    book.dispose()


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def processes(hub_pid: int) -> dict[str, int]:
    """The hub, its service and its proxy, by their command lines."""
    found = {"hub": hub_pid}
    children = subprocess.run(["pgrep", "-a", "-P", str(hub_pid)], capture_output=True, text=True).stdout
    for line in children.splitlines():
        pid, args = line.split(None, 1)
        if "podbay.hub.service" in args:
            found["service"] = int(pid)
        elif "configurable-http-proxy" in args:
            found["proxy"] = int(pid)
    return found


def requests_of(user: str) -> list[tuple[str, str]]:
    api = "/services/podbay/api/v1"
    return [("hub: GET users/{user} (workspaces)", f"/hub/api/users/{user}?include_stopped_servers=1"),
            ("hub: GET user (whoami)", "/hub/api/user"),
            ("podbay: GET catalog", f"{api}/catalog"),
            ("podbay: GET capacity", f"{api}/capacity"),
            ("podbay: GET me", f"{api}/me"),
            ("podbay: GET jobs (50)", f"{api}/jobs?limit=50"),
            ("podbay: GET notices", f"{api}/notices")]


async def mix(url: str, tokens: dict[str, str], clients: int, seconds: float) -> dict[str, list[float]]:
    latencies: dict[str, list[float]] = defaultdict(list)
    people = list(tokens)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as http:
        deadline = time.monotonic() + seconds

        async def person(k: int):
            n = k
            while time.monotonic() < deadline:
                user = people[n % len(people)]
                n += clients
                for name, path in requests_of(user):
                    t0 = time.perf_counter()
                    r = await http.get(path, headers={"Authorization": f"token {tokens[user]}"})
                    latencies[name].append(time.perf_counter() - t0)
                    if r.status_code != 200:
                        # Counted and reported, not fatal: the run goes on, as people would.
                        latencies[f"error: {name}: {r.status_code}"].append(time.perf_counter() - t0)

        await asyncio.gather(*(person(k) for k in range(clients)))
    return latencies


async def start_all(url: str, admin: str, wanted: list[tuple[str, str, str]]) -> None:
    """The morning's workspaces, 50 starts at a time, each until it is ready."""
    async with httpx.AsyncClient(base_url=f"{url}/hub/api", timeout=180,
                                 headers={"Authorization": f"token {admin}"}) as http:
        gate = asyncio.Semaphore(50)

        async def one(user, name, profile):
            async with gate:
                r = await http.post(f"/users/{user}/servers/{name}", json={"user_options": {"profile": profile}})
                if r.status_code not in (201, 202):
                    raise SystemExit(f"start {user}/{name}: {r.status_code} {r.text[:300]}")
                while not (await http.get(f"/users/{user}")).json()["servers"][name]["ready"]:
                    await asyncio.sleep(0.5)

        await asyncio.gather(*(one(*w) for w in wanted))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=200)
    ap.add_argument("--workspaces", type=int, default=300)
    ap.add_argument("--gpu-workspaces", type=int, default=100)
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--clients", type=int, default=20, help="people looking at once (default %(default)s)")
    ap.add_argument("--seconds", type=float, default=20, help="per phase (default %(default)s)")
    ap.add_argument("--keep", type=Path, help="keep the hub's log (the proxy's and the service's too) here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        users = morning_config(data / "podbay.yaml", args.users, gpu_nodes=150)
        port = free_port_block()
        url = f"http://127.0.0.1:{port}"
        hub, env = start_hub(data, data / "podbay.yaml", port)
        phases: dict[str, dict[str, list[float]]] = {}
        memory: dict[str, dict[str, float]] = {}
        try:
            admin = subprocess.run([sys.executable, "-m", "jupyterhub", "token", "admin", "-f",
                                    str(data / "jupyterhub_config.py")], cwd=data, env=env, capture_output=True,
                                   text=True, check=True).stdout.strip().splitlines()[-1]
            with httpx.Client(base_url=f"{url}/hub/api", headers={"Authorization": f"token {admin}"},
                              timeout=60) as api:
                # Team members are users already (podbay loads teams as groups); 409: all were.
                made = api.post("/users", json={"usernames": users})
                if made.status_code != 409:
                    made.raise_for_status()
                tokens = {u: api.post(f"/users/{u}/tokens", json={"note": "morning"}).json()["token"] for u in users}
            procs = processes(hub.pid)
            asyncio.run(mix(url, tokens, 2, 2))  # warm-up
            phases["idle"] = asyncio.run(mix(url, tokens, args.clients, args.seconds))
            memory["idle"] = {name: rss_mib(pid) for name, pid in procs.items()}

            fill_jobs(f"sqlite:///{data / 'ledger.sqlite'}", users, args.jobs)
            wanted = [(users[i % len(users)], f"w{i // len(users)}",
                       "gpu-1" if i < args.gpu_workspaces else "cpu") for i in range(args.workspaces)]
            t0 = time.perf_counter()
            asyncio.run(start_all(url, admin, wanted))
            started = time.perf_counter() - t0
            phases["morning"] = asyncio.run(mix(url, tokens, args.clients, args.seconds))
            memory["morning"] = {name: rss_mib(pid) for name, pid in procs.items()}
        finally:
            hub.send_signal(signal.SIGTERM)
            try:
                hub.wait(120)
            except subprocess.TimeoutExpired:
                os.killpg(hub.pid, signal.SIGKILL)
            if args.keep:
                args.keep.mkdir(parents=True, exist_ok=True)
                shutil.copy(data / "hub.log", args.keep / "hub.log")

    def pct(xs: list[float], p: float) -> float:
        xs = sorted(xs)
        return xs[min(len(xs) - 1, int(len(xs) * p))] * 1000

    print(f"{args.users} users; morning: {args.workspaces} workspaces running ({args.gpu_workspaces} with a GPU; "
          f"all started in {started:.0f} s), {args.jobs} jobs in the book; {args.clients} people looking at once, "
          f"{args.seconds:.0f} s per phase, every request through configurable-http-proxy")
    print(f"{'request':<36} {'idle p50/p95/max ms':>22} {'morning p50/p95/max ms':>24} {'p95 ratio':>10}")
    worst = 0.0
    over = 0
    errors = {f"{phase}: {name[7:]}": len(xs) for phase, p in phases.items() for name, xs in p.items()
              if name.startswith("error: ")}
    for name in [n for n in phases["idle"] if not n.startswith("error: ")]:
        idle, busy = phases["idle"][name], phases["morning"][name]
        worst = max(worst, max(busy), max(idle))
        over += sum(1 for x in busy + idle if x > 2.0)
        print(f"{name:<36} {pct(idle, .5):6.1f}/{pct(idle, .95):6.1f}/{max(idle) * 1000:6.0f}   "
              f"{pct(busy, .5):6.1f}/{pct(busy, .95):6.1f}/{max(busy) * 1000:6.0f}   "
              f"{pct(busy, .95) / pct(idle, .95):8.2f}x")
    n = sum(len(v) for p in phases.values() for k, v in p.items() if not k.startswith("error: "))
    print(f"requests: {n}; over 2 s: {over} (target 0); longest {worst * 1000:.0f} ms; answered other than 200: "
          f"{sum(errors.values())} (target 0){''.join(f'; {k} ×{v}' for k, v in errors.items())}")
    print("resident memory, idle → morning: " + ", ".join(
        f"{name} {memory['idle'][name]:.0f} → {memory['morning'][name]:.0f} MiB" for name in memory["idle"]))
    print("targets: each request's p95 <= 1.2x the idle hub's; none over 2 s")


if __name__ == "__main__":
    main()
