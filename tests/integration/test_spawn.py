"""Workspaces through a real JupyterHub's REST API, on the small test inventory.

The tests in this module share one hub and run in order: they use devices up, free
them, and restart the hub while workspaces run.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.harness import environ_of, free_port_block, have_proxy, Hub, require, TEST_CONFIG

# Restarts, kills and ports taken meanwhile: its tests share one hub and run in order.
pytestmark = [pytest.mark.hub, pytest.mark.timing]

MIG_1G = {"MIG-11111111-0003-4000-8000-000000000003", "MIG-11111111-0004-4000-8000-000000000004"}
SHARED = "GPU-11111111-0000-4000-8000-000000000001"
WHOLE = {"GPU-11111111-0000-4000-8000-000000000002", "GPU-11111111-0000-4000-8000-000000000003"}


@pytest.mark.parametrize(
    "user, name, profile, expect",
    [
        pytest.param("alice", "cpu", "cpu", lambda ids: ids == [], id="cpu"),
        pytest.param("alice", "mig", "mig-1g.10gb", lambda ids: len(ids) == 1 and ids[0] in MIG_1G, id="mig"),
        pytest.param("alice", "shared", "shared-1/2", lambda ids: ids == [SHARED], id="shared"),
        pytest.param("bob", "whole", "gpu-1", lambda ids: len(ids) == 1 and ids[0] in WHOLE, id="full"),
    ],
)
def test_each_profile_gets_its_devices(hub, user, name, profile, expect):
    r = hub.start_server(user, name, {"image": "pytorch", "profile": profile})
    assert r.status_code in (201, 202), r.text
    env = environ_of(hub.workspace_pid(user, name))
    ids = [d for d in env["CUDA_VISIBLE_DEVICES"].split(",") if d]
    assert expect(ids), ids
    assert env["NVIDIA_VISIBLE_DEVICES"] == (",".join(ids) or "void")
    assert env["PODBAY_PROFILE"] == profile
    assert env["PODBAY_IMAGE"] == "pytorch"
    # VS Code, where a workspace has it, on a private unix socket on this backend too.
    assert env["JUPYTER_VSCODE_PROXY_USE_SOCKET"] == "1"
    assert env["PODBAY_SERVICE_URL"] == f"http://127.0.0.1:{hub.port + 3}"


def test_a_used_up_profile_is_refused_with_its_reason(hub):
    # alice already holds one of the two 1g.10gb devices.
    assert hub.start_server("alice", "mig2", {"profile": "mig-1g.10gb"}).status_code in (201, 202)
    r = hub.start_server("alice", "mig3", {"profile": "mig-1g.10gb"})
    assert r.status_code == 503, r.text
    assert "no mig-1g.10gb is free" in r.json()["message"]
    with hub.api("alice") as api:
        assert "mig3" not in api.get("/users/alice").json()["servers"]


def test_quota_refusals_say_what_to_do(hub):
    # bob (team nlp, 1 GPU unit) holds gpu-1 already.
    r = hub.start_server("bob", "more", {"profile": "shared-1/2"})
    assert r.status_code == 403, r.text
    msg = r.json()["message"]
    assert "needs 0.5 GPU units" in msg and "team nlp" in msg and "stop a GPU workspace" in msg
    # ...and a CPU workspace is fine, up to his two workspaces.
    assert hub.start_server("bob", "notes", {"profile": "cpu"}).status_code in (201, 202)
    r = hub.start_server("bob", "third", {"profile": "cpu"})
    assert r.status_code == 403 and "you already run 2 workspaces" in r.json()["message"]


@pytest.mark.parametrize(
    "options, status, words",
    [
        pytest.param({"image": "nope"}, 400, "unknown image 'nope'", id="image"),
        pytest.param({"profile": "gpu-7"}, 400, "unknown GPU profile 'gpu-7'", id="profile"),
        pytest.param({"volumes": ["secret"]}, 400, "unknown volume 'secret'", id="volume"),
        pytest.param({"volumes": ["corpora"]}, 400, "may not mount volume 'corpora'", id="forbidden-volume"),
        pytest.param({"colour": "blue"}, 400, "unknown option 'colour'", id="unknown-key"),
        pytest.param({"volumes": "scratch"}, 400, "volumes", id="wrong-type"),
        pytest.param({"team": "nlp"}, 400, "not in team 'nlp'", id="team"),
    ],
)
def test_bad_options_are_refused_and_claim_nothing(hub, options, status, words):
    ledger = hub.book()
    before = ledger.taken()
    r = hub.start_server("alice", "bad", options)
    assert r.status_code == status, r.text
    assert words in r.json()["message"]
    assert ledger.taken() == before
    ledger.dispose()


def test_stop_frees_the_devices(hub):
    ledger = hub.book()
    mig_pid_env = environ_of(hub.workspace_pid("alice", "mig"))["CUDA_VISIBLE_DEVICES"]
    hub.stop_server("alice", "mig")
    assert ledger.get("workspace:alice/mig") is None
    assert ("dev-01", mig_pid_env) not in ledger.taken()
    # The freed device is what the next request gets.
    assert hub.start_server("alice", "mig3", {"profile": "mig-1g.10gb"}).status_code in (201, 202)
    assert environ_of(hub.workspace_pid("alice", "mig3"))["CUDA_VISIBLE_DEVICES"] == mig_pid_env
    ledger.dispose()


def test_volumes_are_mounted_and_read_only_ones_are_not_writable(hub):
    r = hub.start_server("alice", "data", {"profile": "cpu", "volumes": ["imagenet", "scratch"]})
    assert r.status_code in (201, 202), r.text
    pid = hub.workspace_pid("alice", "data")
    home = hub.data_dir / "homes" / "alice"
    (hub.data_dir / "volumes" / "imagenet" / "README").write_text("imagenet\n")

    def inside(script: str) -> subprocess.CompletedProcess:
        return subprocess.run(["nsenter", "-t", str(pid), "-m", "sh", "-c", script],
                              capture_output=True, text=True)

    assert inside(f"cat {home}/data/imagenet/README").stdout == "imagenet\n"
    denied = inside(f"touch {home}/data/imagenet/new")
    assert denied.returncode != 0 and "Read-only file system" in denied.stderr
    assert inside(f"echo hi > {home}/data/scratch/note && cat {home}/data/scratch/note").stdout == "hi\n"
    assert (hub.data_dir / "volumes" / "scratch" / "note").read_text() == "hi\n"
    assert environ_of(pid)["PODBAY_VOLUMES"] == "imagenet,scratch"
    hub.stop_server("alice", "data")


def test_a_workspace_that_dies_while_starting_fails_at_once_with_its_log(hub):
    # A file where the volume's mount point must go: the launcher cannot mount and exits.
    home = hub.data_dir / "homes" / "alice"
    blocker = home / "data" / "scratch"
    blocker.parent.mkdir(parents=True, exist_ok=True)
    if blocker.is_dir():
        blocker.rmdir()
    blocker.write_text("in the way\n")
    ledger = hub.book()
    before = ledger.taken()
    t0 = time.monotonic()
    r = hub.start_server("alice", "doomed", {"profile": "mig-3g.40gb", "volumes": ["scratch"]})
    elapsed = time.monotonic() - t0
    blocker.unlink()
    assert r.status_code == 500, r.text
    msg = r.json()["message"]
    assert "exited with status" in msg and "cannot mount volume" in msg
    # The message proves the quick path (the slow one is the hub's own wait, which times out
    # after http_timeout, 60 s, in words of its own); the bound only rules that wait out.
    assert elapsed < 30, f"took {elapsed:.1f}s to report the failure"
    assert ledger.taken() == before
    ledger.dispose()


def test_restart_keeps_workspaces_and_their_devices(hub):
    ledger = hub.book()
    held = ledger.taken()
    pids = {k: hub.workspace_pid(*k) for k in [("alice", "shared"), ("bob", "whole")]}
    hub.stop()
    for pid in pids.values():
        os.kill(pid, 0)  # still running without a hub
    hub.start()
    for (user, name), pid in pids.items():
        server = hub.wait_ready(user, name)
        assert server["ready"]
        os.kill(pid, 0)
    assert ledger.taken() == held
    # No double claim after the restart: the second shared slot is the only one left.
    r = hub.start_server("alice", "shared2", {"profile": "shared-1/2"})
    assert r.status_code in (201, 202), r.text
    r = hub.start_server("alice", "shared3", {"profile": "shared-1/2"})
    assert r.status_code == 503, r.text
    keys = [k for _node, k in ledger.taken()]
    assert len(keys) == len(set(keys))
    ledger.dispose()


def test_restart_releases_devices_of_workspaces_that_died_meanwhile(hub):
    ledger = hub.book()
    if ledger.get("workspace:alice/shared2") is None:  # the test before failed before it started
        assert hub.start_server("alice", "shared2", {"profile": "shared-1/2"}).status_code in (201, 202)
    pid = hub.workspace_pid("alice", "shared2")
    hub.stop()
    os.kill(pid, 9)
    hub.start()
    assert ledger.get("workspace:alice/shared2") is None
    assert ("dev-01", f"{SHARED}::1") not in ledger.taken() or ("dev-01", f"{SHARED}::0") not in ledger.taken()
    ledger.dispose()


def test_logs_are_kept_per_workspace(hub):
    log = Path(hub.data_dir) / "logs" / "alice" / "cpu.log"
    assert "podbay: starting" in log.read_text()


# The operator's own jupyterhub_config.py, with JupyterHub's port picker made to hand out,
# first, a port the test holds: what an outgoing connection does when it takes the port between
# JupyterHub's choice and the server's bind (jupyterhub/jupyterhub#3005), made certain.
TAKEN_FIRST = """from podbay.hub.hubconfig import configure
import jupyterhub.spawner

