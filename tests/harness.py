"""The tests' harness: a real JupyterHub with configurable-http-proxy run by `podbay up`
(Hub), the shared hubs' helpers, the browser, Docker and the stand-in cluster's process. The
fixtures that hand these to tests are in conftest.py."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
# A copy of ../shared/fixtures/gpu (sources in its README): a clone needs nothing beside it.
FIXTURES = ROOT / "tests" / "fixtures" / "gpu"
TEST_CONFIG = ROOT / "tests" / "data" / "podbay-test.yaml"
PASSWORD = "podbay-test-password"


def end(proc: subprocess.Popen, grace: float = 30) -> None:
    """Stop a process the tests started: SIGTERM, and SIGKILL if it is still there after
    `grace` seconds. Cleanup, never a check of how quickly it goes."""
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def http_client(**kw) -> httpx.Client:
    """A client for the portal that keeps idle connections as podbay's own do (tui/hubapi.py,
    KEEPALIVE): a test that waits between two requests must not meet the proxy closing one."""
    from podbay.tui.hubapi import KEEPALIVE

    return httpx.Client(limits=KEEPALIVE, **kw)


def require(condition: bool, reason: str):
    """Skip when a real part is missing here; in CI (PODBAY_REQUIRE_ALL) fail instead,
    because the README's test command installs every part."""
    if condition:
        return
    if os.environ.get("PODBAY_REQUIRE_ALL"):
        pytest.fail(f"{reason} — the test setup should have installed it")
    pytest.skip(reason)


def free_port_block(n: int = 4) -> int:
    """A base port with n free consecutive ports (public, hub, proxy API, podbay service).

    Below the kernel's ephemeral range: a port from it may be taken between this check and
    the bind, by any outgoing connection, even the hub's own one that waits for its service
    on that very port (TCP connects to itself when its source port is the port it dials)."""
    import random

    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    for _ in range(200):
        base = random.randrange(10000, max(low, 10000 + 2 * n) - n)
        ok = True
        for p in range(base, base + n):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError("no free port block")


