"""The `podbay` client commands against a real hub and service."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import jsonschema
import pytest

from tests.harness import environ_of

pytestmark = pytest.mark.hub


@pytest.fixture(scope="module")
def cli(hub, tmp_path_factory):
    xdg = tmp_path_factory.mktemp("xdg")

    def run(*args, env: dict | None = None, input: str | None = None) -> subprocess.CompletedProcess:
        base = {k: v for k, v in os.environ.items()
                if not k.startswith(("PODBAY_URL", "PODBAY_TOKEN", "JUPYTERHUB_"))}
        return subprocess.run([sys.executable, "-m", "podbay.hub.cli", *args], capture_output=True, text=True,
                              env={**base, "XDG_CONFIG_HOME": str(xdg), **(env or {})}, input=input, timeout=120)
    run.xdg = xdg
    return run


@pytest.fixture(scope="module")
def schemas(hub):
    spec = httpx.get(f"{hub.url}/services/podbay/api/v1/openapi.json").json()

    def validate(instance, name: str, array: bool = False):
        ref = {"$ref": f"#/components/schemas/{name}"}
        schema = {**({"type": "array", "items": ref} if array else ref), "components": spec["components"]}
        jsonschema.validate(instance, schema)
    return validate


def test_not_logged_in_says_how(cli):
    r = cli("ws", "ls")
    assert r.returncode == 1 and "podbay login" in r.stderr


def test_login_checks_the_token_and_stores_it_privately(hub, cli):
    bad = cli("login", hub.url, "--token", "nope-not-a-token")
    assert bad.returncode == 1 and "login failed" in bad.stderr
    # A token of its own: test_logout revokes it at the hub.
    r = cli("login", hub.url, "--paste", input=hub.new_token("alice") + "\n")
    assert r.returncode == 0, r.stderr
    assert f"Logged in to {hub.url} as alice" in r.stdout and f"{hub.url}/hub/token" in r.stdout
    path = cli.xdg / "podbay" / "credentials.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text())["url"] == hub.url


def test_workspace_commands(hub, cli):
    r = cli("ws", "new", "notes", "--profile", "mig-1g.10gb", "--volume", "scratch")
    assert r.returncode == 0, r.stderr
    assert f"notes is ready: {hub.url}/user/alice/notes/lab" in r.stdout
    ls = json.loads(cli("ws", "ls", "--json").stdout)
    assert [(w["name"], w["state"], w["profile"], w["volumes"]) for w in ls] == [
        ("notes", "ready", "mig-1g.10gb", ["scratch"])]
    assert cli("ws", "open", "notes").stdout.strip() == f"{hub.url}/user/alice/notes/lab"
    refused = cli("ws", "new", "big", "--profile", "gpu-9")
    assert refused.returncode == 1 and "unknown GPU profile 'gpu-9'" in refused.stderr
    assert cli("ws", "stop", "notes").returncode == 0
    assert json.loads(cli("ws", "ls", "--json").stdout)[0]["state"] == "stopped"
    assert cli("ws", "rm", "notes").returncode == 0
    assert json.loads(cli("ws", "ls", "--json").stdout) == []


def test_job_commands_and_json_match_the_service_schema(hub, cli, schemas):
    assert cli("ws", "new", "dev", "--profile", "cpu", "-q").returncode == 0
    r = cli("job", "submit", "--from-workspace", "dev", "--gpus", "1", "--json", "--",
            "python", "-c", "print('epoch 1'); print('epoch 2')")
    assert r.returncode == 0, r.stderr
    job = json.loads(r.stdout)
    schemas(job, "Job")
    assert job["name"] == "python" and job["image"] == "pytorch"
    logs = cli("job", "logs", "-f", str(job["id"]))
    assert logs.returncode == 0 and logs.stdout.endswith("epoch 1\nepoch 2\n")
    jobs = json.loads(cli("job", "ls", "--json").stdout)
    schemas(jobs, "Job", array=True)
    assert jobs[0]["state"] == "succeeded"
    schemas(json.loads(cli("job", "show", str(job["id"]), "--json").stdout), "Job")
    schemas(json.loads(cli("capacity", "--json").stdout), "CapacityOut")
    assert "POOL" in cli("capacity").stdout


def test_quota_and_who_holds_which_gpu(hub, cli, schemas):
    assert cli("ws", "new", "holds", "--profile", "mig-1g.10gb", "-q").returncode == 0
    try:
        # The capacity page's picture, in a terminal: her slice, with her name and its workspace.
        drawn = cli("capacity", "--gpus")
        assert drawn.returncode == 0, drawn.stderr
        lines = [line.split() for line in drawn.stdout.splitlines()]
        assert ["1g.10gb", "alice", "holds", "(mig-1g.10gb)"] in lines, drawn.stdout
        assert ["pool", "training"] in lines and ["train-01"] in lines
        gpus = json.loads(cli("capacity", "--gpus", "--json").stdout)
        schemas(gpus, "GpusOut")
        mine = [d for p in gpus["pools"] for n in p["nodes"] for g in n["gpus"] for d in g["devices"]
                if d["holder"] and d["holder"]["what"] == "holds"]
        assert [(d["label"], d["holder"]["user"]) for d in mine] == [("1g.10gb", "alice")]
        # Her standing: team, units, workspaces, job GPUs (podbay's quota: no engine limit here).
        quota = cli("quota")
        assert quota.returncode == 0, quota.stderr
        said = quota.stdout.splitlines()
        assert said[0].startswith("user alice, team vision") and said[3].startswith("job GPUs"), said
        assert "in use" in said[3] and "set by" not in said[3], said
        schemas(json.loads(cli("quota", "--json").stdout), "MeOut")
    finally:
        cli("ws", "rm", "holds")


def test_exit_codes(hub, cli):
    assert cli("job", "submit", "--gpus", "1").returncode == 2          # no command: usage
    assert cli("job", "logs", "not-a-number").returncode == 2           # usage
    assert cli("job", "cancel", "999999").returncode == 1               # refused: no such job
    r = cli("job", "submit", "--gpus", "99", "--", "true")
    assert r.returncode == 1 and "job GPUs" in r.stderr


def test_inside_a_workspace_no_login_is_needed(hub, cli):
    # Exactly what a terminal in bob's workspace has: the hub's own port (not the proxy's,
    # which does not serve the hub's services there), the workspace's token, and where
    # podbay's service is.
    assert hub.start_server("bob", "term", {"profile": "cpu"}).status_code in (201, 202)
    ws_env = environ_of(hub.workspace_pid("bob", "term"))
    env = {k: ws_env[k] for k in ("JUPYTERHUB_API_URL", "JUPYTERHUB_API_TOKEN", "PODBAY_SERVICE_URL")}
    assert env["JUPYTERHUB_API_URL"] == f"http://127.0.0.1:{hub.port + 1}/hub/api"
    env["XDG_CONFIG_HOME"] = "/nonexistent"
    r = cli("job", "submit", "--name", "from-ws", "--from-workspace", "term", "--gpus", "1", "--",
            "echo", "hi", env=env)
    assert r.returncode == 0, r.stderr
    r = cli("job", "ls", "--json", env=env)
    assert r.returncode == 0, r.stderr
    jobs = json.loads(r.stdout)
    assert "from-ws" in {j["name"] for j in jobs} and all(j["user"] == "bob" for j in jobs)
    r = cli("ws", "ls", env=env)
    assert r.returncode == 0 and "term" in r.stdout, r.stdout + r.stderr
    # The idle GPU notices are read there too (none: this hub measures no GPU).
    r = cli("notices", env=env)
    assert r.returncode == 0 and "No notices" in r.stdout, r.stdout + r.stderr
    # The workspace's token reads; it does not start or stop workspaces.
    r = cli("ws", "new", "another", "--profile", "cpu", env=env)
    assert r.returncode == 1 and "start:servers" in r.stderr, r.stdout + r.stderr
    hub.stop_server("bob", "term")


def test_hub_down_is_a_clear_message(cli):
    r = cli("ws", "ls", "--url", "http://127.0.0.1:9", "--token", "x")
    assert r.returncode == 1 and "cannot reach http://127.0.0.1:9" in r.stderr


def test_logout_revokes_the_token_at_the_hub(hub, cli):
    token = json.loads((cli.xdg / "podbay" / "credentials.json").read_text())["token"]
    assert httpx.get(f"{hub.url}/hub/api/user", headers={"Authorization": f"token {token}"}).status_code == 200
    assert cli("logout").stdout.strip() == "Logged out."
    assert cli("ws", "ls").returncode == 1
    assert httpx.get(f"{hub.url}/hub/api/user", headers={"Authorization": f"token {token}"}).status_code == 403


def test_secrets_are_set_from_stdin_listed_by_name_and_removed(hub, cli):
    auth = ["--url", hub.url, "--token", hub.token("alice")]
    r = cli("secrets", "set", "HF_TOKEN", *auth, input="hf-secret-value\n")
    assert r.returncode == 0 and "HF_TOKEN is set" in r.stdout, r.stderr
    r = cli("secrets", "ls", *auth)
    assert "HF_TOKEN" in r.stdout and "hf-secret-value" not in r.stdout
    refused = cli("secrets", "set", "JUPYTERHUB_API_TOKEN", *auth, input="x\n")
    assert refused.returncode == 1 and "set by podbay" in refused.stderr
    assert cli("secrets", "rm", "HF_TOKEN", *auth).returncode == 0
    gone = cli("secrets", "rm", "HF_TOKEN", *auth)
    assert gone.returncode == 1 and "you have no secret HF_TOKEN" in gone.stderr


def test_ssh_keys_are_added_from_a_pub_file_listed_and_removed(hub, cli, tmp_path):
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "alice@laptop", "-f", str(tmp_path / "k")],
                   check=True)
    fingerprint = subprocess.run(["ssh-keygen", "-l", "-E", "sha256", "-f", str(tmp_path / "k.pub")],
                                 capture_output=True, text=True, check=True).stdout.split()[1]
    auth = ["--url", hub.url, "--token", hub.token("alice")]
    r = cli("keys", "add", str(tmp_path / "k.pub"), *auth)
    assert r.returncode == 0 and f"Added ssh-ed25519 key {fingerprint} alice@laptop" in r.stdout, r.stderr
    again = cli("keys", "add", str(tmp_path / "k.pub"), *auth)
    assert again.returncode == 1 and "registered this key already" in again.stderr
    private = cli("keys", "add", str(tmp_path / "k"), *auth)
    assert private.returncode == 1 and "this is a private key" in private.stderr
    listed = json.loads(cli("keys", "ls", "--json", *auth).stdout)
    assert [(k["fingerprint"], k["comment"]) for k in listed] == [(fingerprint, "alice@laptop")]
    # Fingerprints carry / and + (base64): removed by the one ls shows.
    assert cli("keys", "rm", fingerprint, *auth).returncode == 0
    assert json.loads(cli("keys", "ls", "--json", *auth).stdout) == []


def test_usage_and_keep(hub, cli, schemas):
    # bob holds a MIG slice for a moment: GPU-hours held, nothing measured (no source here).
    assert cli("ws", "new", "held", "--profile", "mig-1g.10gb", "-q",
               env={"PODBAY_URL": hub.url, "PODBAY_TOKEN": hub.token("bob")}).returncode == 0
    bob = {"PODBAY_URL": hub.url, "PODBAY_TOKEN": hub.token("bob")}
    time.sleep(1)
    out = json.loads(cli("usage", "--json", "--since", "1d", env=bob).stdout)
    schemas(out, "ShowbackOut")
    assert [r["key"] for r in out["rows"]] == ["bob"] and out["rows"][0]["gpu_hours_held"] > 0
    assert out["rows"][0]["utilization"] is None
    table = cli("usage", "--by", "profile", env=bob).stdout
    assert "mig-1g.10gb" in table and "total" in table and "GPU-H HELD" in table
    refused = cli("usage", "--user", "alice", env=bob)
    assert refused.returncode == 1 and "only admins" in refused.stderr
    bad = cli("usage", "--since", "last tuesday", env=bob)
    assert bad.returncode != 0 and "neither a date" in bad.stderr
    r = cli("ws", "keep", "held", "--hours", "2", env=bob)
    assert r.returncode == 0 and "held keeps its GPU until" in r.stdout, r.stderr
    r = cli("ws", "keep", "nothing", env=bob)
    assert r.returncode == 1 and "no running workspace named nothing" in r.stderr
    assert cli("ws", "rm", "held", env=bob).returncode == 0


@pytest.fixture(scope="module")
def client_only(tmp_path_factory):
    """podbay as a data scientist installs it on a laptop: `pip install podbay`, no extra, in a
    fresh venv (from a copy of the source, so that the checkout gets no build files)."""
    import shutil

    root = Path(__file__).resolve().parents[2]
    work = tmp_path_factory.mktemp("client")
    src = work / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(root / name, src / name)
    for name in ("hub", "tui"):
        shutil.copytree(root / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    venv_alone = _site_size(venv)
    done = subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check", str(src)],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    return venv, _site_size(venv) - venv_alone


def _site_size(venv) -> int:
    """Bytes in a venv's site-packages (pip's own included: subtract a bare venv's)."""
    site = subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    return sum(f.stat().st_size for f in Path(site).rglob("*") if f.is_file())


