"""The GPU idle rules end to end: a real JupyterHub and podbay's service on the local
backend, utilisation from a DCGM exporter stand-in on the loopback that serves the
exporter's text format with values the test changes as it goes.
"""

from __future__ import annotations

import os
import sqlite3
import time

import httpx
import pytest
import yaml

from tests.harness import (http_client, TEST_CONFIG, browser_login, claimed, have_proxy, hub_on, real_browser, require,
                            wait_job)
from tests.standins.dcgm_exporter import Exporter

pytestmark = pytest.mark.hub


@pytest.fixture(scope="module")
def idle_hub(tmp_path_factory):
    require(have_proxy(), "configurable-http-proxy is not installed")
    raw = yaml.safe_load(TEST_CONFIG.read_text())
    uuids = [g["uuid"] for n in raw["nodes"] for g in n["gpus"] if not g.get("mig")]
    exporter = Exporter(uuids, default=0.0)
    root = tmp_path_factory.mktemp("idle")
    raw["usage"] = {"source": {"type": "dcgm", "urls": [exporter.url]}, "interval": 1}
    # jupyterhub-idle-culler, managed by the hub: a day's timeout, so it culls nothing here,
    # checking every 2 s (what it may do is its role's: checked below).
    raw["idle"] = {"keep_max": "1h", "culler": {"timeout": "1d", "every": "2s"}, "rules": [
        {"name": "shares", "profiles": ["shared-1/2"], "below": 5, "after": "6s", "warn_before": "3s", "action": "stop"},
        {"name": "dev", "pools": ["dev"], "below": 5, "after": "14s", "warn_before": "10s", "action": "release-gpu"},
        # Everything else, jobs included if they were ever the rules' business (they are not).
        {"name": "rest", "below": 5, "after": "4s", "warn_before": "2s", "action": "stop"}]}
    for v in raw["volumes"]:
        (root / v["source"]).mkdir(parents=True)
    hub = hub_on(raw, root, keep_workspaces=True)
    hub.exporter = exporter
    yield hub
    hub.stop()
    exporter.close()
    import signal

    ledger = hub.book()
    for alloc in ledger.allocations():
        if alloc.ref.get("pid"):
            try:
                os.kill(alloc.ref["pid"], signal.SIGTERM)
            except ProcessLookupError:
                pass
    ledger.dispose()


def service(hub, user: str) -> httpx.Client:
    return http_client(base_url=f"{hub.url}/services/podbay/api/v1",
                        headers={"Authorization": f"token {hub.token(user)}"}, timeout=60)


def wait_for(what, check, timeout=60.0, every=0.3):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def db(hub) -> sqlite3.Connection:
    return sqlite3.connect(hub.data_dir / "ledger.sqlite")


def sampled_past(hub, key: str, t: float) -> float:
    """Wait for the service's first round after `t` that measured this holding (its
    last_sample), and answer its time."""
    def last() -> float | None:
        with db(hub) as conn:
            row = conn.execute("SELECT last_sample FROM podbay_holdings WHERE key=? AND ended IS NULL",
                               (key,)).fetchone()
        return row[0] if row and row[0] and row[0] > t else None

    return wait_for(f"a usage round after {t:.1f}", last, 90)


def server(hub, user, name) -> dict | None:
    with hub.api(user) as api:
        return api.get(f"/users/{user}").json()["servers"].get(name)


@pytest.mark.timing
def test_idle_gpu_is_warned_then_restarted_on_cpu_keeping_home_and_volumes_across_a_hub_restart(idle_hub, tmp_path):
    hub = idle_hub
    shots = str(os.environ.get("PODBAY_SCREENSHOT_DIR", tmp_path))
    with real_browser() as browser, service(hub, "alice") as alice:
        page = browser.new_page()
        browser_login(page, hub, "alice")
        # A job on the training pool at 0 % for its whole run: measured, reported, never touched.
        job = alice.post("/jobs", json={"name": "quiet", "gpus": 1, "command": ["sleep", "120"]}).json()
        wait_job(alice, job["id"], {"running"})
        # Two GPU workspaces; one will be busy.
        hub.start_server("alice", "busy", {"profile": "gpu-1"})
        busy_gpu = claimed(hub, "workspace:alice/busy")
        hub.exporter.util[busy_gpu[0]] = 72.0
        hub.start_server("alice", "idle", {"profile": "gpu-1", "volumes": ["scratch"], "image": "base"})
        idle_gpu = claimed(hub, "workspace:alice/idle")
        assert idle_gpu and idle_gpu != busy_gpu
        home = hub.data_dir / "homes" / "alice"
        (home / "notes.txt").write_text("written before the GPU was released\n")

        # The notice comes first (idle 8 s − 4 s before), with what will happen and how to keep it.
        warning = wait_for("the notice", lambda: [n for n in alice.get("/notices").json()
                                                  if n["workspace"] == "idle" and n["kind"] == "warning"], 30)[0]
        assert warning["action"] == "release-gpu" and warning["deadline"] > time.time() - 2
        assert "Any GPU activity resets the clock" in warning["message"] and "podbay ws keep idle" in warning["message"]
        # The hub's home page shows it too (the browser logged in before, to be quick).
        page.goto(f"{hub.url}/hub/home")
        shown = page.inner_text('#podbay-notices [data-workspace="idle"]')
        assert "GPU idle" in shown and "podbay ws keep idle" in shown
        page.screenshot(path=f"{shots}/hub-home-notice.png", full_page=True)
        # (The busy workspace is never warned.)
        assert not [n for n in alice.get("/notices").json() if n["workspace"] == "busy"]

        # The hub (and podbay's service with it) restarts in the middle: the clock is kept.
        with db(hub) as conn:
            hid, before = conn.execute("SELECT id, idle_since FROM podbay_holdings WHERE key=? AND ended IS NULL",
                                       ("workspace:alice/idle",)).fetchone()
        hub.stop()
        hub.start()
        with db(hub) as conn:
            after = conn.execute("SELECT idle_since FROM podbay_holdings WHERE id=?", (hid,)).fetchone()[0]
        assert after == before  # the same idle streak, not one begun again at the restart
        done = wait_for("the release", lambda: [n for n in alice.get("/notices").json()
                                                if n["kind"] == "release-gpu" and n["state"] == "done"], 60)
        assert len(done) == 1 and done[0]["workspace"] == "idle"
        model = wait_for("the CPU restart", lambda: (s := server(hub, "alice", "idle")) and s["ready"] and s, 60)
        assert model["user_options"]["profile"] == "cpu"
        assert model["user_options"]["volumes"] == ["scratch"] and model["user_options"]["image"] == "base"
        # Its GPU went back: no claim, and the pool shows it free.
        assert claimed(hub, "workspace:alice/idle") == []
        pool = next(p for p in alice.get("/capacity").json()["pools"] if p["pool"] == "dev")
        assert pool["profiles"]["gpu-1"] == {"total": 2, "used": 1, "free": 1}
        assert (home / "notes.txt").read_text() == "written before the GPU was released\n"
        # The busy one and the job are as they were.
        assert claimed(hub, "workspace:alice/busy") == busy_gpu and server(hub, "alice", "busy")["ready"]
        assert alice.get(f"/jobs/{job['id']}").json()["state"] == "running"
        # Acted once, across the restart.
        with db(hub) as conn:
            acts = conn.execute("SELECT action, state FROM podbay_idle_actions WHERE server='idle'").fetchall()
        assert acts == [("release-gpu", "done")]

        # The job never used its GPU: showback says so once it ends.
        alice.delete(f"/jobs/{job['id']}")
        wait_job(alice, job["id"], {"cancelled"})
        usage = alice.get("/usage").json()
        assert [j["job_id"] for j in usage["idle_jobs"]] == [job["id"]]
        assert usage["total"]["gpu_hours_held"] > 0
        hub.stop_server("alice", "busy")
        hub.stop_server("alice", "idle")


