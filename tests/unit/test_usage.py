"""GPU usage: DCGM/Prometheus/NVML readings matched to claims, the idle clock, showback
numbers from a scripted history, and /metrics as Prometheus parses it."""

from __future__ import annotations

import contextlib
import json
import re
import sys
import time
import types
from fractions import Fraction
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from podbay.hub.config import ConfigError, parse_config
from podbay.hub.inventory import Inventory
from podbay.hub.jobs import JobManager
from podbay.hub.portal import Portal
from podbay.hub.quota import QuotaBook
from podbay.hub.quota.database import HoldingRow, UsageHourRow
from podbay.hub.service import HubClient, create_app
from podbay.hub.backends.local.jobs import LocalBackend
from podbay.hub.usage.policy import IdlePolicy, Matcher, Sampler
from podbay.hub.usage.settings import parse_duration
from podbay.hub.usage.sources import Source, parse_dcgm, parse_prometheus, read_nvml
from podbay.hub.usage.store import Holding, Round, UsageStore

from tests.harness import TEST_CONFIG
from tests.standins.dcgm_exporter import exporter_text
from tests.standins.json_server import serve_json

DCGM = Path(__file__).resolve().parents[1] / "fixtures" / "gpu" / "dcgm"
GPU0 = "GPU-11111111-0000-4000-8000-000000000000"  # MIG: 3g.40gb, 2g.20gb, 2 × 1g.10gb
SHARED = "GPU-11111111-0000-4000-8000-000000000001"  # 2 slots
FULL2 = "GPU-11111111-0000-4000-8000-000000000002"


# --- reading the sources ----------------------------------------------------------------


def test_recorded_dcgm_exporter_outputs_are_read():
    t4 = parse_dcgm((DCGM / "datadog-integrations-core_dcgm_tests_fixtures_metrics.txt").read_text())
    # The T4's DCGM_FI_DEV_GPU_UTIL; the file's unlabelled dummy ENGINE_ACTIVE has no UUID.
    assert [(r.uuid, r.util, r.gpu_instance) for r in t4] == [("GPU-20c56d28-0da5-6d26-a36a-e7af1ce2586e", 0.0, None)]
    issues = parse_dcgm((DCGM / "github-issue-excerpts_pod-labelled-and-mig-series.prom").read_text())
    by_uuid = {r.uuid: r for r in issues}
    # A MIG instance (GPU_I_ID 1 of a 4g.40gb) in lower-cased names, and a pod's full GPU
    # with the old pod_name/pod_namespace labels.
    mig = by_uuid["GPU-af2c63a8-8c8b-21cc-581a-bab6bba89d08"]
    assert (mig.gpu_instance, mig.mig_profile, mig.util, mig.pod) == (1, "4g.40gb", 0.0, None)
    pod = by_uuid["GPU-931446e6-0413-2864-5b76-11227dcda4ae"]
    assert pod.pod == "ai-1/d85np-t6mdg" and pod.util == pytest.approx(0.8246)
    # dcgm-exporter 1.x's dcgm_gpu_utilization, its empty pod labels meaning no pod.
    old = by_uuid["GPU-c1f38265-5e7c-0a81-14a0-240a35ea8160"]
    assert old.util == 0 and old.pod is None


def test_a_mig_gpus_own_util_series_is_not_taken_for_an_instance():
    text = exporter_text({GPU0: 87, FULL2: 12}, {(GPU0, 1, "3g.40gb"): 0.0, (GPU0, 7, "1g.10gb"): 0.5})
    readings = {(r.uuid, r.gpu_instance): r.util for r in parse_dcgm(text)}
    assert readings == {(GPU0, 1): 0.0, (GPU0, 7): 50.0, (FULL2, None): 12.0}


def test_broken_exporter_text_is_a_source_error():
    from podbay.hub.usage.sources import SourceUnavailable

    with pytest.raises(SourceUnavailable, match="not Prometheus text format"):
        parse_dcgm('DCGM_FI_DEV_GPU_UTIL{UUID="x" 5\n')


def test_prometheus_query_answers():
    body = {"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": {"__name__": "DCGM_FI_DEV_GPU_UTIL", "UUID": FULL2, "Hostname": "dev-01"}, "value": [1, "42"]},
        {"metric": {"__name__": "DCGM_FI_DEV_GPU_UTIL", "UUID": "GPU-x", "pod": "w", "namespace": "ns"}, "value": [1, "NaN"]}]}}
    mig = {"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": {"UUID": GPU0, "GPU_I_ID": "2", "GPU_I_PROFILE": "2g.20gb"}, "value": [1, "0.25"]}]}}
    got = {(r.uuid, r.gpu_instance): r.util for r in parse_prometheus([("dcgm_fi_dev_gpu_util", body),
                                                                      ("dcgm_fi_prof_gr_engine_active", mig)])}
    assert got == {(FULL2, None): 42.0, (GPU0, 2): 25.0}