@dataclass
class Hub:
    config: Path
    data_dir: Path
    port: int
    keep_workspaces: bool = True
    spawner: str | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen | None = None
    tokens: dict[str, str] = field(default_factory=dict)
    log_path: Path | None = None
    # The proxy's API token, so a test can add a route of its own (what a workspace serves).
    proxy_token: str = field(default_factory=lambda: secrets.token_hex(16))
    # The Python podbay runs on: this run's, or a site install every account may run (where
    # the hub's workspaces or jobs become people: tests/standins/site_install.py).
    python: str = sys.executable

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "PODBAY_CONFIG": str(self.config),
            "PODBAY_DATA_DIR": str(self.data_dir),
            "PODBAY_PORT": str(self.port),
            "PODBAY_DEMO_PASSWORD": PASSWORD,
            "CONFIGPROXY_AUTH_TOKEN": self.proxy_token,
            **self.extra_env,
        }

    def start(self, own_config: bool = False) -> None:
        """`podbay up`; with own_config, `jupyterhub -f` the operator's own
        jupyterhub_config.py that the test wrote in the data directory."""
        self.log_path = self.data_dir / "podbay-up.log"
        cmd = [self.python, "-m", "podbay.hub.cli", "up", "--config", str(self.config),
               "--port", str(self.port), "--data-dir", str(self.data_dir)]
        if self.keep_workspaces:
            cmd.append("--keep-workspaces")
        if self.spawner:
            cmd += ["--spawner", self.spawner]
        if own_config:
            cmd = [self.python, "-m", "jupyterhub", "-f", str(self.data_dir / "jupyterhub_config.py")]
        env = self.env
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                         cwd=self.data_dir if own_config else None)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"podbay up exited:\n{self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/hub/api", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"hub did not come up:\n{self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def token(self, user: str) -> str:
        """The user's token the tests share (never revoke it: new_token makes one to lose)."""
        if user not in self.tokens:
            self.tokens[user] = self.new_token(user)
        return self.tokens[user]

    def new_token(self, user: str) -> str:
        hub_config = self.data_dir / "jupyterhub_config.py"
        out = subprocess.run(
            [sys.executable, "-m", "jupyterhub", "token", user, "-f", str(hub_config)],
            cwd=self.data_dir, env=self.env, capture_output=True, text=True, check=True,
        )
        return out.stdout.strip().splitlines()[-1]

    def api(self, user: str) -> httpx.Client:
        return http_client(base_url=f"{self.url}/hub/api",
                            headers={"Authorization": f"token {self.token(user)}"}, timeout=90)

    def start_server(self, user: str, name: str, options: dict | None, wait: bool = True) -> httpx.Response:
        with self.api(user) as api:
            r = api.post(f"/users/{user}/servers/{name}", json={"user_options": options or {}})
            if wait and r.status_code == 202:
                self.wait_ready(user, name)
            return r

    def wait_ready(self, user: str, name: str, timeout: float = 90) -> dict:
        deadline = time.monotonic() + timeout
        with self.api(user) as api:
            while time.monotonic() < deadline:
                model = api.get(f"/users/{user}").json()
                server = model["servers"].get(name)
                if server and server["ready"]:
                    return server
                if not server or (not server["pending"] and not server["ready"]):
                    raise AssertionError(f"{user}/{name} is not starting: {server}")
                time.sleep(0.3)
        raise AssertionError(f"{user}/{name} not ready after {timeout}s")

    def stop_server(self, user: str, name: str) -> None:
        with self.api(user) as api:
            r = api.delete(f"/users/{user}/servers/{name}")
            assert r.status_code in (202, 204), r.text
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if name not in api.get(f"/users/{user}").json()["servers"]:
                    return
                time.sleep(0.3)
        raise AssertionError(f"{user}/{name} did not stop")

    def add_route(self, path: str, target: str) -> None:
        """Route `path` on the hub's origin to `target`, as the hub routes a workspace's URL to
        its server: whatever that server answers is served from the hub's origin."""
        r = httpx.post(f"http://127.0.0.1:{self.port + 2}/api/routes{path}", json={"target": target},
                       headers={"Authorization": f"token {self.proxy_token}"}, timeout=10)
        assert r.status_code == 201, r.text

    def remove_server(self, user: str, name: str) -> None:
        """Delete a named server for good (podbay ws rm, the hub's delete button)."""
        with self.api(user) as api:
            r = api.request("DELETE", f"/users/{user}/servers/{name}", json={"remove": True})
            assert r.status_code in (202, 204), r.text
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if name not in api.get(f"/users/{user}", params={"include_stopped_servers": "1"}).json()["servers"]:
                    return
                time.sleep(0.3)
        raise AssertionError(f"{user}/{name} was not removed")

    def book(self):
        from podbay.hub.quota import QuotaBook

        return QuotaBook(f"sqlite:///{self.data_dir / 'ledger.sqlite'}")

    def workspace_pid(self, user: str, name: str) -> int:
        ledger = self.book()
        try:
            alloc = ledger.get(f"workspace:{user}/{name}")
        finally:
            ledger.dispose()
        assert alloc is not None, f"no allocation for {user}/{name}"
        return alloc.ref["pid"]


def hub_on(cfg: dict, tmp_path: Path, keep_workspaces: bool, extra_env: dict[str, str] | None = None,
           python: str = sys.executable) -> Hub:
    """A hub of its own, started on this podbay.yaml (written under tmp_path)."""
    config = tmp_path / "podbay.yaml"
    config.write_text(yaml.safe_dump(cfg))
    (tmp_path / "data").mkdir()
    hub = Hub(config=config, data_dir=tmp_path / "data", port=free_port_block(), keep_workspaces=keep_workspaces,
              extra_env=extra_env or {}, python=python)
    hub.start()
    return hub


def claimed(hub: Hub, key: str) -> list[str]:
    """The devices the hub's ledger holds for a workspace or job key."""
    ledger = hub.book()
    try:
        alloc = ledger.get(key)
        return list(alloc.devices) if alloc else []
    finally:
        ledger.dispose()