def test_the_client_installs_alone_and_logs_in(hub, client_only, tmp_path):
    """The client is small, brings no JupyterHub, runs its commands and logs in to a portal; the
    portal's commands say which install they need."""
    venv, size = client_only
    assert size < 40 * 2**20, f"the client installs {size / 2**20:.1f} MiB"
    for server_side in ("jupyterhub", "sqlalchemy", "pydantic", "pynvml", "fastapi"):
        found = subprocess.run([str(venv / "bin" / "python"), "-c", f"import {server_side}"], capture_output=True)
        assert found.returncode != 0, f"{server_side} came with the client"
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    podbay = str(venv / "bin" / "podbay")
    helped = subprocess.run([podbay, "--help"], capture_output=True, text=True, env=env, timeout=60)
    assert helped.returncode == 0 and "login" in helped.stdout and "tui" in helped.stdout, helped.stderr
    assert helped.stderr == ""
    assert subprocess.run([podbay, "tui", "--help"], capture_output=True, text=True, env=env, timeout=60).returncode == 0
    up = subprocess.run([podbay, "up"], capture_output=True, text=True, env=env, timeout=60)
    assert up.returncode == 1 and "pip install 'podbay[hub]'" in up.stderr, up.stderr
    login = subprocess.run([podbay, "login", hub.url, "--paste"], input=hub.new_token("alice") + "\n",
                           capture_output=True, text=True, env=env, timeout=60)
    assert login.returncode == 0 and "as alice" in login.stdout, login.stderr
    listed = subprocess.run([podbay, "ws", "ls", "--json"], capture_output=True, text=True, env=env, timeout=60)
    assert listed.returncode == 0 and isinstance(json.loads(listed.stdout), list), listed.stderr