async def test_dcgm_source_reads_every_exporter_and_survives_one_down():
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "down":
            raise httpx.ConnectError("refused")
        return httpx.Response(200, text=exporter_text({FULL2: 3}))

    cfg = parse_config({"images": [{"name": "a", "display_name": "A", "image": "x"}], "profiles": [{"id": "cpu"}],
                        "usage": {"source": {"type": "dcgm", "urls": ["http://up:9400/metrics", "http://down:9400/metrics"]}}})
    source = Source(cfg.usage.source, transport=httpx.MockTransport(handler))
    assert [(r.uuid, r.util) for r in await source.read()] == [(FULL2, 3.0)]
    assert "down:9400" in source.failed[0]
    await source.aclose()


def test_nvml_reads_whole_gpus_and_skips_mig(monkeypatch):
    class Rates:
        gpu = 61

    class NVMLError(Exception):
        pass

    devices = [("GPU-aaaaaaaa-0000-4000-8000-000000000000", 0), ("GPU-bbbbbbbb-0000-4000-8000-000000000000", 1)]
    fake = types.SimpleNamespace(
        nvmlInit=lambda: None, nvmlShutdown=lambda: None, nvmlDeviceGetCount=lambda: len(devices),
        nvmlDeviceGetHandleByIndex=lambda i: i, nvmlDeviceGetUUID=lambda h: devices[h][0].encode(),
        nvmlDeviceGetMigMode=lambda h: (devices[h][1], devices[h][1]),
        nvmlDeviceGetUtilizationRates=lambda h: Rates(), NVMLError=NVMLError)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    assert [(r.uuid, r.util) for r in read_nvml()] == [(devices[0][0], 61.0)]


# --- matching readings to what people hold -------------------------------------------------


def holding(devices, kind="workspace", profile="gpu-1", ref=None, key="workspace:alice/w", **kw) -> Holding:
    return Holding(id=1, key=key, kind=kind, user="alice", team="vision", profile=profile, pool="dev",
                   units=Fraction(1), gpus=1, devices=devices, ref=ref or {}, started=0, ended=None, **kw)


def test_claims_are_matched_by_gpu_uuid_mig_instance_and_pod(tmp_path):
    raw = yaml.safe_load(TEST_CONFIG.read_text())
    # The 3g.40gb's GPU instance id is declared; the 1g.10gb's are not (two of them: no match).
    raw["nodes"][0]["gpus"][0]["mig"][0]["gpu_instance"] = 2
    inv = Inventory.from_config(parse_config(raw))
    m = Matcher(inv)
    text = exporter_text({SHARED: 30, FULL2: 0}, {(GPU0, 2, "3g.40gb"): 0.9, (GPU0, 3, "2g.20gb"): 0.0,
                                                  (GPU0, 9, "1g.10gb"): 0.7})
    by = m.index(parse_dcgm(text))
    assert m.measure(holding([("dev-01", FULL2)]), by) == (0.0, 0.0)
    # Both slots of a shared GPU see the GPU's utilisation (no per-slot counter exists).
    assert m.measure(holding([("dev-01", SHARED)]), by) == (30.0, 30.0)
    assert m.measure(holding([("dev-01", "MIG-11111111-0001-4000-8000-000000000001")]), by) == (90.0, 90.0)
    # No GI id declared, but the only 2g.20gb on its GPU.
    assert m.measure(holding([("dev-01", "MIG-11111111-0002-4000-8000-000000000002")]), by) == (0.0, 0.0)
    # Two 1g.10gb without ids: which one DCGM measured is unknown, so neither is measured.
    assert m.measure(holding([("dev-01", "MIG-11111111-0003-4000-8000-000000000003")]), by) is None
    # Two GPUs: mean for showback, max for the idle rule.
    assert m.measure(holding([("dev-01", FULL2), ("dev-01", SHARED)]), by) == (15.0, 30.0)
    # Kubernetes: the exporter's pod labels.
    pods = m.index(parse_dcgm((DCGM / "github-issue-excerpts_pod-labelled-and-mig-series.prom").read_text()))
    assert m.measure(holding([], ref={"pod": "ai-1/d85np-t6mdg"}), pods)[0] == pytest.approx(0.8246)
    jobs = Matcher(None, job_pod_prefix="podbay")
    by = jobs.index(parse_dcgm('DCGM_FI_DEV_GPU_UTIL{UUID="GPU-a",pod="podbay-job-7-0-x1",namespace="ns"} 55\n'))
    assert jobs.measure(holding([], kind="job", key="job:7"), by) == (55.0, 55.0)
    assert jobs.measure(holding([], kind="job", key="job:70"), by) is None