def wait_job(api: httpx.Client, job_id: int, states: set[str], timeout: float = 60) -> dict:
    """Poll podbay's service (api: a client at its api/v1) until the job is in one of states."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = api.get(f"/jobs/{job_id}").json()
        if job["state"] in states:
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} never reached {states}: {job}")


def read_banner(proc: subprocess.Popen, timeout: float = 60) -> str:
    """What `podbay up` prints until its banner's last line (or it exits)."""
    banner, deadline = "", time.monotonic() + timeout
    while "Ctrl-C stops everything" not in banner and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        banner += line
    return banner


def have_proxy() -> bool:
    return (Path(sys.executable).parent / "configurable-http-proxy").exists() or bool(
        shutil.which("configurable-http-proxy"))


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)


CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


@contextlib.contextmanager
def real_browser():
    """A real headless Chromium (Debian's), driven by Playwright. Its sync API runs an
    event loop in this thread while open, so asyncio tests cannot run until it is closed:
    a module with such tests opens it in the one test that needs it."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    require(chromium is not None, "Chromium is not installed")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_FLAGS)
        try:
            yield b
        finally:
            b.close()


def browser_login(page, hub: Hub, user: str) -> None:
    page.goto(f"{hub.url}/hub/login")
    page.fill("#username_input", user)
    page.fill("#password_input", PASSWORD)
    page.click("#login_submit")
    page.wait_for_url("**/hub/**")


# --- the docker engine and the workspace image, shared by the docker tests and the
# backend contract suite ---------------------------------------------------------------

DOCKER_CONFIG = ROOT / "tests" / "data" / "podbay-docker.yaml"
IMAGE = "podbay/base:2026.11"
# Name prefixes of the test deployments' containers, volumes and networks: the docker
# tests' hub, their host-network hub, the contract suite's. Swept before and after.
DOCKER_TEST_PREFIXES = ("podbaytest", "podbayhosttest", "podbaycontract", "podbayhybrid")


def _sweep(client) -> None:
    """Containers, home volumes and networks of earlier runs of these tests (never anything else)."""
    for prefix in DOCKER_TEST_PREFIXES:
        for c in client.api.containers(all=True, filters={"label": f"podbay.prefix={prefix}"}):
            client.api.remove_container(c["Id"], force=True)
        for v in client.volumes.list(filters={"name": f"{prefix}-home-"}):
            v.remove(force=True)
        for n in client.api.networks(filters={"label": f"podbay.prefix={prefix}"}):
            client.api.remove_network(n["Id"])


@contextlib.contextmanager
def stand_in_cluster_running(state: Path, nodes: Path, apply: list[Path] = (), namespace: str = "default",
                             controllers: bool = True, rbac: bool = False):
    """The stand-in cluster (tests/standins/k8s_cluster.py) in a process of its own, its storage and
    logs under `state`; yields its URL and a kubeconfig for it. Ending it ends its containers.
    With `rbac`, the kubeconfig is the hub's ServiceAccount (`hub` in `namespace`), allowed
    only what the applied Roles and bindings grant; tests look with ADMIN_TOKEN."""
    import json

    from tests.standins.site_install import site_python

    cmd = [sys.executable, "-m", "tests.standins.k8s_cluster", "--state", str(state), "--nodes", str(nodes),
           "--image-bin", str(site_python().parent)]
    for path in apply:
        cmd += ["--apply", str(path)]
    if not controllers:
        cmd.append("--no-controllers")
    user: dict = {}
    if rbac:
        (state / "tokens.yaml").write_text(json.dumps({"hub-token": f"system:serviceaccount:{namespace}:hub"}))
        cmd += ["--tokens", str(state / "tokens.yaml")]
        user = {"token": "hub-token"}
    with (state / "cluster.log").open("wb") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=log)
    try:
        url = proc.stdout.readline().decode().removeprefix("ready ").strip()
        assert url.startswith("http://"), (state / "cluster.log").read_text()
        kubeconfig = state / "kubeconfig"
        kubeconfig.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "stand-in",
            "clusters": [{"name": "stand-in", "cluster": {"server": url}}],
            "contexts": [{"name": "stand-in", "context": {"cluster": "stand-in", "user": "hub", "namespace": namespace}}],
            "users": [{"name": "hub", "user": user}]}))
        yield url, kubeconfig
    finally:
        end(proc)
        proc.stdout.close()
