"""`podbay up` as a person runs it: it says where and how to log in, and Ctrl-C leaves
no process behind (hub, proxy, workspaces)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.harness import free_port_block, have_proxy, http_client, Hub, PASSWORD, read_banner, require, TEST_CONFIG

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
    banner = read_banner(proc)
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
    ledger = hub.book()
    assert ledger.allocations() == []
    ledger.dispose()


@pytest.mark.timing
def test_a_killed_hubs_service_stops_too(tmp_path):
    """A hub killed outright (SIGKILL, the OOM killer) does not stop its managed services:
    podbay's would go on running jobs from the quota book beside the next hub's. It stops,
    even with a job's log being followed through the proxy that outlived the hub."""
    import threading

    from tests.harness import wait_job

    require(have_proxy(), "configurable-http-proxy is not installed")
    hub = Hub(TEST_CONFIG, tmp_path, free_port_block(), keep_workspaces=False)
    hub.start()
    flag = tmp_path / "job-may-end"
    try:
        children = subprocess.run(["pgrep", "-a", "-P", str(hub.proc.pid)], capture_output=True, text=True).stdout
        jupyterhub = next(int(line.split()[0]) for line in children.splitlines() if "jupyterhub" in line)
        children = subprocess.run(["pgrep", "-a", "-P", str(jupyterhub)], capture_output=True, text=True).stdout
        service = next(int(line.split()[0]) for line in children.splitlines() if "podbay.hub.service" in line)
        proxy = int((tmp_path / "proxy.pid").read_text())
        api = http_client(base_url=f"{hub.url}/services/podbay/api/v1", timeout=60,
                           headers={"Authorization": f"token {hub.token('alice')}"})
        job = api.post("/jobs", json={"name": "follow", "gpus": 0, "command": [
            "sh", "-c", f"echo started; while [ ! -e {flag} ]; do sleep 0.2; done"]}).json()
        wait_job(api, job["id"], {"running"})
        following = threading.Event()

        def follow():
            with contextlib.suppress(httpx.HTTPError):
                with api.stream("GET", f"/jobs/{job['id']}/logs", params={"follow": "true"}) as stream:
                    for _ in stream.iter_bytes():
                        following.set()

        threading.Thread(target=follow, daemon=True).start()
        assert following.wait(30), "the log was not followed"
        os.kill(jupyterhub, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while not gone(service):
            assert time.monotonic() < deadline, "the service outlived its hub"
            time.sleep(0.1)
        assert "the hub that started this service" in (tmp_path / "podbay-up.log").read_text()
    finally:
        flag.touch()
        hub.stop()
        # What a killed hub leaves behind: its proxy, and (were this failing) its service.
        for pid in (locals().get("proxy"), locals().get("service")):
            if pid and not gone(pid):
                os.kill(pid, signal.SIGTERM)


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
    monkeypatch.setenv("JUPYTERHUB_CRYPT_KEY", "test-key")  # configure() would leave its own in the environment
    with pytest.raises(SystemExit, match="refusing to listen on 0.0.0.0"):
        configure(Config())
    monkeypatch.setenv("PODBAY_ALLOW_UNISOLATED", "1")
    c = Config()
    configure(c)
    assert c.JupyterHub.bind_url.startswith("http://0.0.0.0:")
    assert c.JupyterHub.hub_bind_url.startswith("http://127.0.0.1:"), "only the public port moves"


@pytest.mark.parametrize("offset", [0, 1, 3])
def test_a_port_in_use_is_one_sentence_and_exit_1(tmp_path, offset):
    port = free_port_block()
    with socket.socket() as other:
        other.bind(("127.0.0.1", port + offset))
        other.listen()
        run = subprocess.run(
            [sys.executable, "-m", "podbay.hub.cli", "up", "--config", str(TEST_CONFIG),
             "--port", str(port), "--data-dir", str(tmp_path)],
            capture_output=True, text=True, timeout=60)
    assert run.returncode == 1, run.stdout + run.stderr
    assert run.stderr.strip() == (f"podbay: port {port + offset} on 127.0.0.1 is in use by another program. "
                                  f"podbay needs the ports {port} to {port + 3}: choose others with --port "
                                  "(or stop that program).")
    assert "running at" not in run.stdout


def test_a_ledger_database_that_cannot_be_reached_is_one_sentence(tmp_path):
    dead = free_port_block(1)
    run = subprocess.run(
        [sys.executable, "-m", "podbay.hub.cli", "up", "--config", str(TEST_CONFIG),
         "--port", str(free_port_block()), "--data-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=90,
        env={**os.environ, "PODBAY_DB_URL": f"postgresql://podbay@127.0.0.1:{dead}/podbay"})
    out = run.stdout + run.stderr
    assert run.returncode != 0, out
    assert (f"podbay: refusing to start: the quota book's database postgresql+psycopg://podbay@127.0.0.1:{dead}/podbay "
            "cannot be reached") in out, out
    assert "Traceback" not in out and "running at" not in out


def test_the_hub_and_its_ledger_on_postgresql(postgres_url, tmp_path):
    """Production's databases, written as the README writes them (postgresql://, which
    podbay reads as psycopg 3, the driver its `postgresql` extra installs)."""
    require(have_proxy(), "configurable-http-proxy is not installed")
    from sqlalchemy import create_engine, text

    plain = postgres_url.replace("postgresql+psycopg://", "postgresql://")
    hub = Hub(TEST_CONFIG, tmp_path, free_port_block(), keep_workspaces=False,
              extra_env={"PODBAY_DB_URL": plain, "PODBAY_HUB_DB_URL": plain})
    hub.start()
    try:
        assert hub.start_server("alice", "pg", {"profile": "mig-1g.10gb"}).status_code in (201, 202)
        engine = create_engine(postgres_url)
        with engine.connect() as db:
            servers = db.execute(text("SELECT s.name FROM spawners s JOIN users u ON s.user_id = u.id "
                                      "WHERE u.name = 'alice' AND s.server_id IS NOT NULL")).scalars().all()
            claims = db.execute(text("SELECT key FROM podbay_allocations")).scalars().all()
        assert "pg" in servers and "workspace:alice/pg" in claims
        hub.stop_server("alice", "pg")
        with engine.connect() as db:
            assert db.execute(text("SELECT count(*) FROM podbay_allocations")).scalar() == 0
        engine.dispose()
        assert not (tmp_path / "jupyterhub.sqlite").exists() and not (tmp_path / "ledger.sqlite").exists()
    finally:
        hub.stop()


# Every device label on the capacity page whose text reaches past its box (cut off).
CUT_LABELS = """() => [...document.querySelectorAll('.dev .label')].filter(label => {
  const dev = label.closest('.dev'), text = document.createRange();
  text.selectNodeContents(label);
  const t = text.getBoundingClientRect(), box = dev.getBoundingClientRect(), style = getComputedStyle(dev);
  return t.right > box.right - parseFloat(style.paddingRight) + 0.5 || t.bottom > box.bottom + 0.5;
}).map(label => label.textContent)"""


@pytest.mark.browser
def test_podbay_up_anywhere_starts_the_demo_that_ships_with_it(tmp_path, browser):
    """Run outside a checkout, with no --config: the demo inside the package, not a search
    for config/podbay.yaml in whatever directory the person is in. Then a new user's first
    minutes in it, in a real browser."""
    require(have_proxy(), "configurable-http-proxy is not installed")
    port = free_port_block()
    env = {k: v for k, v in os.environ.items() if k != "PODBAY_CONFIG"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "podbay.hub.cli", "up", "--port", str(port), "--data-dir", str(tmp_path / "data")],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**env, "PODBAY_DEMO_PASSWORD": PASSWORD})
    try:
        banner = read_banner(proc)
        assert f"podbay is running at http://127.0.0.1:{port}" in banner, banner
        import podbay.hub

        # The package's own demo folder (beside the hub's modules, wherever it is installed).
        shipped = Path(podbay.hub.__file__).parent / "demo" / "podbay.yaml"
        assert f"config: {shipped}" in banner, banner
        r = httpx.get(f"http://127.0.0.1:{port}/hub/api", timeout=5)
        assert r.status_code == 200
        first_minutes(browser, f"http://127.0.0.1:{port}")
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)


