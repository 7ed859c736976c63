from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

from importlib.metadata import EntryPoint

import pytest
from pydantic import BaseModel, ConfigDict, Field, ValidationError
import yaml

from podbay.hub import backends
from podbay.hub.backends.base import Backend
from podbay.hub.cli import main
from podbay.hub.config import ConfigError, config_model, load_config, parse_config

from tests.harness import ROOT

DEMO = ROOT / "config" / "podbay.yaml"


@pytest.fixture
def demo() -> dict:
    return yaml.safe_load(DEMO.read_text())


def errors_of(data: dict, tmp_path: Path) -> list[str]:
    path = tmp_path / "podbay.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(ConfigError) as e:
        load_config(path)
    return [str(i) for i in e.value.issues]


def test_demo_config_is_valid_and_simulates_a_dgx():
    cfg = load_config(DEMO)
    dev, train = cfg.nodes
    assert [len(g.mig or []) for g in dev.gpus[:2]] == [7, 4]
    assert [g.mig[i].profile for g in dev.gpus[1:2] for i in range(4)] == ["3g.40gb", "2g.20gb", "1g.10gb", "1g.10gb"]
    assert [g.replicas for g in dev.gpus[2:4]] == [4, 4]
    assert all(g.mig is None and g.replicas is None for g in dev.gpus[4:])
    assert len(train.gpus) == 8 and train.pool == "training"
    assert cfg.teams_of("alice") == ["vision"] and cfg.teams_of("bob") == ["nlp"]
    assert cfg.admins == ["admin"]


def test_a_team_with_idp_groups_is_joined_through_them_only():
    """A JupyterHub group of a team's name makes its members members (podbay loads teams as
    groups; an admin adds people to one), unless the team names its identity provider's
    groups: where the provider's groups are the hub's, anyone who can make a group there
    could make one called "vision"."""
    cfg = load_config(DEMO)
    mapped = cfg.model_copy(update={"teams": {**cfg.teams, "vision": cfg.teams["vision"].model_copy(
        update={"members": [], "idp_groups": ["/ai/vision"]})}})
    assert cfg.teams_of("carol", ["vision"]) == ["vision"]
    assert mapped.teams_of("carol", ["vision"]) == []
    assert mapped.teams_of("carol", ["/ai/vision"]) == ["vision"]
    assert mapped.teams_of("bob", ["vision"]) == ["nlp"]


def edit(data, path, value):
    *head, last = path
    node = data
    for key in head:
        node = node[key]
    node[last] = value


@pytest.mark.parametrize(
    "path, value, expected",
    [
        pytest.param(("profiles", 1, "id"), "mig-1g.5gb",
                     "profiles[1]: MIG profile 1g.5gb does not exist on NVIDIA A100-SXM4-80GB", id="mig-model"),
        pytest.param(("profiles", 1, "id"), "mig-banana", "profiles[1].id: 'banana' is not a MIG profile name", id="mig-name"),
        pytest.param(("profiles", 1, "id"), "tpu-1", "profiles[1].id: profile id 'tpu-1' is not one of", id="id"),
        pytest.param(("profiles", 1, "pools"), ["gpu-farm"], "profiles[1].pools: pool 'gpu-farm' is not declared", id="pool"),
        pytest.param(("profiles", 5, "id"), "shared-1/3", "profiles[5]: no GPU in pool dev is time-sliced into 3", id="shared"),
        pytest.param(("profiles", 7, "id"), "gpu-5", "profiles[7]: no node in pool dev has 5 whole GPUs (the most is 4)", id="full"),
        pytest.param(("nodes", 0, "gpus", 0, "uuid"), "GPU-123", "nodes[0].gpus[0].uuid: 'GPU-123' is not a GPU UUID", id="uuid"),
        pytest.param(("nodes", 0, "gpus", 5, "uuid"), None, "nodes[0].gpus[5].uuid: required, but missing", id="missing"),
        pytest.param(("nodes", 0, "gpus", 4, "mig"), [{"profile": "1g.10gb", "uuid": "MIG-aaaaaaaa-0000-4000-8000-000000000000"}] * 2,
                     "nodes[0].gpus[4].mig[1].uuid: UUID MIG-aaaaaaaa-0000-4000-8000-000000000000 is already used at "
                     "nodes[0].gpus[4].mig[0].uuid", id="dup-uuid"),
        pytest.param(("nodes", 0, "gpus", 1, "mig", 0, "profile"), "4g.40gb",
                     "nodes[0].gpus[1].mig: MIG layout 1g.10gb + 1g.10gb + 2g.20gb + 4g.40gb does not fit", id="layout"),
        pytest.param(("nodes", 0, "pool"), "interactive", "nodes[0].pool: pool 'interactive' is not declared", id="node-pool"),
        pytest.param(("volumes", 0, "allow", "teams"), ["visio"], "volumes[0].allow.teams[0]: team 'visio' is not declared", id="team"),
        pytest.param(("volumes", 0, "mount_path"), "/etc", "volumes[0].mount_path: mount_path must be a path inside the home", id="mount"),
        pytest.param(("teams", "vision", "quota", "gpu_units"), -1, "teams.vision.quota.gpu_units:", id="quota"),
        pytest.param(("images", 0, "colour"), "red", "images[0].colour: unknown key (a typo?)", id="typo"),
    ],
)
def test_errors_name_their_place(demo, tmp_path, path, value, expected):
    if value is None:
        *head, last = path
        node = demo
        for key in head:
            node = node[key]
        del node[last]
    else:
        edit(demo, path, value)
    errors = errors_of(demo, tmp_path)
    assert any(e.startswith(expected) for e in errors), errors
    assert all("(line " in e for e in errors), errors