@pytest.mark.timing
def test_stop_rule_stops_and_activity_or_keep_holds_it(idle_hub):
    hub = idle_hub
    with service(hub, "bob") as bob:
        # Busy until the keep is asked for: on a loaded machine the spawn alone may outlast
        # the share's 6 s rule, which would then stop it before the test could keep it.
        before = dict(hub.exporter.util)
        hub.exporter.util.update({u: 60.0 for u in before})
        r = hub.start_server("bob", "share", {"profile": "shared-1/2"})
        assert r.status_code in (201, 202), r.text
        gpu = claimed(hub, "workspace:bob/share")
        gpu_uuid = gpu[0]  # a share's visible id is its GPU's UUID
        # Kept for an hour: no notice, no stop, however idle.
        r = bob.post("/workspaces/share/keep", json={"hours": 2})
        assert r.status_code == 400 and "at most 1h" in r.json()["message"]
        assert bob.post("/workspaces/share/keep", json={"hours": 1}).status_code == 200
        hub.exporter.util.update(before)
        hub.exporter.util[gpu_uuid] = 0.0
        # The service's own rounds, past the time its rule would have warned (3 s) and stopped
        # (6 s) at: its clock, however slowly its rounds come on a busy machine.
        sampled_past(hub, "workspace:bob/share", time.time() + 9)
        assert server(hub, "bob", "share")["ready"] and not bob.get("/notices").json()
        # The keep is taken back (a shorter one). The GPU is used for a while: no streak,
        # no notice. Then idle → warned → stopped.
        hub.exporter.util[gpu_uuid] = 60.0
        with db(hub) as conn:
            conn.execute("UPDATE podbay_holdings SET keep_until=? WHERE key=? AND ended IS NULL",
                         (time.time(), "workspace:bob/share"))
        # Two rounds after the change: the first may have read the GPU or the keep before it.
        sampled_past(hub, "workspace:bob/share", sampled_past(hub, "workspace:bob/share", time.time()))
        with db(hub) as conn:
            streak = conn.execute("SELECT idle_since FROM podbay_holdings WHERE key=? AND ended IS NULL",
                                  ("workspace:bob/share",)).fetchone()[0]
        assert streak is None and not bob.get("/notices").json() and server(hub, "bob", "share")["ready"]
        hub.exporter.util[gpu_uuid] = 0.0
        notes = wait_for("the stop", lambda: [n for n in bob.get("/notices").json() if n["state"] == "done"], 40)
        assert [(n["kind"], n["workspace"]) for n in notes] == [("stop", "share")]
        assert server(hub, "bob", "share") is None or not server(hub, "bob", "share")["ready"]
        assert claimed(hub, "workspace:bob/share") == [] and gpu


def test_jupyterhub_idle_culler_runs_as_a_managed_service_with_its_role(idle_hub):
    hub = idle_hub
    with hub.api("admin") as api:
        services = api.get("/services").json()
    culler = services["idle-culler"]
    assert "jupyterhub_idle_culler" in " ".join(culler["command"]) and "--timeout=86400" in culler["command"]
    assert culler["roles"] == ["podbay-idle-culler"]
    # It lists users and their servers every 2 s; its role lets it (no 403 in the hub's log).
    log = hub.log_path
    wait_for("the culler's round", lambda: "(idle-culler@" in log.read_text() and
             any("200 GET /hub/api/users" in line and "idle-culler@" in line for line in log.read_text().splitlines()), 30)
    assert not [line for line in log.read_text().splitlines() if "idle-culler@" in line and " 403 " in line]