def first_minutes(browser, url: str) -> None:
    from types import SimpleNamespace

    from tests.harness import browser_login

    page = browser.new_page()
    page.set_default_timeout(60_000)
    browser_login(page, SimpleNamespace(url=url), "alice")
    # The portal's address, typed or trimmed, leads to its pages (not to the API's 404).
    for path in ("/services/podbay", "/services/podbay/", "/services/podbay/pages/"):
        page.goto(url + path)
        page.wait_for_url("**/services/podbay/pages/capacity")
    # The demo's A100 in seven 1g.10gb slices: each slice's name reads whole.
    labels = page.evaluate("() => [...document.querySelectorAll('.gpu')].map("
                           "gpu => [...gpu.querySelectorAll('.dev .label')].map(label => label.innerText))")
    assert ["1g.10gb"] * 7 in labels, labels
    assert page.evaluate(CUT_LABELS) == []
    # Her first workspace, from the form as it comes: JupyterLab starts quiet. It asks the
    # server for updates (answered there, nothing fetched from outside) only once it has
    # decided not to ask her about news, so that request is the moment to look.
    with page.expect_response("**/lab/api/update*", timeout=180_000) as update:
        page.goto(f"{url}/hub/spawn/alice/first")
        page.locator("#podbay-options").wait_for()
        page.click("form input[type=submit], form button[type=submit]")
        page.wait_for_url("**/user/alice/first/lab**", timeout=180_000)
    assert update.value.ok and update.value.json() == {"notification": None}
    page.locator(".jp-Notification-Status-Text").wait_for()
    assert page.locator(".Toastify__toast").count() == 0
    assert page.inner_text(".jp-Notification-Status-Text") == "0"
    page.close()