def test_all_errors_are_reported_at_once(demo, tmp_path):
    edit(demo, ("profiles", 1, "id"), "mig-1g.5gb")
    edit(demo, ("volumes", 0, "allow", "teams"), ["visio"])
    edit(demo, ("images", 1, "name"), "pytorch")
    errors = errors_of(demo, tmp_path)
    assert [e.split(":")[0] for e in errors] == ["images[1].name", "profiles[1]", "volumes[0].allow.teams[0]"]


def test_a100_40gb_example_from_the_issue(tmp_path):
    data = {
        "images": [{"name": "pt", "display_name": "PyTorch", "image": "pt"}],
        "profiles": [{"id": "cpu"}, {"id": "gpu-1"}, {"id": "mig-2g.10gb"}, {"id": "mig-1g.10gb"}],
        "nodes": [{"name": "a100", "pool": "dev", "gpus": [
            {"index": 0, "uuid": "GPU-4200ccc0-2667-d4cb-9137-f932c716232a", "model": "NVIDIA A100-SXM4-40GB",
             "mig": [{"profile": "2g.10gb", "uuid": "MIG-c6d4f1ef-42e4-5de3-91c7-45d71c87eb3f"}]},
            {"index": 1, "uuid": "GPU-0aa11ebd-627f-af3f-1a0d-4e1fd92fd7b0", "model": "NVIDIA A100-SXM4-40GB"}]}],
    }
    # 1g.10gb exists on an A100-40GB (two memory slices), but no GPU here is cut that way.
    assert errors_of(data, tmp_path) == ["profiles[3]: no GPU in pool dev has a 1g.10gb MIG device (line 9)"]


def test_wrong_mig_profile_for_the_model(tmp_path):
    data = {
        "images": [{"name": "pt", "display_name": "PyTorch", "image": "pt"}],
        "profiles": [{"id": "cpu"}, {"id": "mig-1g.10gb"}],
        "nodes": [{"name": "a100", "pool": "dev", "gpus": [
            {"index": 0, "uuid": "GPU-4200ccc0-2667-d4cb-9137-f932c716232a", "model": "NVIDIA A100-SXM4-40GB",
             "mig": [{"profile": "1g.5gb", "uuid": "MIG-c6d4f1ef-42e4-5de3-91c7-45d71c87eb3f"}]}]}],
    }
    assert errors_of(data, tmp_path)[0].startswith("profiles[1]: no GPU in pool dev has a 1g.10gb MIG device")
    data["nodes"][0]["gpus"][0]["mig"][0]["profile"] = "1g.20gb"
    assert "nodes[0].gpus[0].mig[0].profile: MIG profile 1g.20gb does not exist on NVIDIA A100-SXM4-40GB (line 16)" in \
        errors_of(data, tmp_path)