def test_a_slurm_jobs_gpus_are_matched_by_dcgms_hpc_job_mapping():
    """On Slurm's nodes the exporter's HPC job mapping labels each GPU's series with the job
    on it (`hpc_job`, from the file a prolog writes per GPU); a GPU shared by two jobs' steps
    has one series per job. podbay's claim of a running Slurm job keeps its id."""
    text = ('DCGM_FI_DEV_GPU_UTIL{gpu="0",UUID="GPU-a",Hostname="dgx-01",hpc_job="812"} 90\n'
            'DCGM_FI_DEV_GPU_UTIL{gpu="1",UUID="GPU-b",Hostname="dgx-01",hpc_job="812"} 70\n'
            'DCGM_FI_DEV_GPU_UTIL{gpu="2",UUID="GPU-c",Hostname="dgx-01",hpc_job="813"} 3\n'
            'DCGM_FI_DEV_GPU_UTIL{gpu="2",UUID="GPU-c",Hostname="dgx-01",hpc_job="814"} 3\n')
    readings = parse_dcgm(text)
    assert sorted(r.hpc_job for r in readings) == ["812", "812", "813", "814"]
    m = Matcher(None)
    by = m.index(readings)
    assert m.measure(holding([], kind="job", key="job:1", ref={"slurm_id": "812"}), by) == (80.0, 90.0)
    assert m.measure(holding([], kind="job", key="job:2", ref={"slurm_id": "814"}), by) == (3.0, 3.0)
    assert m.measure(holding([], kind="job", key="job:3", ref={"slurm_id": "999"}), by) is None
    from podbay.hub.backends.slurm.jobs import SlurmJobs

    assert SlurmJobs.usage_ref(None, {"slurm_id": "812", "output": "/x"}) == {"slurm_id": "812"}


# --- the idle clock -------------------------------------------------------------------------


RULES = {"images": [{"name": "a", "display_name": "A", "image": "x"}],
         "profiles": [{"id": "cpu"}, {"id": "gpu-1"}, {"id": "mig-1g.10gb", "pools": ["dev"]}],
         "usage": {"interval": 60},
         "idle": {"rules": [{"profiles": ["mig-1g.10gb"], "below": 5, "after": "1h", "action": "warn"},
                            {"pools": ["dev"], "below": 5, "after": "2h", "warn_before": "30m", "action": "release-gpu"}],
                  "keep_max": "4h"}}


def run(policy, h: Holding, samples: list[tuple[float, float | None]]):
    """Feed (time, util) samples; apply the clock; return the actions with their times."""
    out = []
    for t, util in samples:
        clock, action = policy.step(h, None if util is None else (util, util), t)
        for k, v in clock.items():
            setattr(h, k, v)
        if action:
            out.append((t, action["action"]))
            if action["action"] != "warn":
                h.acted = action["action"]  # as the store records it with the action
    return out


def test_idle_gpu_is_warned_then_released_and_activity_resets_the_clock():
    policy = IdlePolicy(parse_config(RULES), 60)
    h = holding([("n", FULL2)])
    minutes = [(m * 60.0, 1.0) for m in range(0, 200)]
    acted = run(policy, h, minutes[:91])
    assert acted == [] and h.warned_at == 90 * 60.0  # at after − warn_before
    assert run(policy, h, minutes[91:121]) == [(120 * 60.0, "release-gpu")]
    # Acted once, whatever follows.
    assert run(policy, h, minutes[121:]) == [] and h.acted == "release-gpu"

    busy = holding([("n", FULL2)])
    samples = [(m * 60.0, 50.0 if m % 60 == 59 else 0.0) for m in range(300)]
    assert run(policy, busy, samples) == []  # a burst every hour: never idle for two


def test_no_action_without_the_full_notice_and_gaps_restart_the_clock():
    policy = IdlePolicy(parse_config(RULES), 60)
    h = holding([("n", FULL2)])
    run(policy, h, [(0.0, 0.0)])
    # The service was down for 3 h: the gap restarts the idle streak at the next sample.
    assert run(policy, h, [(3 * 3600.0, 0.0)]) == [] and h.idle_since == 3 * 3600.0
    # Without readings nothing moves.
    assert run(policy, h, [(6 * 3600.0, None)]) == [] and h.warned_at is None
    # Long idle but never warned (its notice was answered by a keep that just ended): the
    # action waits the notice's full 30 minutes.
    h2 = holding([("n", FULL2)], idle_since=0.0, last_sample=3 * 3600.0, keep_until=3 * 3600.0)
    acted = run(policy, h2, [(3 * 3600.0 + m * 60, 0.0) for m in range(1, 200)])
    assert acted == [(3 * 3600.0 + 120 * 60, "release-gpu")]
    assert h2.warned_at == 3 * 3600.0 + 90 * 60


def test_keep_until_holds_the_action_and_warn_rules_only_warn():
    policy = IdlePolicy(parse_config(RULES), 60)
    h = holding([("n", FULL2)], keep_until=4 * 3600.0)
    assert run(policy, h, [(m * 60.0, 0.0) for m in range(0, 4 * 60)]) == []
    mig = holding([("n", "MIG-x")], profile="mig-1g.10gb")
    assert run(policy, mig, [(m * 60.0, 0.0) for m in range(0, 300)]) == [(3600.0, "warn")]
    assert mig.acted is None
    # CPU workspaces and jobs are never the rules' business.
    cpu = holding([], profile="cpu")
    cpu.units, cpu.gpus = Fraction(0), 0
    assert policy.rule(cpu) is None
    assert policy.rule(holding([("n", FULL2)], kind="job", key="job:3")) is None