def test_podbay_up_serves_the_public_port_over_tls(tmp_path):
    require(have_proxy(), "configurable-http-proxy is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    port = free_port_block()
    proc = subprocess.Popen(
        [sys.executable, "-m", "podbay.hub.cli", "up", "--config", str(TEST_CONFIG), "--port", str(port),
         "--data-dir", str(tmp_path / "data"), "--ssl-cert", str(cert), "--ssl-key", str(key)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "PODBAY_DEMO_PASSWORD": PASSWORD})
    try:
        banner = read_banner(proc)
        assert f"podbay is running at https://127.0.0.1:{port}" in banner, banner
        # The certificate is checked, the hub and podbay's service answer behind it.
        trust = ssl.create_default_context(cafile=str(cert))
        assert httpx.get(f"https://127.0.0.1:{port}/hub/api", verify=trust, timeout=10).status_code == 200
        r = httpx.get(f"https://127.0.0.1:{port}/services/podbay/api/v1/openapi.json", verify=trust, timeout=10)
        assert r.status_code == 200 and r.json()["info"]["title"]
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/hub/api", timeout=5)  # no plain HTTP on the public port
        # The client checks the certificate too (its TLS is set up at its first https request):
        # refused where it is not trusted, and trusted through SSL_CERT_FILE as httpx reads it.
        ls = [str(Path(sys.executable).parent / "podbay"), "ws", "ls", "--url", f"https://127.0.0.1:{port}",
              "--token", "not-a-token"]
        env = {k: v for k, v in os.environ.items() if k not in ("SSL_CERT_FILE", "SSL_CERT_DIR")}
        untrusted = subprocess.run(ls, capture_output=True, text=True, env=env, timeout=60)
        assert untrusted.returncode == 1 and "cannot reach" in untrusted.stderr, untrusted.stderr
        trusted = subprocess.run(ls, capture_output=True, text=True, env={**env, "SSL_CERT_FILE": str(cert)}, timeout=60)
        assert trusted.returncode == 1 and "token was not accepted" in trusted.stderr, trusted.stderr
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)


def test_an_operators_settings_in_their_own_hub_config(monkeypatch, tmp_path):
    """c.Podbay.* before configure(c), the README's production form; env only as fallback."""
    from traitlets.config import Config

    from podbay.hub.hubconfig import configure

    monkeypatch.setenv("PODBAY_IP", "127.0.0.2")  # overridden by the config below
    monkeypatch.setenv("JUPYTERHUB_CRYPT_KEY", "test-key")  # configure() would leave its own in the environment
    monkeypatch.setenv("PODBAY_CONFIG", str(TEST_CONFIG))
    c = Config()
    c.Podbay.data_dir = str(tmp_path)
    c.Podbay.ip = "127.0.0.1"
    c.Podbay.port = 9443
    c.Podbay.keep_workspaces = True
    c.Podbay.start_timeout = 300
    (tmp_path / "c.pem").write_text("x")
    (tmp_path / "k.pem").write_text("x")
    c.Podbay.ssl_cert, c.Podbay.ssl_key = str(tmp_path / "c.pem"), str(tmp_path / "k.pem")
    configure(c)
    assert c.JupyterHub.bind_url == "https://127.0.0.1:9443"
    assert c.JupyterHub.ssl_cert == str(tmp_path / "c.pem")
    assert c.JupyterHub.hub_bind_url == "http://127.0.0.1:9444"
    assert c.JupyterHub.cleanup_servers is False and c.Spawner.start_timeout == 300
    assert c.JupyterHub.db_url == f"sqlite:///{tmp_path / 'jupyterhub.sqlite'}"
    c2 = Config()
    c2.Podbay.data_dir = str(tmp_path)
    c2.Podbay.ssl_cert = str(tmp_path / "c.pem")
    with pytest.raises(SystemExit):
        configure(c2)  # a certificate without its key
    # PostgreSQL as the README writes it, set here rather than in the environment (checked
    # before anything connects: the URL JupyterHub gets names psycopg 3).
    c3 = Config()
    c3.Podbay.data_dir = str(tmp_path)
    c3.Podbay.hub_db_url = "postgresql://podbay@db.example.org/podbay"
    configure(c3)
    assert c3.JupyterHub.db_url == "postgresql+psycopg://podbay@db.example.org/podbay"
    # A production hub with no podbay.yaml named does not start on the shipped demo.
    monkeypatch.delenv("PODBAY_CONFIG")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match="no podbay.yaml named: set c.Podbay.config_file"):
        configure(Config())
