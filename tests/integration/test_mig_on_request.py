"""A real hub whose GPU's MIG instances are made per request (`mig_on_request`), on the
stand-in NVIDIA driver (tests/standins/nvml.py, loaded into the hub by
tests/standins/nvml_site): the workspace gets the MIG device made for it, and stopping it
removes the instance."""

from __future__ import annotations

import time

import pytest
import yaml

from tests.harness import TEST_CONFIG, Hub, environ_of, free_port_block
from tests.standins import nvml as fake

GPU = "GPU-0d000000-0000-4000-8000-000000000000"


@pytest.fixture
def mig_hub(tmp_path):
    # With an instance nobody records (a crash before the hub's last stop): removed at start.
    state = fake.write_state(tmp_path / "nvml.json", [
        fake.stray_instance(fake.gpu(GPU, name="NVIDIA A100-SXM4-80GB", memory_mib=81920), start=2)])
    cfg = yaml.safe_load(TEST_CONFIG.read_text())
    cfg["nodes"] = [{"name": "dev-01", "pool": "dev", "gpus": [
        {"index": 0, "uuid": GPU, "model": "NVIDIA A100-SXM4-80GB", "memory_mib": 81920, "mig_on_request": True}]}]
    cfg["profiles"] = [p for p in cfg["profiles"] if p["id"] in ("cpu", "mig-1g.10gb", "mig-3g.40gb")]
    config = tmp_path / "podbay.yaml"
    config.write_text(yaml.safe_dump(cfg))
    (tmp_path / "data").mkdir()
    hub = Hub(config=config, data_dir=tmp_path / "data", port=free_port_block(), keep_workspaces=False,
              extra_env=fake.process_env(state))
    hub.start()
    yield hub, state
    hub.stop()


def test_a_workspace_gets_the_instance_made_for_it_and_stopping_removes_it(mig_hub):
    hub, state = mig_hub
    assert fake.instances(state) == []
    r = hub.start_server("alice", "big", {"profile": "mig-3g.40gb", "image": "base"})
    assert r.status_code in (201, 202), r.text
    [inst] = fake.instances(state)
    # At slot 4 (profile id 9 is 3g.40gb): slot 0 stays free for the other 3g or a 4g.
    assert (inst["profile_id"], inst["start"]) == (9, 4)
    env = environ_of(hub.workspace_pid("alice", "big"))
    assert env["CUDA_VISIBLE_DEVICES"] == inst["uuids"][0]
    r = hub.start_server("alice", "small", {"profile": "mig-1g.10gb", "image": "base"})
    assert r.status_code in (201, 202), r.text
    assert sorted(i["profile_id"] for i in fake.instances(state)) == [9, 19]
    hub.stop_server("alice", "big")
    # The release removes it; waited on as the state the driver reports.
    deadline = time.monotonic() + 30
    while [i["start"] for i in fake.instances(state) if i["profile_id"] == 9] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [i["profile_id"] for i in fake.instances(state)] == [19]
    hub.stop_server("alice", "small")
