"""Layout advice: known answers on hand-made demand, what it would interrupt, how it is
written for mig-parted and podbay.yaml, and the service's /advice for admins."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import update

from podbay.hub.advice.advise import advise
from podbay.hub.advice.layouts import predefined_name
from podbay.hub.advice.render import as_dict, mig_parted_config
from podbay.hub.advice.replay import DYNAMIC, WHOLE, GpuLayout, gpus_of
from podbay.hub.advice.trace import Request
from podbay.hub.config import load_config, parse_profile_id
from podbay.hub.gpu import FAMILIES
from podbay.hub.jobs import JobManager
from podbay.hub.backends.local.jobs import LocalBackend
from podbay.hub.portal import Portal
from podbay.hub.quota import Demand, NoCapacity
from podbay.hub.quota.database import DemandRow
from podbay.hub.service import create_app

from tests.unit.test_usage import as_, fake_hub

DATA = Path(__file__).parents[1] / "data" / "demand"
BALANCED = GpuLayout("mig", mig=("3g.40gb", "2g.20gb", "1g.10gb", "1g.10gb"))


def pairs_of(profile: str, n: int, every: float = 100, hold: float = 50) -> list[Request]:
    """`n` rounds of two requests for `profile` at once."""
    return [Request(i * every, hold, f"u{j}", None, profile) for i in range(n) for j in range(2)]


def test_two_3g_at_once_get_a_gpu_cut_for_two():
    cfg = load_config(DATA / "one-server.yaml")
    # GPU 3 only, balanced now: one 3g.40gb. Demand: always two 3g at once.
    gpus = [g for g in gpus_of(cfg) if g.index == 3]
    advice = advise(cfg, gpus, pairs_of("mig-3g.40gb", 10))
    (node,) = advice.nodes
    assert node.gpus[0].current == BALANCED
    assert node.gpus[0].advised == GpuLayout("mig", mig=("3g.40gb", "3g.40gb"))
    assert (advice.before.refused, advice.after.refused) == (10, 0)
    assert advice.after.unit_seconds_held > advice.before.unit_seconds_held
    assert node.config_name == "all-3g.40gb"


def test_nothing_moves_without_a_refusal_it_saves():
    cfg = load_config(DATA / "one-server.yaml")
    gpus = gpus_of(cfg)
    # One 1g at a time: every layout serves it; nothing changes.
    advice = advise(cfg, gpus, [Request(i * 10, 5, "u", None, "mig-1g.10gb") for i in range(20)])
    assert advice.changed == [] and advice.before.refused == advice.after.refused == 0
    assert as_dict(advice, "local")["steps"] == []


def test_whole_gpus_for_a_pair_of_gpu_2_and_what_it_interrupts():
    cfg = load_config(DATA / "one-server.yaml")
    gpus = gpus_of(cfg)
    # Two gpu-2 at once, on one node with two whole GPUs: one refused per round. Two more
    # whole GPUs serve both, and one alone serves nobody. Idle GPUs go first: GPU 3; then
    # the first of the busy ones, GPU 2 (alice's workspace), not the A30 (bob's job).
    reqs = pairs_of("gpu-2", 5)
    running = {2: ["alice's workspace a (mig-1g.10gb)"], 4: ["job 7 of bob (mig-2g.12gb)"]}
    advice = advise(cfg, gpus, reqs, holders=lambda g: running.get(g.index, []))
    assert (advice.before.refused, advice.after.refused) == (5, 0)
    (node,) = advice.nodes
    advised = {g.index: g.advised for g in node.gpus}
    assert advised[0] == advised[1] == advised[2] == advised[3] == WHOLE
    assert advised[4] == gpus[4].layout
    assert node.interrupts == ["alice's workspace a (mig-1g.10gb)"]
    assert node.config_name == "podbay-node-a"
    config = mig_parted_config(advice)
    assert config == {"version": "v1", "mig-configs": {"podbay-node-a": [
        {"devices": [0, 1, 2, 3], "mig-enabled": False},
        {"devices": [4], "mig-enabled": True, "mig-devices": {"2g.12gb": 2}}]}}
    out = as_dict(advice, "local")
    assert out["nodes_yaml"] == [{"name": "node-a", "pool": "dev", "gpus": [
        {"index": i, "model": "NVIDIA H100 80GB HBM3"} for i in range(4)] + [
        {"index": 4, "model": "NVIDIA A30", "mig": [{"profile": "2g.12gb"}, {"profile": "2g.12gb"}]}]}]
    assert "stop what runs on the GPUs that change (alice's workspace a (mig-1g.10gb))" in out["steps"][1]
    assert "nvidia-mig-parted apply -f podbay-mig.yaml -c podbay-node-a" in out["steps"][1]


def test_a_layout_is_one_value_whatever_order_it_was_declared_in():
    assert GpuLayout("mig", mig=("1g.10gb", "1g.10gb", "2g.20gb", "3g.40gb")) == BALANCED
    cfg = load_config(DATA / "one-server.yaml")
    # GPU 2 declared 3g, 2g, 1g, 1g; the same slices listed the other way round are no change.
    (gpu,) = [g for g in gpus_of(cfg) if g.index == 2]
    assert gpu.layout == GpuLayout("mig", mig=tuple(reversed(BALANCED.mig)))


def test_predefined_mig_parted_names():
    h100, a30 = FAMILIES["H100-80GB"], FAMILIES["A30-24GB"]
    assert predefined_name(h100, BALANCED) == "all-balanced"
    assert predefined_name(h100, GpuLayout("mig", mig=("1g.10gb",) * 7)) == "all-1g.10gb"
    assert predefined_name(h100, GpuLayout("mig", mig=("1g.10gb",) * 6)) is None
    assert predefined_name(h100, WHOLE) == "all-disabled"
    assert predefined_name(a30, GpuLayout("mig", mig=("2g.12gb", "1g.6gb", "1g.6gb"))) == "all-balanced"
    assert predefined_name(h100, DYNAMIC) is None


@pytest.fixture
def service(tmp_path):
    from fastapi.testclient import TestClient

    portal = Portal.open(DATA / "one-server.yaml", f"sqlite:///{tmp_path / 'ledger.sqlite'}", tmp_path)
    jobs = JobManager(portal, LocalBackend(tmp_path / "jobs"))
    with fake_hub({"alice": {}, "bob": {}, "admin": {"admin": True, "scopes": ["access:servers!user=admin"]},
                   "admins-workspace": {"admin": True}}) as hub:
        app = create_app(portal, jobs, hub, run_scheduler=False)
        with TestClient(app) as client:
            client.podbay = portal
            yield client
    portal.book.dispose()


def test_the_service_advises_admins_from_recorded_demand(service):
    portal = service.podbay
    quota = portal.quota_for(None).model_copy(update={"gpu_units": 100, "workspaces_per_user": 100})

    def ask(key, user, profile):
        portal.claim(key=key, kind="workspace", user=user, team=None, quota=quota,
                     demand=Demand(profile, parse_profile_id(profile), ("dev",)))

    # Two 3g.40gb held; a third refused, asked again within a minute (one request).
    ask("workspace:alice/a", "alice", "mig-3g.40gb")
    ask("workspace:alice/b", "alice", "mig-3g.40gb")
    for _ in range(2):
        with pytest.raises(NoCapacity):
            ask("workspace:bob/a", "bob", "mig-3g.40gb")
    assert service.get("/services/podbay/api/v1/advice", headers=as_("alice")).status_code == 403
    r = service.get("/services/podbay/api/v1/advice", headers=as_("admin"))
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["requests"] == 3 and out["before"]["refused"] == 1 and out["after"]["refused"] == 0
    (node,) = out["nodes"]
    changed = [g for g in node["gpus"] if g["changes"]]
    assert len(changed) == 1 and changed[0]["advised"] == "mig 2x3g.40gb"
    # Nobody asked for a whole GPU: an idle whole one is cut, not a GPU alice's workspaces run on.
    assert changed[0]["current"] == "whole" and changed[0]["holders"] == [] and node["interrupts"] == []
    held = {g["index"]: g["holders"] for g in node["gpus"]}
    assert held[2] == ["alice's workspace a (mig-3g.40gb)"] and held[3] == ["alice's workspace b (mig-3g.40gb)"]
    assert service.get("/services/podbay/api/v1/advice", params={"pool": "gpu"},
                       headers=as_("admin")).json()["message"] == "no pool gpu; pools: dev"
    # Requests older than the period are not replayed; what they still hold is (alice's two
    # workspaces run on): nothing refused, nothing to change.
    with portal.book.write_session() as s, s.begin():
        s.execute(update(DemandRow).values(at=DemandRow.at - 40 * 86400))
    out = service.get("/services/podbay/api/v1/advice", headers=as_("admin")).json()
    assert out["requests"] == 2 and out["before"]["refused"] == 0 and not out["nodes"][0]["changes"]
    # Applying: admins only, and not from a token code in a workspace can read.
    apply = "/services/podbay/api/v1/advice/apply"
    assert service.post(apply, json={"node": "node-a"}, headers=as_("bob")).status_code == 403
    r = service.post(apply, json={"node": "node-a"}, headers=as_("admins-workspace"))
    assert r.status_code == 403 and "reaches all your workspaces" in r.json()["message"]
    # On one machine podbay changes no GPU's settings: refused before any advice is made,
    # with how to apply it instead.
    r = service.post(apply, json={"node": "node-a", "days": 50}, headers=as_("admin"))
    assert r.status_code == 409 and "nvidia-mig-parted" in r.json()["message"]
    assert service.post(apply, json={"node": "node-a", "configs": "x"}, headers=as_("admin")).status_code == 400
    # An engine that applies layouts (as Kubernetes does): the advice is made again for the
    # node, and only its config for it is applied.
    applied = []

    async def apply_layout(portal, node, config):
        applied.append((node, config))
        return f"{node}: {config}"

    portal.plugin.cannot_apply_layouts = lambda portal: None
    portal.plugin.apply_layout = apply_layout
    # With the demand of the last 50 days node-a changes (a whole GPU cut into two 3g).
    r = service.post(apply, json={"node": "node-a", "days": 50, "config": "all-balanced"}, headers=as_("admin"))
    assert r.status_code == 409 and r.json()["error"] == "advice_changed" and applied == []
    r = service.post(apply, json={"node": "node-a", "days": 50}, headers=as_("admin"))
    assert r.status_code == 200 and applied == [("node-a", "podbay-node-a")], r.text
    # Nothing to change in the last 30 days; no node of another name.
    r = service.post(apply, json={"node": "node-a"}, headers=as_("admin"))
    assert r.status_code == 200 and r.json()["message"] == "node-a already has the advised layout"
    r = service.post(apply, json={"node": "gpu-box"}, headers=as_("admin"))
    assert r.status_code == 404 and "its nodes: node-a" in r.json()["message"]
    assert len(applied) == 1


# --- Slurm pools: layouts read from the nodes' GRES ------------------------------------------

def slurm_settings(**kw):
    from podbay.hub.backends.slurm.commands import SlurmSettings

    return SlurmSettings(**kw)


def test_a_slurm_nodes_gres_says_its_gpus_and_their_slices():
    from podbay.hub.backends.slurm.layouts import node_gpus, parse_gres
    from podbay.hub.backends.slurm.nodes import parse_nodes

    assert parse_gres("gpu:a100:4(S:0-1),shard:a100:16,gpu:1g.10gb:7(S:0)") == [("a100", 4), ("1g.10gb", 7)]
    assert parse_gres("gpu:2") == [(None, 2)] and parse_gres("(null)") == []
    text = ("NodeName=dgx01 State=IDLE Partitions=train Gres=gpu:a100:2(S:0-1),gpu:3g.40gb:2,gpu:1g.10gb:2\n"
            "NodeName=dgx02 State=IDLE Partitions=train Gres=gpu:1g.10gb:14\n"
            "NodeName=dgx03 State=IDLE Partitions=train Gres=gpu:1g.99gb:7\n")
    nodes = {n.name: n for n in parse_nodes(text)}
    settings = slurm_settings(gpu_models={"a100": "NVIDIA A100-SXM4-80GB"})
    one = node_gpus(nodes["dgx01"], "train", settings)
    # Two whole A100 80GB (the model the setting names), and the slices dealt out to as few GPUs
    # as hold them by the geometry: two 3g.40gb take all eight memory slots of one.
    assert [g.layout for g in one] == [WHOLE, WHOLE, GpuLayout("mig", mig=("3g.40gb", "3g.40gb")),
                                       GpuLayout("mig", mig=("1g.10gb", "1g.10gb"))]
    assert {g.family.key for g in one} == {"A100-80GB"} and one[0].model == "NVIDIA A100-SXM4-80GB"
    # Fourteen 1g slices: two GPUs cut into seven each (as few GPUs as hold them).
    two = node_gpus(nodes["dgx02"], "train", settings)
    assert [g.layout.mig for g in two] == [("1g.10gb",) * 7] * 2
    # A profile no model has: left alone.
    assert node_gpus(nodes["dgx03"], "train", settings) is None


def test_slurms_autodetected_mig_types_read_as_their_profiles():
    """AutoDetect=nvml names a slice <gpu>_<profile> with the driver's GiB (3g.40gb of an A100
    80GB: a100_3g.39gb); a site may name them its own way (slurm.mig_types)."""
    from podbay.hub.backends.slurm.layouts import node_gpus
    from podbay.hub.backends.slurm.nodes import parse_nodes

    text = ("NodeName=a State=IDLE Partitions=train Gres=gpu:a100:1(S:0),gpu:a100_3g.39gb:2(S:0),gpu:a100_1g.10gb:2\n"
            "NodeName=b State=IDLE Partitions=train Gres=gpu:nvidia_h100_7g.79gb:1,gpu:nvidia_h100_2g.20gb:3\n"
            "NodeName=c State=IDLE Partitions=train Gres=gpu:big:2,gpu:small:7\n")
    nodes = {n.name: n for n in parse_nodes(text)}
    settings = slurm_settings(gpu_models={"a100": "NVIDIA A100-SXM4-80GB", "nvidia_h100": "NVIDIA H100 80GB HBM3"},
                              mig_types={"4g.40gb": "big", "1g.10gb": "small"})
    a = node_gpus(nodes["a"], "train", settings)
    assert [g.layout for g in a] == [WHOLE, GpuLayout("mig", mig=("3g.40gb", "3g.40gb")),
                                     GpuLayout("mig", mig=("1g.10gb", "1g.10gb"))]
    assert {g.family.key for g in a} == {"A100-80GB"}
    b = node_gpus(nodes["b"], "train", settings)
    assert [g.layout for g in b] == [GpuLayout("mig", mig=("7g.80gb",)), GpuLayout("mig", mig=("2g.20gb",) * 3)]
    # The site's own names, through slurm.mig_types; dealt out: 4g + 3×1g on one GPU, 4×1g on another.
    c = node_gpus(nodes["c"], "train", settings)
    assert sorted(p for g in c for p in g.layout.mig) == ["1g.10gb"] * 7 + ["4g.40gb"] * 2


def test_slurm_and_docker_pools_each_get_their_engines_steps():
    from podbay.hub.advice.replay import SimGpu
    from podbay.hub.advice.render import GresNames, slurm_gres

    cfg = load_config(DATA / "one-server.yaml")
    h100 = FAMILIES["H100-80GB"]
    gpus = [SimGpu("dgx01", "dev", i, "NVIDIA H100 80GB HBM3", h100, WHOLE) for i in range(2)]
    advice = advise(cfg, gpus, pairs_of("mig-3g.40gb", 10),
                    holders=lambda g: ["Slurm job 7 of alice (train)"],
                    modes={"dev": frozenset({"whole", "mig"})})
    [node] = advice.changed
    out = as_dict(advice, {"dev": "slurm"})
    assert out["nodes_yaml"] == []  # Slurm's nodes are in slurm.conf, not podbay.yaml
    [step] = [s for s in out["steps"] if s.startswith("dgx01")]
    assert "scontrol update nodename=dgx01 state=drain" in step and f"Gres={slurm_gres(node)}" in step
    assert "wait for Slurm job 7 of alice (train)" in step and "state=resume" in step
    assert "scontrol reconfigure" in step
    # Two 3g.40gb at once on two GPUs: one cut for two, one whole.
    assert slurm_gres(node) == "gpu:1,gpu:3g.40gb:2"
    assert slurm_gres(node, GresNames("h100", {"3g.40gb": "h100_3g.39gb"})) == "gpu:h100:1,gpu:h100_3g.39gb:2"
    # Without a type for the whole GPUs, a job asking for gpu:N could get a slice: said.
    assert any("Set slurm.gpu_type" in s for s in out["steps"])
    # The same GPUs on one machine: podbay.yaml's entry, and no Slurm in the steps.
    local = as_dict(advice, {"dev": "docker"})
    assert local["nodes_yaml"] and not any("scontrol" in s for s in local["steps"])
