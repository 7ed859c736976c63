"""Training jobs through podbay's REST service, run by a real JupyterHub.

The test inventory's training pool has two whole GPUs; alice (team vision) may hold four
job GPUs, bob (team nlp) two.
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import sqlite3
import time
from pathlib import Path

import httpx
import pytest

from tests.harness import claimed, environ_of, http_client, wait_job

pytestmark = pytest.mark.hub


@pytest.fixture(scope="module")
def svc(hub):
    return hub


def api(hub, user: str) -> httpx.Client:
    return http_client(base_url=f"{hub.url}/services/podbay/api/v1",
                        headers={"Authorization": f"token {hub.token(user)}"}, timeout=60)


def submit(client: httpx.Client, **body) -> dict:
    r = client.post("/jobs", json=body)
    assert r.status_code == 201, r.text
    return r.json()


def test_submit_from_a_running_workspace(svc):
    (svc.data_dir / "volumes" / "imagenet").mkdir(parents=True, exist_ok=True)
    (svc.data_dir / "volumes" / "imagenet" / "train.txt").write_text("cat.jpg\n")
    assert svc.start_server("alice", "dev", {"image": "base", "profile": "mig-1g.10gb",
                                             "volumes": ["imagenet"]}).status_code in (201, 202)
    with api(svc, "alice") as c:
        job = submit(c, name="from-ws", from_workspace="dev", gpus=1,
                     command=["sh", "-c", "echo image=$PODBAY_IMAGE gpus=$CUDA_VISIBLE_DEVICES; pwd; cat data/imagenet/train.txt"])
        assert job["image"] == "base" and job["volumes"] == ["imagenet"] and job["from_workspace"] == "dev"
        done = wait_job(c, job["id"], {"succeeded", "failed"})
        assert done["state"] == "succeeded" and done["exit_code"] == 0, done
        out = c.get(f"/jobs/{job['id']}/logs").text
    assert "image=base gpus=GPU-22222222-0000-4000-8000-00000000000" in out
    assert str(svc.data_dir / "homes" / "alice") in out and "cat.jpg" in out
    # The workspace kept its MIG slice; the job had a training GPU of its own.
    assert environ_of(svc.workspace_pid("alice", "dev"))["CUDA_VISIBLE_DEVICES"].startswith("MIG-")
    assert done["devices"][0].startswith("GPU-22222222")


@pytest.mark.timing
def test_waits_behind_a_full_pool_then_runs_streams_and_ends(svc):
    with api(svc, "alice") as c:
        big = submit(c, name="big", gpus=2, command=["sleep", "300"])
        wait_job(c, big["id"], {"running"})
        small = submit(c, name="small", gpus=1,
                       command=["sh", "-c", "for i in 1 2 3 4; do echo line $i; sleep 0.5; done; exit 3"])
        try:
            # Queued from the start, with its reason once the scheduler has looked at it.
            deadline = time.monotonic() + 60
            while "free GPUs" not in (queued := c.get(f"/jobs/{small['id']}").json())["message"]:
                assert queued["state"] == "queued" and time.monotonic() < deadline, queued
                time.sleep(0.2)
            assert queued["state"] == "queued" and "waiting for 1 free GPUs in pool training" in queued["message"]
        finally:  # the pool's GPUs back for the module's next tests, whatever happened here
            cancelled = c.delete(f"/jobs/{big['id']}").json()
        assert cancelled["state"] == "cancelled"
        wait_job(c, small["id"], {"running", "failed", "succeeded"})
        # Follow the logs while it runs: the first line arrives before the job ends.
        seen, t_first = [], None
        with c.stream("GET", f"/jobs/{small['id']}/logs", params={"follow": "true"}) as r:
            for line in r.iter_lines():
                if line:
                    seen.append(line)
                    if t_first is None:
                        t_first = time.monotonic()
                        state_then = c.get(f"/jobs/{small['id']}").json()["state"]
        assert seen == ["line 1", "line 2", "line 3", "line 4"]
        assert state_then == "running"
        done = c.get(f"/jobs/{small['id']}").json()
        assert done["state"] == "failed" and done["exit_code"] == 3 and done["message"] == "exited with code 3"
        # Logs are kept after the end.
        assert c.get(f"/jobs/{small['id']}/logs").text.splitlines() == seen


def test_cancel_ends_the_whole_process_group_and_frees_devices(svc):
    with api(svc, "alice") as c:
        pidfile = svc.data_dir / "homes" / "alice" / "child.pid"
        job = submit(c, name="cancel-me", gpus=2,
                     command=["sh", "-c", f"sleep 300 & echo $! > {pidfile}; wait"])
        wait_job(c, job["id"], {"running"})
        deadline = time.monotonic() + 10
        while not pidfile.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        child = int(pidfile.read_text())
        cancelled = c.delete(f"/jobs/{job['id']}").json()
        assert cancelled["state"] == "cancelled"
        # Killed with its group: gone, or a zombie until its parent is reaped.
        deadline = time.monotonic() + 30
        while True:
            try:
                if "Z" in Path(f"/proc/{child}/stat").read_text().split()[2]:
                    break
            except FileNotFoundError:
                break
            assert time.monotonic() < deadline, f"the job's child {child} still runs"
            time.sleep(0.1)
        cap = c.get("/capacity").json()
        training = next(p for p in cap["pools"] if p["pool"] == "training")
        assert training["devices"]["gpu"] == {"total": 2, "used": 0, "free": 2}


def _service_pid(hub) -> int:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes()
            if b"podbay.hub.service" in cmd and environ_of(int(entry.name)).get("PODBAY_DATA_DIR") == str(hub.data_dir):
                return int(entry.name)
        except OSError:
            continue
    raise AssertionError("podbay service not found")


@pytest.mark.timing
def test_kill_9_of_the_service_loses_nothing_and_runs_nothing_twice(svc):
    with api(svc, "alice") as c:
        marker = svc.data_dir / "homes" / "alice" / "runs.txt"
        marker.unlink(missing_ok=True)
        first = submit(c, name="survivor", gpus=2, command=["sh", "-c", f"echo run >> {marker}; sleep 4; echo ok"])
        second = submit(c, name="next-in-line", gpus=2, command=["sh", "-c", f"echo second >> {marker}"])
        wait_job(c, first["id"], {"running"})
        old = _service_pid(svc)
        os.kill(old, signal.SIGKILL)
        # The hub notices and starts the service again (its poll runs every 30 s).
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if c.get("/me").status_code == 200 and _service_pid(svc) != old:
                    break
            except (httpx.HTTPError, AssertionError):
                pass
            time.sleep(0.5)
        done = wait_job(c, first["id"], {"succeeded", "failed"}, timeout=30)
        assert done["state"] == "succeeded" and done["exit_code"] == 0
        assert c.get(f"/jobs/{first['id']}/logs").text == "ok\n"
        assert wait_job(c, second["id"], {"succeeded", "failed"})["state"] == "succeeded"
    assert marker.read_text() == "run\nsecond\n"


def test_bob_cannot_touch_alices_jobs_or_vision_volumes(svc):
    with api(svc, "alice") as alice:
        job = submit(alice, name="private", gpus=0, command=["true"])
    with api(svc, "bob") as bob:
        for method, path in [("GET", f"/jobs/{job['id']}"), ("GET", f"/jobs/{job['id']}/logs"),
                             ("DELETE", f"/jobs/{job['id']}")]:
            r = bob.request(method, path)
            assert r.status_code == 403 and r.json()["error"] == "forbidden", (method, path, r.text)
        assert all(j["user"] == "bob" for j in bob.get("/jobs").json())
        assert bob.get("/jobs", params={"user": "alice"}).status_code == 403
        assert bob.get("/jobs", params={"team": "vision"}).status_code == 403
        r = bob.post("/jobs", json={"name": "peek", "command": ["ls"], "gpus": 0, "volumes": ["imagenet"]})
        assert r.status_code == 400 and "may not mount volume 'imagenet'" in r.json()["message"]
        assert [v["name"] for v in bob.get("/volumes").json()] == ["scratch", "corpora"]
    with api(svc, "admin") as admin:
        users = {j["user"] for j in admin.get("/jobs").json()}
        assert "alice" in users
        assert {j["team"] for j in admin.get("/jobs", params={"team": "vision"}).json()} == {"vision"}
        assert admin.get(f"/jobs/{job['id']}").status_code == 200


@pytest.mark.parametrize(
    "body, words",
    [
        pytest.param({"name": "x", "command": ["true"], "image": "nope"}, "unknown image 'nope'", id="image"),
        pytest.param({"name": "x", "command": ["true"], "volumes": ["nope"]}, "unknown volume 'nope'", id="volume"),
        pytest.param({"name": "x", "command": ["true"], "from_workspace": "nope"}, "no workspace named 'nope'", id="workspace"),
        pytest.param({"name": "x", "command": ["true"], "gpus": 3}, "at most 2 whole GPUs on one node", id="pool-size"),
        pytest.param({"name": "x", "command": ["true"], "gpus": 9}, "at most 4 job GPUs", id="team-quota"),
        pytest.param({"name": "x", "command": []}, "command:", id="empty-command"),
        pytest.param({"name": "x", "command": "python train.py"}, "command: Input should be a valid list", id="string-command"),
        pytest.param({"name": "x", "command": [1, 2]}, "command.0:", id="non-string-command"),
        pytest.param({"name": "x", "command": [""]}, "the program (the command's first item) is empty", id="blank-program"),
        pytest.param({"name": "Not OK!", "command": ["true"]}, "name:", id="name"),
        pytest.param({"name": "x", "command": ["true"], "env": {"CUDA_VISIBLE_DEVICES": "0"}}, "set by podbay", id="env"),
        pytest.param({"name": "x", "command": ["true"], "workdir": "../bob"}, "inside your home", id="workdir"),
        pytest.param({"name": "x", "command": ["true"], "colour": "blue"}, "colour: unknown field", id="unknown-field"),
        pytest.param(["not", "an", "object"], "valid dictionary", id="not-an-object"),
    ],
)
def test_bad_jobs_are_refused_and_nothing_is_queued(svc, body, words):
    with api(svc, "alice") as c:
        before = len(c.get("/jobs").json())
        r = c.post("/jobs", json=body)
        assert r.status_code == 400, r.text
        assert set(r.json()) == {"error", "message"} and words in r.json()["message"], r.text
        assert len(c.get("/jobs").json()) == before


def test_oversized_body_is_refused(svc):
    with api(svc, "alice") as c:
        r = c.post("/jobs", json={"name": "big", "command": ["echo", "x" * 300_000]})
        assert r.status_code == 413 and r.json()["error"] == "too_large"


def test_auth_errors_never_echo_the_token(svc):
    url = f"{svc.url}/services/podbay/api/v1/me"
    assert httpx.get(url).status_code == 401
    secret = "definitely-not-a-valid-token-123456"
    for header in (f"token {secret}", f"Bearer {secret}"):
        r = httpx.get(url, headers={"Authorization": header})
        assert r.status_code == 401 and r.json()["error"] == "unauthorized"
        assert secret not in r.text
    r = httpx.get(url, headers={"Authorization": f"Bearer {svc.token('bob')}"})
    assert r.status_code == 200 and r.json()["name"] == "bob"


def test_only_tokens_granted_the_service_may_use_it(svc):
    """A token of bob's made for something else (here: reading his name only) resolves to
    bob at the hub, but is not a key to podbay: 403, naming the scope it lacks. A token
    that has the scope, narrow otherwise, works."""
    url = f"{svc.url}/services/podbay/api/v1/me"
    with svc.api("bob") as hub_api:
        def token(scopes):
            r = hub_api.post("/users/bob/tokens", json={"scopes": scopes, "note": "scope test"})
            assert r.status_code == 201, r.text
            return r.json()["token"]
        narrow, granted = token(["read:users:name!user=bob"]), token(["access:services!service=podbay"])
    r = httpx.get(url, headers={"Authorization": f"token {narrow}"})
    assert r.status_code == 403 and r.json()["error"] == "missing_scope", r.text
    assert "access:services!service=podbay" in r.json()["message"] and narrow not in r.text
    r = httpx.get(url, headers={"Authorization": f"token {granted}"})
    assert r.status_code == 200 and r.json()["name"] == "bob", r.text


def test_catalog_capacity_and_me_reflect_the_ledger(svc):
    with api(svc, "bob") as c:
        me = c.get("/me").json()
        assert me["team"] == "nlp" and me["quota"] == {"gpu_units": 1.0, "workspaces_per_user": 2, "job_gpus": 2}
        cat = {p["id"]: p for p in c.get("/catalog").json()["profiles"]}
        # alice holds one 1g.10gb in her "dev" workspace.
        assert cat["mig-1g.10gb"]["free"] == 1 and cat["mig-1g.10gb"]["available"]
        assert not cat["gpu-2"]["available"] and "needs 2 GPU units" in cat["gpu-2"]["reason"]
    assert httpx.get(f"{svc.url}/services/podbay/api/v1/openapi.json").json()["info"]["title"] == "podbay"


def test_logs_come_as_bytes_so_a_read_may_end_inside_a_character(svc):
    """A cursor may fall inside a multi-byte character (a progress bar's █ being written):
    the service sends the bytes as they are, and the next read completes the character,
    where decoding each read would have turned both halves into U+FFFD."""
    with api(svc, "alice") as c:
        job = submit(c, name="utf8", image="base", gpus=0, command=["printf", "█ done\n"])
        wait_job(c, job["id"], {"succeeded"})
        logs = f"/jobs/{job['id']}/logs"
        whole = c.get(logs)
        assert whole.content == "█ done\n".encode() and whole.headers["X-Podbay-Cursor"] == "9"
        # On the local backend the cursor is a byte offset: read the bar's first byte, then the rest.
        first = c.get(logs, params={"cursor": "0"}).content[:1]
        rest = c.get(logs, params={"cursor": "1"}).content
        assert (first + rest).decode() == "█ done\n" and rest.startswith(b"\x96\x88")
        assert c.get(logs, params={"cursor": "²"}).status_code == 400


@pytest.mark.timing
def test_a_slow_database_write_does_not_stall_other_requests(svc):
    """The scheduler records a job's end while another program holds the database's write
    lock (a long transaction, a slow disk): that write waits, in a thread, and the service
    goes on answering everyone else."""
    with api(svc, "alice") as c:
        assert c.get("/catalog").status_code == 200  # the caller's token, resolved and cached
        job = submit(c, name="ends-while-locked", image="base", gpus=1, command=["sh", "-c", "sleep 1"])
        wait_job(c, job["id"], {"running"})
        db = sqlite3.connect(svc.data_dir / "ledger.sqlite", timeout=10, isolation_level=None)
        db.execute("BEGIN IMMEDIATE")
        try:
            # Reads answer while the write lock is held: one that waited for it could not
            # answer before the ROLLBACK below (only its busy timeout's 503). No bound on how
            # long they take, which only says how busy the machine is.
            ended = svc.data_dir / "jobs" / str(job["id"]) / "exit_code"
            held_until, answered, deadline = time.monotonic() + 4, 0, time.monotonic() + 120
            # The job ends meanwhile (its exit code written); the scheduler's record of it waits.
            while time.monotonic() < held_until or answered < 3 or not ended.exists():
                assert time.monotonic() < deadline, "the job did not end"
                assert c.get("/catalog").status_code == 200
                assert c.get(f"/jobs/{job['id']}").status_code == 200
                answered += 1
                time.sleep(0.1)
            assert c.get(f"/jobs/{job['id']}").json()["state"] == "running"
        finally:
            db.execute("ROLLBACK")
            db.close()
        assert wait_job(c, job["id"], {"succeeded", "failed"})["state"] == "succeeded"


@pytest.mark.timing
def test_cancelling_a_slow_job_does_not_hold_up_the_others(svc):
    """A job that ignores SIGTERM takes the whole grace period to stop: meanwhile the
    scheduler starts and finishes other jobs, and a second cancel waits for the first."""
    with api(svc, "alice") as c:
        stubborn = submit(c, name="stubborn", image="base", gpus=1,
                          command=["sh", "-c", "trap '' TERM; echo up; while :; do sleep 0.1; done"])
        wait_job(c, stubborn["id"], {"running"})
        deadline = time.monotonic() + 10
        while "up" not in c.get(f"/jobs/{stubborn['id']}/logs").text and time.monotonic() < deadline:
            time.sleep(0.1)
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            t0 = time.monotonic()
            first = pool.submit(c.delete, f"/jobs/{stubborn['id']}")
            time.sleep(0.5)
            second = pool.submit(c.delete, f"/jobs/{stubborn['id']}")
            quick = submit(c, name="meanwhile", image="base", gpus=1, command=["echo", "done"])
            done = wait_job(c, quick["id"], {"succeeded", "failed"}, timeout=30)
            finished_meanwhile = time.monotonic() - t0
            r1, r2 = first.result(60), second.result(60)
            cancel_took = time.monotonic() - t0
        assert done["state"] == "succeeded"
        assert r1.status_code == r2.status_code == 200 and r1.json()["state"] == r2.json()["state"] == "cancelled"
        assert finished_meanwhile < cancel_took - 1, (finished_meanwhile, cancel_took)
        assert claimed(svc, f"job:{stubborn['id']}") == []

