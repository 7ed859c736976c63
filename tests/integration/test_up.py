"""`podbay up` as a person runs it: it says where and how to log in, and Ctrl-C leaves
no process behind (hub, proxy, workspaces)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import PASSWORD, TEST_CONFIG, Hub, free_port_block, have_proxy, require

pytestmark = pytest.mark.hub


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")


def test_ctrl_c_stops_everything(tmp_path):
    require(have_proxy(), "configurable-http-proxy is not installed")
    port = free_port_block()
    hub = Hub(TEST_CONFIG, tmp_path, port, keep_workspaces=False)
    env = {**os.environ, "PODBAY_DEMO_PASSWORD": PASSWORD}
    proc = subprocess.Popen(
        [sys.executable, "-m", "podbay.hub.cli", "up", "--config", str(TEST_CONFIG),
         "--port", str(port), "--data-dir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    banner = ""
    deadline = time.monotonic() + 60
    while "Ctrl-C stops everything" not in banner and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        banner += line
    assert f"podbay is running at http://127.0.0.1:{port}" in banner, banner
    assert f"password: {PASSWORD}" in banner
    assert "alice (team vision)" in banner and "bob (team nlp)" in banner and "admin (admin)" in banner
    # The local backend says what it is, at the banner and in the hub's own output.
    assert "backend: local: workspaces run as this hub's user and are NOT isolated" in banner, banner
    assert "no isolation between workspaces" in banner, banner

    assert hub.start_server("alice", "w", {"profile": "mig-1g.10gb"}).status_code in (201, 202)
    workspace = hub.workspace_pid("alice", "w")
    proxy = int((tmp_path / "proxy.pid").read_text())
    hub_pids = [int(p) for p in subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True,
                                                text=True).stdout.split()]
    assert hub_pids, "podbay up has no hub child"

    proc.send_signal(signal.SIGINT)
    proc.stdout.read()
    assert proc.wait(60) == 0
    for pid in [workspace, proxy, *hub_pids]:
        deadline = time.monotonic() + 10
        while not gone(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert gone(pid), f"process {pid} is still running"
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{port}/hub/api", timeout=2)
    # The workspace's devices were released on the way out.
    ledger = hub.ledger()
    assert ledger.allocations() == []
    ledger.dispose()


@pytest.mark.parametrize("how", [["--ip", "0.0.0.0"], ["--ip", "192.0.2.10"]])
def test_the_local_backend_refuses_to_listen_beyond_the_loopback(tmp_path, how):
    # Refused before anything starts or listens, with what to do instead.
    run = subprocess.run(
        [sys.executable, "-m", "podbay.hub.cli", "up", "--config", str(TEST_CONFIG),
         "--port", str(free_port_block()), "--data-dir", str(tmp_path), *how],
        capture_output=True, text=True, timeout=60, env={**os.environ, "PODBAY_BACKEND": "local"})
    assert run.returncode == 1, run.stdout + run.stderr
    assert f"refusing to listen on {how[1]} with the local backend" in run.stderr
    assert "--backend docker" in run.stderr and "--allow-unisolated" in run.stderr
    assert not (tmp_path / "jupyterhub_config.py").exists(), "nothing was started"


def test_an_operators_own_hub_config_refuses_it_too(monkeypatch, tmp_path):
    # configure(c) is what operators call from their own jupyterhub_config.py.
    from traitlets.config import Config

    from podbay.hub.hubconfig import configure

    for name, value in {"PODBAY_CONFIG": str(TEST_CONFIG), "PODBAY_DATA_DIR": str(tmp_path),
                        "PODBAY_IP": "0.0.0.0", "PODBAY_BACKEND": "local"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("PODBAY_ALLOW_UNISOLATED", raising=False)
    with pytest.raises(SystemExit, match="refusing to listen on 0.0.0.0"):
        configure(Config())
    monkeypatch.setenv("PODBAY_ALLOW_UNISOLATED", "1")
    c = Config()
    configure(c)
    assert c.JupyterHub.bind_url.startswith("http://0.0.0.0:")
    assert c.JupyterHub.hub_bind_url.startswith("http://127.0.0.1:"), "only the public port moves"
