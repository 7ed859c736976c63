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
