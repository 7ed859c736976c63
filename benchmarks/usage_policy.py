"""GPU usage at scale: one idle-policy round over 2,000 held devices with a week of history
each, and the showback query over a month for 100 users, against the hub's own
`GET /hub/api/users` on the same 100 users.

1. Policy round (in process, as the service runs it): 2,000 open GPU workspaces (one whole GPU
   each, 250 nodes × 8) in a SQLite quota book that already holds a week of their hourly
   utilisation (168 rows each, as a week of 1-minute rounds leaves them). Each round reads
   2,000 DCGM readings (the exporter's text format, parsed with prometheus-client), matches
   them to the holdings, applies the idle rules and writes the round. Prints per-round
   p50/p95 and the database's size.
2. Showback over HTTP: a real `podbay up` whose book holds a month of 100 users' holdings
   (one GPU workspace a day each, measured every hour). Sequential GETs of
   `/services/podbay/api/v1/usage?by=user` (a month) and of `/hub/api/users` (100 users),
   both as an admin through configurable-http-proxy: p50/p95 and the ratio.

    .venv/bin/python benchmarks/usage_policy.py [--rounds 30] [--requests 200]
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

import httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from podbay.hub.config import parse_config  # noqa: E402
from podbay.hub.inventory import Inventory  # noqa: E402
from podbay.hub.quota import QuotaBook  # noqa: E402
from podbay.hub.quota.database import HoldingRow, UsageHourRow  # noqa: E402
from podbay.hub.usage.policy import Sampler  # noqa: E402
from podbay.hub.usage.sources import parse_dcgm  # noqa: E402
from podbay.hub.usage.store import UsageStore  # noqa: E402
from tests.harness import TEST_CONFIG, Hub, free_port_block  # noqa: E402
from tests.standins.dcgm_exporter import exporter_text  # noqa: E402

H = 3600


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))] * 1000


def big_config(nodes: int) -> dict:
    cfg = yaml.safe_load(TEST_CONFIG.read_text())
    cfg["nodes"] = [{"name": f"dgx-{n:03d}", "pool": "dev", "gpus": [
        {"index": i, "uuid": f"GPU-{uuid.UUID(int=n * 8 + i + 1)}", "model": "NVIDIA A100-SXM4-80GB",
         "memory_mib": 81920} for i in range(8)]} for n in range(nodes)] + [
        {"name": "train-01", "pool": "training", "gpus": []}]
    cfg["profiles"] = [{"id": "cpu"}, {"id": "gpu-1"}]
    cfg["usage"] = {"interval": 60}
    cfg["idle"] = {"rules": [{"pools": ["dev"], "below": 5, "after": "2h", "warn_before": "30m",
                              "action": "release-gpu"}]}
    return cfg


class TextSource:
    """The exporters' answers as text, parsed each round as the dcgm source does."""

    def __init__(self, text: str):
        self.text = text

    async def read(self):
        return parse_dcgm(self.text)

    async def aclose(self):
        pass