def test_idle_settings_are_checked():
    assert parse_duration("90s") == 90 and parse_duration("2h") == 7200 and parse_duration(30) == 30
    bad = json.loads(json.dumps(RULES))
    bad["idle"]["rules"][1]["warn_before"] = "3h"
    with pytest.raises(ConfigError, match="warn_before .* must be shorter than after"):
        parse_config(bad)
    bad = json.loads(json.dumps(RULES))
    bad["idle"]["rules"][1]["pools"] = ["nowhere"]
    bad["profiles"] = [{"id": "gpu-1"}]
    with pytest.raises(ConfigError) as e:
        parse_config(bad)
    assert "pool 'nowhere' is not declared" in str(e.value) and "CPU profile 'cpu'" in str(e.value)
    with pytest.raises(ConfigError, match="needs urls"):
        parse_config({**RULES, "usage": {"source": {"type": "dcgm"}}})


# --- showback ----------------------------------------------------------------------------


H = 3600.0
T0 = 1_700_000_000.0 // H * H  # on an hour


def script(store: UsageStore, rows: list[dict], util: dict[int, list[tuple[int, float]]]):
    """Holdings and their hourly utilisation, as the sampler would have written them."""
    with store.db.write_session() as s, s.begin():
        for i, r in enumerate(rows, 1):
            s.add(HoldingRow(id=i, key=r.get("key", f"workspace:{r['user']}/w{i}"), kind=r.get("kind", "workspace"),
                             user=r["user"], team=r.get("team"), profile=r["profile"], pool=r["pool"],
                             units_num=r.get("units", Fraction(1)).numerator, units_den=r.get("units", Fraction(1)).denominator,
                             gpus=r.get("gpus", 1), started=T0 + r["start"] * H,
                             ended=None if r.get("end") is None else T0 + r["end"] * H,
                             samples=60 * len(util.get(i, [])), util_sum=sum(60 * u for _, u in util.get(i, [])),
                             util_max=max((u for _, u in util.get(i, [])), default=None)))
            for hour, u in util.get(i, []):
                s.add(UsageHourRow(holding_id=i, hour=int(T0 // H) + hour, samples=60, util_sum=60 * u))


@pytest.fixture
def store(db_url):
    """The store on each database the quota book supports (PostgreSQL: a real server)."""
    book = QuotaBook(db_url)
    yield UsageStore(book)
    book.dispose()


def test_showback_from_a_scripted_history(store):
    script(store, [
        # alice: a whole GPU for 10 h, at 50 % for all of them.
        {"user": "alice", "team": "vision", "profile": "gpu-1", "pool": "dev", "start": 0, "end": 10},
        # bob: a 3g.40gb (3/7 GPU) for 7 h, never measured.
        {"user": "bob", "team": "nlp", "profile": "mig-3g.40gb", "pool": "dev", "units": Fraction(3, 7), "gpus": 0,
         "start": 2, "end": 9},
        # alice's job: 2 GPUs for 4 h at 0 %: reported as never using them.
        {"user": "alice", "team": "vision", "kind": "job", "key": "job:12", "profile": "gpu-2", "pool": "training",
         "units": Fraction(2), "gpus": 2, "start": 1, "end": 5},
        # a CPU workspace weighs nothing.
        {"user": "carol", "profile": "cpu", "pool": "dev", "units": Fraction(0), "gpus": 0, "start": 0, "end": 10},
    ], {1: [(h, 50.0) for h in range(10)], 3: [(h, 0.0) for h in range(1, 5)]})
    by_user = {r["user"]: r for r in store.usage(T0, T0 + 24 * H, "user")}
    assert set(by_user) == {"alice", "bob"}
    assert by_user["alice"]["gpu_hours_held"] == pytest.approx(10 + 8)
    assert by_user["alice"]["gpu_hours_used"] == pytest.approx(5)
    assert by_user["alice"]["utilization"] == pytest.approx(5 / 18 * 100)
    assert by_user["bob"]["gpu_hours_held"] == pytest.approx(3)
    assert by_user["bob"]["gpu_hours_used"] == 0 and by_user["bob"]["utilization"] is None
    by_pool = {r["pool"]: r["gpu_hours_held"] for r in store.usage(T0, T0 + 24 * H, "pool")}
    assert by_pool == {"dev": pytest.approx(13), "training": pytest.approx(8)}
    # Part of a period: hours 4–6 only.
    part = {r["profile"]: r for r in store.usage(T0 + 4 * H, T0 + 6 * H, "profile")}
    assert part["gpu-1"]["gpu_hours_held"] == pytest.approx(2) and part["gpu-1"]["gpu_hours_used"] == pytest.approx(1)
    assert part["gpu-2"]["gpu_hours_held"] == pytest.approx(2)
    assert part["mig-3g.40gb"]["gpu_hours_held"] == pytest.approx(2 * 3 / 7)
    assert [h.key for h in store.idle_jobs(T0, T0 + 24 * H)] == ["job:12"]
    assert {r["team"]: round(r["gpu_hours_held"], 6) for r in store.usage(T0, T0 + 24 * H, "team", team="nlp")} == {"nlp": 3.0}
    # /metrics' counters: every GPU-hour ever held and used, per team and kind.
    before = {(t, k): (h, u) for t, k, h, u in store.totals()}
    assert before[("vision", "workspace")] == pytest.approx((10, 5))
    assert before[("vision", "job")] == pytest.approx((8, 0)) and before[("nlp", "workspace")][0] == pytest.approx(3)
    # Retention: what ended before the cutoff goes, with its hours; the counters keep it.
    assert store.prune(T0 + 9.5 * H + 86400, 1) > 0
    assert {r["user"] for r in store.usage(T0, T0 + 24 * H, "user")} == {"alice"}
    after = {(t, k): (h, u) for t, k, h, u in store.totals()}
    assert after == pytest.approx(before)


# --- the service: notices, keep, usage and /metrics --------------------------------------


@contextlib.contextmanager
def fake_hub(users: dict[str, dict]):
    """JupyterHub's API as the service calls it, on the loopback (HubAuth asks it over HTTP):
    tokens are user names."""

    def answer(path, headers):
        path = path.split("?")[0].rstrip("/")
        token = headers.get("authorization", "").split()[-1]
        if path.endswith("/user"):
            if token not in users:
                return 403, {}
            return 200, {"name": token, "kind": "user",
                         "scopes": ["access:services!service=podbay", *users[token].get("scopes", [])]}
        name = path.rsplit("/", 1)[-1]
        return 200, {"name": name, "admin": users[name].get("admin", False),
                     "groups": users[name].get("groups", []), "servers": {}}

    with serve_json(answer) as url:
        yield HubClient(f"{url}/hub/api", "service-token")


@pytest.fixture
def service(tmp_path):
    from fastapi.testclient import TestClient

    raw = yaml.safe_load(TEST_CONFIG.read_text())
    raw["idle"] = {"rules": [{"pools": ["dev"], "below": 5, "after": "2h", "warn_before": "30m",
                              "action": "release-gpu"}], "keep_max": "4h"}
    cfg_path = tmp_path / "podbay.yaml"
    cfg_path.write_text(yaml.safe_dump(raw))
    portal = Portal.open(cfg_path, f"sqlite:///{tmp_path / 'ledger.sqlite'}", tmp_path)
    jobs = JobManager(portal, LocalBackend(tmp_path / "jobs"))
    with fake_hub({"alice": {"groups": ["vision"]}, "bob": {"groups": ["nlp"]}, "admin": {"admin": True},
                   "scraper": {"scopes": ["read:metrics"]}}) as hub:
        app = create_app(portal, jobs, hub, run_scheduler=False)
        with TestClient(app) as client:
            client.podbay = portal
            yield client
    portal.book.dispose()


def as_(user):
    return {"Authorization": f"token {user}"}


def test_notices_keep_usage_and_metrics_through_the_service(service):
    from podbay.hub.config import parse_profile_id
    from podbay.hub.quota import Demand

    portal = service.podbay
    portal.claim(key="workspace:alice/train", kind="workspace", user="alice", team="vision",
                 demand=Demand("gpu-1", parse_profile_id("gpu-1"), ("dev",)), quota=portal.quota_for("vision"))
    store = UsageStore(portal.book)
    h = store.open_holdings()[0]
    # Idle for 100 minutes, as the sampler saw it.
    now = time.time()
    store.write_round(Round(
        now=now, measured={h.id: (0.0, 0.0)}, clock={h.id: {"last_sample": now, "idle_since": now - 100 * 60,
                                                             "warned_at": now - 10 * 60}}))
    notes = service.get("/services/podbay/api/v1/notices", headers=as_("alice")).json()
    assert len(notes) == 1 and notes[0]["kind"] == "warning" and notes[0]["workspace"] == "train"
    # Acted on 2 h after the streak began: 20 minutes from `now`. The message floors to the
    # minute at the moment it is made, so a slow request reads "19m": the deadline is exact.
    assert notes[0]["action"] == "release-gpu" and notes[0]["deadline"] == pytest.approx(now + 20 * 60, abs=1)
    assert re.search(r"In (19|20)m its GPU is released", notes[0]["message"]), notes[0]["message"]
    assert service.get("/services/podbay/api/v1/notices", headers=as_("bob")).json() == []
    # Keep: within keep_max, only one's own running workspace.
    r = service.post("/services/podbay/api/v1/workspaces/train/keep", json={"hours": 5}, headers=as_("alice"))
    assert r.status_code == 400 and "at most 4h" in r.json()["message"]
    assert service.post("/services/podbay/api/v1/workspaces/train/keep", json={"hours": 2},
                        headers=as_("bob")).status_code == 404
    r = service.post("/services/podbay/api/v1/workspaces/train/keep", json={"hours": 2}, headers=as_("alice"))
    assert r.status_code == 200 and r.json()["keep_until"] > now + 7000
    assert service.get("/services/podbay/api/v1/notices", headers=as_("alice")).json() == []
    # Usage: one's own; a team's only for its members; anyone's for admins.
    mine = service.get("/services/podbay/api/v1/usage", headers=as_("alice")).json()
    assert [row["key"] for row in mine["rows"]] == ["alice"] and mine["total"]["gpu_hours_held"] > 0
    # The requests of the period and what they got: alice's own.
    assert mine["demand"] == [{"kind": "workspace", "profile": "gpu-1", "pool": "dev", "outcome": "granted",
                               "requests": 1}]
    assert service.get("/services/podbay/api/v1/usage", headers=as_("bob")).json()["demand"] == []
    assert service.get("/services/podbay/api/v1/usage", params={"team": "vision"}, headers=as_("bob")).status_code == 403
    assert service.get("/services/podbay/api/v1/usage", params={"user": "alice"}, headers=as_("bob")).status_code == 403
    assert service.get("/services/podbay/api/v1/usage", params={"by": "team"}, headers=as_("admin")).status_code == 200
    # /metrics: admins or read:metrics, in Prometheus' text format.
    assert service.get("/services/podbay/api/v1/metrics", headers=as_("alice")).status_code == 403
    text = service.get("/services/podbay/api/v1/metrics", headers=as_("scraper")).text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    used = {(s.labels["pool"], s.labels["kind"], s.labels["state"]): s.value
            for s in families["podbay_capacity_devices"].samples}
    assert used[("dev", "gpu", "used")] == 1 and used[("dev", "gpu", "free")] == 1
    assert used[("dev", "mig-1g.10gb", "free")] == 2
    held = {(s.labels["team"], s.labels["kind"]): s.value for s in families["podbay_gpu_units_held"].samples}
    assert held == {("vision", "workspace"): 1.0}
    assert {s.labels["kind"]: s.value for s in families["podbay_claims"].samples} == {"workspace": 1, "job": 0}
    util = families["podbay_workspace_gpu_utilization"].samples
    assert [(s.labels["key"], s.value) for s in util] == [("workspace:alice/train", 0.0)]
    assert families["podbay_gpu_hours_held"].type == "counter"


def test_the_grafana_dashboard_reads_only_what_metrics_exports(service):
    import re

    text = service.get("/services/podbay/api/v1/metrics", headers=as_("admin")).text
    exported = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
    # Families with no sample yet (no jobs, no actions) still announce themselves.
    exported |= set(re.findall(r"^# TYPE (\S+) ", text, re.M))
    exported |= {n + "_total" for n in re.findall(r"^# TYPE (\S+) counter", text, re.M)}
    # Every declared family is exported, and only those (the metrics reference lists METRICS).
    from podbay.hub.usage.metrics import METRICS

    assert {n.removesuffix("_total") for n in re.findall(r"^# TYPE (\S+) ", text, re.M)} == set(METRICS)
    dashboard = json.loads((Path(__file__).resolve().parents[2] / "config" / "grafana-podbay.json").read_text())
    used = {m for p in dashboard["panels"] for t in p["targets"] for m in re.findall(r"\bpodbay_[a-z_]+", t["expr"])}
    assert used and used <= exported, used - exported


class FakeServers:
    """The hub's servers as the idle rules act on them: the calls, and the claims they make."""

    def __init__(self, portal, options):
        self.portal, self.options_of, self.calls = portal, options, []

    async def options(self, user, server):
        return dict(self.options_of) if self.options_of is not None else None

    async def running(self, user, server):
        return self.portal.book.get(f"workspace:{user}/{server}") is not None

    async def stop(self, user, server):
        self.calls.append(("stop", server))
        self.portal.book.release(f"workspace:{user}/{server}")

    async def start(self, user, server, options):
        self.calls.append(("start", server, options["profile"]))
        claim(self.portal, server, options["profile"])


def claim(portal, server, profile):
    from podbay.hub.config import parse_profile_id
    from podbay.hub.quota import Demand

    return portal.claim(key=f"workspace:alice/{server}", kind="workspace", user="alice", team="vision",
                        demand=Demand(profile, parse_profile_id(profile), ("dev",)), quota=portal.quota_for("vision"))


async def test_release_gpu_acts_on_the_workspace_it_decided_on_and_survives_a_restart(service):
    portal = service.podbay
    store = UsageStore(portal.book)
    servers = FakeServers(portal, {"profile": "gpu-1", "image": "base", "volumes": ["scratch"]})
    sampler = Sampler(portal.cfg, store, portal.inventory, servers)

    def record(holding_id, server="w"):
        got = store.write_round(Round(now=time.time(), actions=[dict(
            holding_id=holding_id, user="alice", server=server, action="release-gpu", profile="gpu-1",
            at=time.time(), state="started", message="idle")]))
        return got[0][0] if got else None

    def state(action_id):
        return next(a for a in store.notices("alice", time.time())[1] if a.id == action_id).state

    # Decided on, then the person restarted it before the action: nothing is stopped.
    claim(portal, "w", "gpu-1")
    first = store.open_holding_id("workspace:alice/w")
    stale = record(first)
    portal.book.release("workspace:alice/w")
    claim(portal, "w", "gpu-1")
    await sampler.carry_out(stale, first, "alice", "w", "release-gpu")
    assert servers.calls == [] and store.unfinished_actions() == []
    # A keep that came before the action's record: no action is recorded.
    hid = store.open_holding_id("workspace:alice/w")
    store.keep("alice", "w", time.time() + 600)
    assert record(hid) is None
    with store.db.write_session() as s, s.begin():
        s.execute(HoldingRow.__table__.update().where(HoldingRow.id == hid).values(keep_until=None))
    # The one it decided on: stopped, started on cpu with its options.
    act = record(hid)
    # Once the action is under way, a keep is too late.
    assert store.keep("alice", "w", time.time() + 600).acted == "release-gpu"
    await sampler.carry_out(act, hid, "alice", "w", "release-gpu")
    assert servers.calls == [("stop", "w"), ("start", "w", "cpu")] and state(act) == "done"
    assert portal.book.get("workspace:alice/w").profile == "cpu"
    portal.book.release("workspace:alice/w")

    # The hub refuses the stop: it keeps its GPU, a new notice, and the rule tries again later.
    claim(portal, "v", "gpu-1")
    hid = store.open_holding_id("workspace:alice/v")
    act = record(hid, "v")

    async def refuse(user, server):
        raise RuntimeError("the hub refused to stop it (503)")
    servers.stop = refuse
    await sampler.carry_out(act, hid, "alice", "v", "release-gpu")
    h = store.open_holding("workspace:alice/v")
    assert state(act) == "failed" and h.acted is None and h.warned_at is not None
    del servers.stop
    portal.book.release("workspace:alice/v")

    # Stopped, but the start on cpu fails: told so, with how to start it again.
    claim(portal, "u", "gpu-1")
    hid = store.open_holding_id("workspace:alice/u")
    act = record(hid, "u")

    async def broken(user, server, options):
        raise RuntimeError("it did not come up")
    servers.start = broken
    await sampler.carry_out(act, hid, "alice", "u", "release-gpu")
    note = next(a for a in store.notices("alice", time.time())[1] if a.id == act)
    assert note.state == "failed" and "podbay ws new u --profile cpu" in note.message
    assert portal.book.get("workspace:alice/u") is None  # its GPU is back in the pool
    del servers.start

    # The service stopped after stopping the workspace, before starting it on cpu: the
    # options it kept start it on cpu when it comes back, once.
    claim(portal, "x", "gpu-1")
    hid = store.open_holding_id("workspace:alice/x")
    act = record(hid, "x")
    store.set_action(act, "restarting", {"profile": "gpu-1", "image": "base"})
    portal.book.release("workspace:alice/x")
    servers.calls.clear()
    await sampler.resume()
    assert servers.calls == [("stop", "x"), ("start", "x", "cpu")]
    assert store.unfinished_actions() == [] and portal.book.get("workspace:alice/x").profile == "cpu"
    await sampler.resume()
    assert servers.calls == [("stop", "x"), ("start", "x", "cpu")]


def test_what_runs_at_the_upgrade_gets_a_holding_with_its_devices(tmp_path):
    import sqlite3

    from sqlalchemy import create_engine

    from podbay.hub.quota.database import move_schema

    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    engine = create_engine(url)
    move_schema(engine, "0007")
    with sqlite3.connect(tmp_path / "ledger.sqlite") as db:
        db.execute("INSERT INTO podbay_allocations (id, key, kind, user, team, profile, units_num, units_den, gpus, "
                   "created, ref) VALUES (1, 'workspace:a/w', 'workspace', 'a', 't', 'gpu-1', 1, 1, 1, 5.0, '{}')")
        db.execute(f"INSERT INTO podbay_claims (allocation_id, node, device, visible_id) VALUES (1, 'n', '{FULL2}', '{FULL2}')")
    move_schema(engine)
    engine.dispose()
    with sqlite3.connect(tmp_path / "ledger.sqlite") as db:
        rows = db.execute("SELECT key, devices, started, ended FROM podbay_holdings").fetchall()
    assert rows == [("workspace:a/w", json.dumps([["n", FULL2]]), 5.0, None)]


def test_a_workspace_login_shell_prints_the_notices(monkeypatch, capsys):
    """hub/workspace/podbay_notices.py, as the images' /etc/profile.d runs it: the person's
    warnings from the service with the workspace's token; silent when the service is away."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "hub" / "workspace"))
    import podbay_notices

    seen = []
    body = json.dumps([
        {"workspace": "w", "kind": "warning", "at": time.time(), "message": "w (gpu-1) has used its GPU below 5% for 1h."},
        {"workspace": "v", "kind": "stop", "at": time.time() - 7200, "message": "v (gpu-1): stopped: its GPU was idle"},
        {"workspace": "u", "kind": "stop", "at": time.time() - 9 * 86400, "message": "old news"}]).encode()

    def answer(path, headers):
        seen.append((path, headers["Authorization"]))
        return 200, body

    with serve_json(answer) as url:
        monkeypatch.setenv("PODBAY_SERVICE_URL", url)
        monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "workspace-token")
        assert podbay_notices.main() == 0
        err = capsys.readouterr().err.splitlines()
        assert err == ["podbay: GPU idle: w (gpu-1) has used its GPU below 5% for 1h.",
                       "podbay: v (gpu-1): stopped: its GPU was idle"]
        assert seen == [("/services/podbay/api/v1/notices", "token workspace-token")]
    # Nobody answers: nothing printed, no wait beyond the timeout.
    t0 = time.monotonic()
    assert podbay_notices.main() == 0 and capsys.readouterr().err == "" and time.monotonic() - t0 < 3


def test_the_capacity_picture_where_an_engine_places(tmp_path):
    """A pool podbay does not place (a Slurm partition beside local workspaces, or all of
    Kubernetes) is drawn from its engine's node states: GPUs used and free, state, reason."""
    from types import SimpleNamespace

    from podbay.hub.service.pages import _ENV
    from podbay.hub.service.picture import capacity_picture

    portal = Portal.open(TEST_CONFIG, f"sqlite:///{tmp_path / 'ledger.sqlite'}", tmp_path)
    nodes = {"training": [SimpleNamespace(name="dgx-1", state="mixed", reason=None, gpus=8, gpus_used=3),
                          SimpleNamespace(name="dgx-2", state="drained", reason="bad DIMM", gpus=8, gpus_used=0)]}
    # Only the dev pool's devices are podbay's to place here (as with the slurm backend).
    portal.inventory.devices = [d for d in portal.inventory.devices if d.pool == "dev"]
    portal.capacity = SimpleNamespace(node_states=lambda pool: nodes.get(pool, []))
    picture = {p["name"]: p for p in capacity_picture(portal)}
    assert [n["name"] for n in picture["dev"]["nodes"]] == ["dev-01"]
    dgx = {n["name"]: n for n in picture["training"]["nodes"]}
    assert len(dgx["dgx-1"]["gpus"]) == 8
    assert sum(1 for g in dgx["dgx-1"]["gpus"] if g["devices"][0]["holder"]) == 3
    html = _ENV.get_template("capacity.html").render(prefix="/s/", base="/s/pages/", who={"name": "alice"},
                                                     hub_home="/hub/home", pools=list(picture.values()), places=True)
    assert "drained: bad DIMM" in html and html.count('data-node="dgx-2"') == 1
    portal.book.dispose()


def test_pod_labels_renamed_one_by_one_are_read_one_by_one():
    """A ServiceMonitor's target may carry namespace and not pod (or the reverse): Prometheus
    renames only the exporter's labels that conflict, and each is read on its own."""
    from podbay.hub.usage.sources import reading_from

    base = {"UUID": "GPU-1", "container": "nvidia-dcgm-exporter"}
    both = reading_from("DCGM_FI_DEV_GPU_UTIL", {**base, "pod": "dcgm-exporter-x", "namespace": "gpu-operator",
                                                 "exported_pod": "jupyter-a", "exported_namespace": "podbay"}, 9)
    only_ns = reading_from("DCGM_FI_DEV_GPU_UTIL", {**base, "pod": "jupyter-a", "namespace": "gpu-operator",
                                                    "exported_namespace": "podbay"}, 9)
    only_pod = reading_from("DCGM_FI_DEV_GPU_UTIL", {**base, "pod": "dcgm-exporter-x", "exported_pod": "jupyter-a",
                                                     "namespace": "podbay"}, 9)
    assert both.pod == only_ns.pod == only_pod.pod == "podbay/jupyter-a"


def test_showback_reuses_its_sums_until_the_book_is_written(db_url):
    """On SQLite a reading connection keeps a month's sums between requests, for as long as
    nothing was committed (PRAGMA data_version): the same answers, without reading the hours
    again; a write by any other connection (here another book, as another process would be)
    shows at the next request."""
    from sqlalchemy import event

    book = QuotaBook(db_url)
    store = UsageStore(book)
    script(store, [{"user": "alice", "team": "vision", "profile": "gpu-1", "pool": "dev", "start": 0, "end": 10}],
           {1: [(h, 50.0) for h in range(10)]})
    reads: list[str] = []
    event.listen(book.db.read_engine, "before_cursor_execute",
                 lambda conn, cursor, statement, *rest: reads.append(statement))

    def ask():
        return store.usage(T0, T0 + 24 * H, "user"), store.hourly(T0, T0 + 24 * H)

    first = ask()
    hour_reads = sum("podbay_usage_hours" in s for s in reads)
    assert ask() == first and ask() == first
    if book.db.url.startswith("sqlite"):
        assert sum("podbay_usage_hours" in s for s in reads) == hour_reads, "the kept sums were read again"
    other = QuotaBook(db_url)
    with other.write_session() as s, s.begin():
        s.add(UsageHourRow(holding_id=1, hour=int(T0 // H) + 10, samples=60, util_sum=60 * 100.0))
        s.execute(HoldingRow.__table__.update().where(HoldingRow.id == 1).values(ended=T0 + 11 * H))
    other.dispose()
    usage, hourly = ask()
    assert usage[0]["gpu_hours_held"] == pytest.approx(11) and usage[0]["gpu_hours_used"] == pytest.approx(6)
    assert len(hourly) == 11 and hourly[-1]["utilization"] == pytest.approx(100.0)
    book.dispose()