def test_refusals_in_usage_and_layout_advice_for_admins(hub, cli, schemas):
    bob = {"PODBAY_URL": hub.url, "PODBAY_TOKEN": hub.token("bob")}
    admin = {"PODBAY_URL": hub.url, "PODBAY_TOKEN": hub.token("admin")}
    # nlp's quota is one GPU unit: two whole GPUs are refused, and the refusal is recorded.
    assert cli("ws", "new", "big", "--profile", "gpu-2", "-q", env=bob).returncode == 1
    usage = cli("usage", env=bob).stdout
    assert "Requests not granted:" in usage and "refused for quota: 1 workspace request for gpu-2 (pool dev)" in usage
    # Advice: admins only.
    refused = cli("advise", env=bob)
    assert refused.returncode == 1 and "layout advice is for admins" in refused.stderr
    out = cli("advise", "--json", "--days", "1", env=admin)
    assert out.returncode == 0, out.stderr
    advice = json.loads(out.stdout)
    schemas(advice, "AdviceOut")
    assert advice["engine"] == "local" and advice["requests"] >= 1
    assert {n["node"] for n in advice["nodes"]} == {"dev-01", "train-01"}
    table = cli("advise", "--days", "1", env=admin).stdout
    assert "Layout advice from" in table and "refused with today's layouts" in table
    # On one machine podbay changes no GPU's settings: applying says how instead, whatever the node.
    for node in ("dev-01", "dev-99"):
        applied = cli("advise", "--apply", node, "--days", "1", env=admin)
        assert applied.returncode == 1 and "podbay does not change GPU layouts on the local backend" in applied.stderr
    bad = cli("advise", "--pool", "nowhere", env=admin)
    assert bad.returncode == 1 and "no pool nowhere" in bad.stderr