def policy_round(tmp: Path, devices: int, rounds: int) -> None:
    cfg = parse_config(big_config(devices // 8))
    inventory = Inventory.from_config(cfg)
    book = QuotaBook(f"sqlite:///{tmp / 'policy.sqlite'}")
    now = time.time()
    week = 7 * 24
    gpus = [d for d in inventory.devices if d.kind == "full"][:devices]
    with book.write_session() as s, s.begin():
        for i, d in enumerate(gpus, 1):
            s.add(HoldingRow(id=i, key=f"workspace:user{i % 100}/ws{i}", kind="workspace", user=f"user{i % 100}",
                             team="vision", profile="gpu-1", pool="dev", units_num=1, units_den=1, gpus=1,
                             devices=f'[["{d.node}", "{d.visible_id}"]]', ref="{}", started=now - week * H,
                             samples=week * 60, util_sum=week * 60 * 40.0, util_max=100.0, last_sample=now - 60))
        s.flush()
        hour0 = int(now // H) - week
        s.execute(UsageHourRow.__table__.insert(), [
            {"holding_id": i, "hour": hour0 + h, "samples": 60, "util_sum": 60 * (40.0 if i % 4 else 0.0)}
            for i in range(1, len(gpus) + 1) for h in range(week)])
    # Three in four busy, one in four idle (their clocks run; none reaches the action here).
    text = exporter_text({d.visible_id: (55.0 if i % 4 else 0.0) for i, d in enumerate(gpus, 1)})
    store = UsageStore(book)
    sampler = Sampler(cfg, store, inventory, None, source=TextSource(text))
    times = []
    for r in range(rounds):
        sampler.clock = lambda r=r: now + r * 60
        t0 = time.perf_counter()
        rnd = asyncio.run(sampler.round())
        times.append(time.perf_counter() - t0)
        assert len(rnd.measured) == len(gpus)
    book.dispose()
    size = sum(p.stat().st_size for p in tmp.glob("policy.sqlite*"))
    print(f"policy round: {len(gpus)} held devices, a week of hourly history each "
          f"({len(gpus) * week:,} rows), {rounds} rounds")
    print(f"  per round: p50 {pct(times, 0.5):.0f} ms, p95 {pct(times, 0.95):.0f} ms, "
          f"mean {statistics.mean(times) * 1000:.0f} ms (read 2,000 readings, match, rules, write)")
    print(f"  database: {size / 1e6:.1f} MB ({size / len(gpus) / 1024:.1f} KiB per held device-week)")


def fill_month(data_dir: Path, users: int) -> int:
    book = QuotaBook(f"sqlite:///{data_dir / 'ledger.sqlite'}")
    now = time.time()
    start = now - 30 * 86400
    rows, hours = [], []
    hid = 0
    for u in range(users):
        for day in range(30):
            hid += 1
            t = start + day * 86400 + (u % 8) * H
            rows.append(dict(id=hid, key=f"workspace:user{u}/day{day}", kind="workspace", user=f"user{u}",
                             team=["vision", "nlp"][u % 2], profile="gpu-1", pool="dev", units_num=1,
                             units_den=1, gpus=1, devices="[]", ref="{}", started=t, ended=t + 8 * H,
                             samples=8 * 60, util_sum=8 * 60 * 30.0, util_max=90.0))
            hours += [{"holding_id": hid, "hour": int(t // H) + h, "samples": 60,
                       "util_sum": 60.0 * ((u * 7 + h * 13) % 100)} for h in range(8)]
    with book.write_session() as s, s.begin():
        s.execute(HoldingRow.__table__.insert(), rows)
        s.execute(UsageHourRow.__table__.insert(), hours)
    book.dispose()
    return len(hours)


def showback(tmp: Path, users: int, requests: int) -> None:
    config = tmp / "podbay.yaml"
    config.write_text(TEST_CONFIG.read_text())
    hub = Hub(config, tmp / "data", free_port_block(), keep_workspaces=True)
    hub.data_dir.mkdir()
    hours = fill_month(hub.data_dir, users)
    hub.start()
    try:
        with httpx.Client(base_url=hub.url, headers={"Authorization": f"token {hub.token('admin')}"},
                          timeout=60) as http:
            for u in range(users):
                r = http.post(f"/hub/api/users/user{u}")
                assert r.status_code in (201, 409), r.text
            targets = {"hub GET /hub/api/users (100 users)": "/hub/api/users",
                       "podbay GET usage?by=user (a month)": "/services/podbay/api/v1/usage?by=user"}
            results = {}
            for name, url in targets.items():
                for _ in range(10):
                    http.get(url).raise_for_status()
                lat = []
                for _ in range(requests):
                    t0 = time.perf_counter()
                    r = http.get(url)
                    lat.append(time.perf_counter() - t0)
                    r.raise_for_status()
                results[name] = lat
            got = http.get("/services/podbay/api/v1/usage?by=user").json()
            assert len(got["rows"]) == users, len(got["rows"])
    finally:
        hub.stop()
    print(f"showback: {users} users, a month: {users * 30:,} holdings, {hours:,} hourly rows; "
          f"{requests} sequential requests each, through the proxy")
    hub_p95 = pct(results["hub GET /hub/api/users (100 users)"], 0.95)
    for name, lat in results.items():
        ratio = "" if name.startswith("hub") else f"  p95 vs hub: {pct(lat, 0.95) / hub_p95:.2f}x"
        print(f"  {name:<38} p50 {pct(lat, 0.5):6.1f} ms  p95 {pct(lat, 0.95):6.1f} ms{ratio}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--users", type=int, default=100)
    ap.add_argument("--requests", type=int, default=200)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        policy_round(Path(tmp), args.devices, args.rounds)
    with tempfile.TemporaryDirectory() as tmp:
        showback(Path(tmp), args.users, args.requests)


if __name__ == "__main__":
    main()