def test_broken_yaml_names_the_line(tmp_path):
    path = tmp_path / "podbay.yaml"
    path.write_text("images:\n  - name: x\n    display_name: [unclosed\nprofiles: []\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert "not valid YAML" in str(e.value) and "(line " in str(e.value)


def test_not_a_mapping():
    with pytest.raises(ConfigError, match="must be a mapping"):
        parse_config(["a list"])


def test_config_check_cli(demo, tmp_path, capsys):
    assert main(["config", "check", str(DEMO)]) == 0
    assert "valid — backend local (its section checked)" in capsys.readouterr().out
    edit(demo, ("profiles", 1, "id"), "mig-1g.5gb")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(demo, sort_keys=False))
    assert main(["config", "check", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "profiles[1]: MIG profile 1g.5gb does not exist on NVIDIA A100-SXM4-80GB" in err
    assert main(["config", "check", str(tmp_path / "missing.yaml")]) == 1
    assert "cannot read the file" in capsys.readouterr().err


def test_hub_refuses_to_start_on_an_invalid_config(demo, tmp_path):
    edit(demo, ("profiles", 1, "id"), "mig-1g.5gb")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(demo, sort_keys=False))
    hub_config = tmp_path / "jupyterhub_config.py"
    hub_config.write_text("from podbay.hub.hubconfig import configure\nconfigure(c)\n")
    env = {"PODBAY_CONFIG": str(bad), "PODBAY_DATA_DIR": str(tmp_path), "PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-m", "jupyterhub", "-f", str(hub_config)], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "profiles[1]: MIG profile 1g.5gb does not exist on NVIDIA A100-SXM4-80GB" in done.stderr
    # podbay up says the same before starting anything.
    done = subprocess.run([sys.executable, "-m", "podbay.hub.cli", "up", "--config", str(bad),
                           "--data-dir", str(tmp_path / "up")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "profiles[1]: MIG profile 1g.5gb" in done.stderr


def test_a_loaded_config_cannot_be_changed_behind_the_portals_back(demo):
    # One PodbayConfig is shared by every spawner of a hub (and the service's requests):
    # it must be frozen, and parsing must leave the operator's data alone.
    before = copy.deepcopy(demo)
    cfg = parse_config(demo)
    assert demo == before
    with pytest.raises(ValidationError):
        cfg.teams["vision"].quota.gpu_units = 100
    with pytest.raises(ValidationError):
        cfg.images[0].image = "evil:latest"
    assert parse_config(demo) == cfg


# --- each backend's own section ---------------------------------------------------------


class LabSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    partition_prefix: str = "lab"
    max_nodes: int = Field(default=4, ge=1)


class LabBackend(Backend):
    """A backend installed by another package: its section and its checks come with it."""

    name = "lab"
    spawner = "podbay-local"

    @classmethod
    def settings_model(cls):
        return LabSettings

    def check(self, cfg):
        return [(("lab", "max_nodes"), "the lab has 2 nodes")] if cfg.lab.max_nodes > 2 else []


@pytest.fixture
def lab_installed(monkeypatch):
    installed = {**backends.available(), "lab": EntryPoint("lab", f"{__name__}:LabBackend", backends.GROUP)}
    monkeypatch.setattr(backends, "available", lambda: installed)
    config_model.cache_clear()
    yield
    config_model.cache_clear()


def test_a_backends_section_is_validated_by_its_own_model(demo, tmp_path, lab_installed):
    demo["lab"] = {"partition_prefix": "gpu"}
    path = tmp_path / "podbay.yaml"
    path.write_text(yaml.safe_dump(demo, sort_keys=False))
    assert load_config(path).lab.partition_prefix == "gpu"
    demo["lab"] = {"max_nodes": 0, "partitions": 3}
    assert sorted(e.split(" (line")[0] for e in errors_of(demo, tmp_path)) == [
        "lab.max_nodes: Input should be greater than or equal to 1", "lab.partitions: unknown key (a typo?)"]
    # Its own checks run when it is the deployment's backend.
    demo.update(backend="lab", lab={"max_nodes": 3})
    assert [e.split(" (line")[0] for e in errors_of(demo, tmp_path)] == ["lab.max_nodes: the lab has 2 nodes"]


def test_a_section_of_a_backend_that_is_not_installed_says_which_are(demo, tmp_path):
    demo["lsf"] = {"queue": "gpu"}
    (issue,) = errors_of(demo, tmp_path)
    assert issue.startswith("lsf: unknown key (a typo?); a backend's settings go under its name, for an "
                            "installed backend only (here: docker, kubernetes, slurm): install its package or remove "
                            "the section"), issue


def test_the_runs_backend_is_checked_not_only_the_files(demo, tmp_path, lab_installed):
    """podbay up --backend (PODBAY_BACKEND) runs another backend than podbay.yaml names: its
    checks are the ones that count."""
    demo["lab"] = {"max_nodes": 3}
    path = tmp_path / "podbay.yaml"
    path.write_text(yaml.safe_dump(demo, sort_keys=False))
    assert load_config(path).backend == "local"
    with pytest.raises(ConfigError, match="lab.max_nodes: the lab has 2 nodes"):
        load_config(path, backend="lab")
    assert main(["config", "check", str(path), "--backend", "lab"]) == 1


def test_a_backend_that_cannot_be_loaded_is_one_sentence(demo, tmp_path, monkeypatch):
    installed = {**backends.available(), "broken": EntryPoint("broken", "podbay_no_such_module:Backend", backends.GROUP)}
    monkeypatch.setattr(backends, "available", lambda: installed)
    config_model.cache_clear()
    try:
        demo["backend"] = "broken"
        (issue,) = errors_of(demo, tmp_path)
    finally:
        config_model.cache_clear()
    assert issue.startswith("backend: the broken backend is installed but cannot be loaded (ModuleNotFoundError: "
                            "No module named 'podbay_no_such_module'): reinstall its package"), issue


def test_a_pool_queue_needs_a_backend_with_a_queue(demo, tmp_path):
    demo["pools"]["training"]["queue"] = "batch"
    (issue,) = errors_of(demo, tmp_path)
    assert issue.startswith("pools.training.queue: the local backend has no queue of its own "
                            "(podbay queues its jobs): remove queue"), issue


def test_a_volume_says_where_its_data_is_and_the_backend_can_mount_it(demo, tmp_path):
    demo["volumes"][0].pop("source")
    (issue,) = errors_of(demo, tmp_path)
    assert issue.startswith("volumes[0]: the local backend mounts a directory: give source"), issue
    # An engine's own way of providing it lives in the engine's section, which says so to a
    # file written for an older podbay.
    demo["volumes"][0]["pvc"] = "imagenet-ro"
    (issue,) = errors_of(demo, tmp_path)
    assert "pvc moved to its engine's section: write kubernetes: {claims: {" in issue, issue


def test_member_and_admin_names_must_be_names_anyone_can_log_in_with(demo, tmp_path):
    """podbay's default username_pattern keeps out what means something in a URL; a config
    naming such a member would give a team to a name nobody can have."""
    data = copy.deepcopy(demo)
    team = next(iter(data["teams"]))
    data["teams"][team]["members"] = ["admin#x", "alice?x", "ok.name@example.org"]
    data["admins"] = ["alice/../admin"]
    data["volumes"][0]["allow"] = {"users": ["Bob Smith"]}
    errors = errors_of(data, tmp_path)
    assert any("volumes[0].allow.users[0]" in e and "'Bob Smith'" in e for e in errors), errors
    assert any(f"teams.{team}.members[0]" in e and "'admin#x' is not a name anyone can log in with" in e
               for e in errors), errors
    assert any(f"teams.{team}.members[1]" in e for e in errors) and any("admins[0]" in e for e in errors), errors
    assert not any("ok.name@example.org" in e for e in errors)
    # A deployment whose provider names people otherwise widens it, and says so.
    data["auth"] = {"username_pattern": r"^.+$"}
    parse_config(data)
    data["auth"] = {"username_pattern": "("}
    assert any("auth.username_pattern is not a regular expression" in e for e in errors_of(data, tmp_path))


def test_hub_urls_take_a_name_as_one_segment():
    from podbay.tui.hubapi import user_path

    assert user_path("admin#x") == "users/admin%23x"
    assert user_path("alice?x", "servers", "a/b") == "users/alice%3Fx/servers/a%2Fb"
    assert user_path("alice/../admin", "tokens", 7) == "users/alice%2F..%2Fadmin/tokens/7"


def test_a_name_of_dots_stays_a_name_on_the_wire():
    """`podbay ws rm ..` by an admin must not become DELETE …/users/<admin> (the account)."""
    import asyncio

    import httpx

    from podbay.tui.hubapi import HubAPI

    sent = []

    def hub(request: httpx.Request) -> httpx.Response:
        sent.append((request.method, request.url.raw_path.decode()))
        return httpx.Response(404)

    async def go():
        api = HubAPI("http://hub/hub/api", token="t", transport=httpx.MockTransport(hub))
        await api.stop_server("admin", "..")
        await api.stop_server("admin", ".")
        await api.aclose()

    asyncio.run(go())
    assert sent == [("DELETE", "/hub/api/users/admin/servers/%2E%2E"), ("DELETE", "/hub/api/users/admin/servers/%2E")]


@pytest.mark.parametrize("example", ["docker", "kubernetes", "slurm", "docker-slurm"])
def test_each_deployment_example_is_a_valid_complete_config(example, kubernetes_installed):
    """config/examples/: a commented podbay.yaml per deployment, which the docs' steps use;
    each passes `podbay config check` for its backend, and the cluster's makes every object
    `podbay k8s manifests` and `podbay k8s values` print."""
    import subprocess
    import sys

    path = ROOT / "config" / "examples" / f"{example}.yaml"
    run = subprocess.run([sys.executable, "-m", "podbay.hub.cli", "config", "check", str(path)],
                         capture_output=True, text=True)
    assert run.returncode == 0 and ": valid — backend " + example.split("-")[0] in run.stdout, run.stdout + run.stderr
    if example == "kubernetes":
        for command in ("manifests", "values"):
            made = subprocess.run([sys.executable, "-m", "podbay.hub.cli", "k8s", command, "--config", str(path)],
                                  capture_output=True, text=True)
            assert made.returncode == 0 and made.stdout.count("\n") > 10, made.stderr
