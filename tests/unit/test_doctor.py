"""podbay doctor's own checks (hub/doctor.py): the hub's API as the service reaches it, and
how findings are told; the engines' checks are tested against their real parts or the
stand-in cluster (tests/integration/test_doctor.py, test_docker.py, test_slurm.py)."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
from pathlib import Path

from podbay.hub.doctor import Finding, hub_api, render
from tests.standins.json_server import serve_json


def test_the_hubs_api_answers_or_its_fix_is_said():
    seen = []

    def answer(path, headers):
        seen.append((path, headers.get("Authorization")))
        if path == "/hub/api/user":
            return (200, {"name": "service-podbay"}) if headers.get("Authorization") == "token right" else (403, {})
        return (200, {"version": "5.3.0"}) if path == "/hub/api/" else (404, {})

    with serve_json(answer) as base:
        ok, known = asyncio.run(hub_api(f"{base}/hub/api", "right"))
        _, refused = asyncio.run(hub_api(f"{base}/hub/api", "stale"))
        (wrong,) = asyncio.run(hub_api(f"{base}/elsewhere"))
    assert ok == Finding.ok(f"the hub's API answers at {base}/hub/api (JupyterHub 5.3.0)")
    assert seen[:2] == [("/hub/api/", "token right"), ("/hub/api/user", "token right")]
    assert known == Finding.ok("the hub accepts this token (as service-podbay)")
    assert refused.level == "fail" and refused.what.startswith("the hub refuses this token (403)")
    assert wrong.level == "fail" and "not JupyterHub's API" in wrong.what
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (down,) = asyncio.run(hub_api(f"http://127.0.0.1:{port}/hub/api"))
    assert down.level == "fail" and "does not answer" in down.what and "127.0.0.1:8081/hub/api" in down.fix
    (unchecked,) = asyncio.run(hub_api(None))
    assert unchecked.level == "warn" and "--hub-url" in unchecked.fix


def test_findings_are_told_with_their_fixes_and_as_json():
    findings = [Finding.ok("fine"), Finding.fail("broken", "mend it"), Finding.warn("odd")]
    assert render(findings).splitlines() == ["ok    fine", "fail  broken", "      fix: mend it", "warn  odd",
                                             "1 to fix, 1 to look at"]
    assert json.loads(render(findings, as_json=True))[1] == {"level": "fail", "what": "broken", "fix": "mend it"}


def test_the_command_exits_1_when_something_must_be_fixed(tmp_path):
    from tests.harness import TEST_CONFIG

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = subprocess.run([sys.executable, "-m", "podbay.hub.cli", "doctor", "--config", str(TEST_CONFIG),
                          "--backend", "local", "--hub-url", f"http://127.0.0.1:{port}/hub/api", "--json"],
                         capture_output=True, text=True)
    assert run.returncode == 1, run.stderr
    levels = {f["what"].split(" (")[0]: f["level"] for f in json.loads(run.stdout)}
    assert levels["podbay.yaml is valid"] == "ok"
    assert any(w.startswith("the hub's API at") and lvl == "fail" for w, lvl in levels.items()), levels


def test_credentials_in_urls_are_not_printed():
    from podbay.hub.doctor import redacted

    assert redacted("Prometheus at https://ops:s3cret@prom.example:9090 is not reachable") == \
        "Prometheus at https://***@prom.example:9090 is not reachable"
    assert redacted("http://prom:9090/api") == "http://prom:9090/api"
    assert redacted("https://ops:p@ss@prom.example/x?token=abc&q=1") == "https://***@prom.example/x?token=***&q=1"


def test_the_declared_gpus_are_checked_against_this_hosts_driver(tmp_path):
    """Where podbay places devices from nodes:, each must be one the driver sees (here the
    driver's answer is a recorded `nvidia-smi -L` of an H100 cut into MIG slices)."""
    import yaml

    from podbay.hub.config import load_config
    from podbay.hub.discovery import DiscoveryError, parse_smi_output
    from podbay.hub.doctor import gpus_on_this_host
    from tests.harness import ROOT

    recorded = (ROOT / "tests" / "fixtures" / "gpu" / "nvidia-smi-L" /
                "cloud-native-docs_h100_7x1g.10gb_nvidia-smi-L.txt").read_text()
    found = parse_smi_output(recorded)
    (gpu,) = found
    mig = [m.uuid for m in gpu.mig_devices]
    data = {"images": [{"name": "base", "display_name": "Base", "image": "podbay/base:1"}],
            "profiles": [{"id": "cpu"}, {"id": "mig-1g.10gb"}], "pools": {"dev": {}},
            "nodes": [{"name": "h100", "pool": "dev", "gpus": [
                {"index": 0, "uuid": gpu.uuid, "model": "NVIDIA H100 80GB HBM3",
                 "mig": [{"profile": "1g.10gb", "uuid": u} for u in mig[:6]]}]}]}
    (tmp_path / "podbay.yaml").write_text(yaml.safe_dump(data))
    cfg = load_config(tmp_path / "podbay.yaml")
    findings = gpus_on_this_host(cfg, lambda: found)
    assert [(f.level, f.what.split(":")[0]) for f in findings] == [
        ("warn", "this host has devices podbay.yaml does not declare (never handed out)"),
        ("ok", "the 7 declared GPUs and MIG devices are on this host")], findings
    assert mig[6] in findings[0].what
    data["nodes"][0]["gpus"][0]["mig"][0]["uuid"] = "MIG-00000000-0000-4000-8000-000000000000"
    (tmp_path / "podbay.yaml").write_text(yaml.safe_dump(data))
    (failed, _) = gpus_on_this_host(load_config(tmp_path / "podbay.yaml"), lambda: found)
    assert failed.level == "fail" and "MIG-00000000-0000-4000-8000-000000000000" in failed.what
    assert "podbay gpus --as-inventory" in failed.fix

    def no_driver():
        raise DiscoveryError("NVML is not available on this machine (NVML_ERROR_LIBRARY_NOT_FOUND): no NVIDIA driver?")

    (unseen,) = gpus_on_this_host(cfg, no_driver)
    assert unseen.level == "warn" and "not checked" in unseen.what


def test_podbay_must_be_open_to_the_accounts_that_run_it(tmp_path, monkeypatch):
    """Where people's workspaces and jobs run podbay's own Python as their accounts, an install
    private to its owner (a 0700 home or checkout, pytest's tmp here) is said, with its fix."""
    import os
    import shutil
    import tempfile

    from podbay.hub import backends
    from podbay.hub.config import load_config
    from podbay.hub.doctor import closed_to_others, installed_for_people
    from tests.harness import TEST_CONFIG

    private = tmp_path / "venv" / "bin"
    private.mkdir(parents=True)
    (private / "python").write_text("")
    (private / "python").chmod(0o755)
    closed = closed_to_others(private / "python")
    assert closed is not None and closed in (private / "python").parents
    shared = Path(tempfile.mkdtemp(prefix="podbay-open-"))
    try:
        shared.chmod(0o755)
        (shared / "python").write_text("")
        (shared / "python").chmod(0o755)
        assert closed_to_others(shared / "python") is None
        (shared / "python").chmod(0o700)  # a program only its owner may run
        assert closed_to_others(shared / "python") == shared / "python"
    finally:
        shutil.rmtree(shared)

    cfg = load_config(TEST_CONFIG)
    assert installed_for_people(cfg, "local") == []  # workspaces run as the hub: nothing to say
    monkeypatch.setattr(backends, "runs_as_people", lambda cfg, backend: True)
    monkeypatch.setattr(sys, "executable", str(private / "python"))
    (finding,) = installed_for_people(cfg, "local")
    assert finding.level == "fail" and str(closed) in finding.what and "/opt/podbay" in finding.fix
    assert os.path.exists(sys.executable)