configure(c)
_taken, _pick = [{port}], jupyterhub.spawner.random_port
jupyterhub.spawner.random_port = lambda: _taken.pop() if _taken else _pick()
"""


def test_a_workspace_whose_port_was_taken_meanwhile_starts_on_another(tmp_path):
    require(have_proxy(), "configurable-http-proxy is not installed")
    hub = Hub(TEST_CONFIG, tmp_path / "hub", free_port_block())
    hub.data_dir.mkdir()
    # An outgoing connection holds the port, as in the race: a listener would answer the
    # hub's own check that the server listens.
    with socket.create_server(("127.0.0.1", 0)) as peer, \
            socket.create_connection(peer.getsockname(), source_address=("127.0.0.1", 0)) as held:
        port = held.getsockname()[1]
        (hub.data_dir / "jupyterhub_config.py").write_text(TAKEN_FIRST.format(port=port))
        hub.start(own_config=True)
        try:
            r = hub.start_server("alice", "w", {"profile": "mig-1g.10gb"})
            assert r.status_code in (201, 202), r.text
            with hub.api("alice") as api:
                url = api.get("/users/alice").json()["servers"]["w"]["url"]
            log = (hub.data_dir / "logs" / "alice" / "w.log").read_text()
            assert f"The port {port} is already in use" in log and f"port {port} was taken" in log
            # The claim made for the first try is the workspace's: one device, in its env.
            ledger = hub.book()
            held_devices = [k for _node, k in ledger.taken()]
            env = environ_of(hub.workspace_pid("alice", "w"))
            assert held_devices == [env["CUDA_VISIBLE_DEVICES"]]
            # The server has this start's token (the hub knows it as the server's own), which
            # a browser's login to it and its activity reports need.
            me = httpx.get(f"{hub.url}/hub/api/user", timeout=30,
                           headers={"Authorization": f"token {env['JUPYTERHUB_API_TOKEN']}"})
            assert me.status_code == 200 and me.json().get("name") == "alice", me.text
            assert ledger.get("workspace:alice/w").ref["pid"] == hub.workspace_pid("alice", "w")
            ledger.dispose()
            # The hub routes to the port the server did bind.
            status = httpx.get(f"{hub.url}{url}api/status", timeout=30,
                               headers={"Authorization": f"token {hub.token('alice')}"})
            assert status.status_code == 200, status.text
            hub.stop_server("alice", "w")
        finally:
            hub.stop()
