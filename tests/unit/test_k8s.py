"""The kubernetes backend's pure parts: what each profile asks the scheduler for under each
GPU-operator setup, the Job, Service and PVC builders (every object checked against the
Kubernetes schemas, strict, for the oldest and newest versions podbay supports), and the
capacity arithmetic on node objects carrying GPU Feature Discovery's recorded labels."""

from __future__ import annotations

import json
import threading
from collections import Counter
from fractions import Fraction

import kubernetes_validate
import pytest
import yaml

from podbay.hub.config import parse_config, parse_profile_id
from podbay.hub.backends.kubernetes.capacity import ClusterCapacity, pod_requests
from podbay.hub.backends.kubernetes.objects import (
    GpuAsk,
    ProfileUnavailable,
    container_resources,
    gpu_ask,
    home_pvc,
    labels,
    node_selector_of,
    tolerations_of,
    training_job,
    volume_mounts,
)
from podbay.hub.backends.kubernetes.settings import KubernetesSettings, PoolGpus, TimeSlicing
from podbay.hub.quota import Snapshot

from tests.harness import FIXTURES

# z2jh 4.4 needs 1.28; kubernetes-validate's newest schemas are 1.37.
VERSIONS = ["1.28", "1.37"]
LABELS = FIXTURES / "k8s-node-labels"
MIXED_H100 = json.loads((LABELS / "cloud-native-docs_h100_mig-mixed_all-balanced_node-labels.json").read_text())
SINGLE_H100 = json.loads((LABELS / "cloud-native-docs_h100_mig-single_all-disabled_node-labels.json").read_text())
NOTHING = Snapshot(0, frozenset(), {}, {}, {})


def valid(obj: dict) -> None:
    for version in VERSIONS:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            raise AssertionError(f"{obj['kind']} {obj['metadata']['name']} is not a valid {version} object: "
                                 f"{e.message} at {list(e.path)}") from None


MIXED = PoolGpus(mig_strategy="mixed")
SINGLE = PoolGpus(mig_strategy="single", product="NVIDIA-A100-PCIE-40GB")
RENAMED = PoolGpus(time_slicing=TimeSlicing(replicas=4))
NOT_RENAMED = PoolGpus(time_slicing=TimeSlicing(replicas=4, rename_by_default=False), product="NVIDIA-A10G")
WHOLE = PoolGpus()


@pytest.mark.parametrize("profile, pool, ask", [
    ("cpu", MIXED, GpuAsk()),
    ("mig-1g.10gb", MIXED, GpuAsk({"nvidia.com/mig-1g.10gb": 1})),
    ("mig-1g.5gb", SINGLE, GpuAsk({"nvidia.com/gpu": 1}, {"nvidia.com/gpu.product": "NVIDIA-A100-PCIE-40GB-MIG-1g.5gb"})),
    ("shared-1/4", RENAMED, GpuAsk({"nvidia.com/gpu.shared": 1})),
    ("shared-1/4", NOT_RENAMED, GpuAsk({"nvidia.com/gpu": 1}, {"nvidia.com/gpu.product": "NVIDIA-A10G-SHARED"})),
    ("gpu-8", WHOLE, GpuAsk({"nvidia.com/gpu": 8})),
    ("gpu-1", RENAMED, GpuAsk({"nvidia.com/gpu": 1})),
    ("gpu-2", MIXED, GpuAsk({"nvidia.com/gpu": 2})),
])
def test_each_profile_kind_asks_what_the_pools_gpu_setup_offers(profile, pool, ask):
    assert gpu_ask(parse_profile_id(profile), "dev", pool) == ask


@pytest.mark.parametrize("profile, pool, words", [
    ("mig-1g.10gb", WHOLE, "pool dev has no MIG (kubernetes.pools.dev.mig_strategy is none)"),
    ("mig-1g.10gb", PoolGpus(mig_strategy="single"), "give kubernetes.pools.dev.product"),
    ("shared-1/4", WHOLE, "pool dev is not time-sliced"),
    ("shared-1/2", RENAMED, "time-slices each GPU into 4, not 2"),
    ("shared-1/4", PoolGpus(time_slicing=TimeSlicing(replicas=4, rename_by_default=False)), "give kubernetes.pools.dev.product"),
    ("gpu-1", NOT_RENAMED, "a whole GPU cannot be asked for there"),
])
def test_a_profile_the_pool_cannot_offer_says_what_to_change(profile, pool, words):
    with pytest.raises(ProfileUnavailable, match=words.replace(".", r"\.").replace("(", r"\(").replace(")", r"\)")):
        gpu_ask(parse_profile_id(profile), "dev", pool)


@pytest.fixture
def cfg():
    return parse_config({
        "images": [{"name": "pytorch", "display_name": "PyTorch", "image": "nvcr.io/nvidia/pytorch:25.01-py3"}],
        "profiles": [{"id": "cpu"}, {"id": "mig-1g.10gb"}, {"id": "gpu-8", "pools": ["training"]}],
        "pools": {"dev": {"node_selector": {"podbay.io/pool": "dev"}},
                  "training": {"node_selector": {"podbay.io/pool": "training"},
                               "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]}},
        "volumes": [{"name": "imagenet", "source": "/data/imagenet", "read_only": True},
                    {"name": "scratch", "source": "/data/scratch", "read_only": False}],
        "teams": {"vision": {"members": ["alice"], "quota": {"gpu_units": 4, "job_gpus": 16}}},
    })


SETTINGS = KubernetesSettings(namespace="podbay", kueue=True,
                              pools={"dev": MIXED, "training": WHOLE},
                              claims={"imagenet": "imagenet-ro", "scratch": "team-scratch"},
                              resources={"default": {"cpu": "1", "memory": "4Gi"},
                                         "gpu-8": {"cpu": "32", "memory": "512Gi", "cpu_limit": "64"}},
                              home={"storage_class": "nfs", "size": "50Gi"})


def test_a_workspace_pod_has_its_gpu_resource_pool_volumes_and_labels(cfg):
    spec = parse_profile_id("mig-1g.10gb")
    ask = gpu_ask(spec, "dev", SETTINGS.pool("dev"))
    vols, mounts = volume_mounts(cfg, SETTINGS, ["imagenet", "scratch"], "podbay-home-alice")
    resources = container_resources(SETTINGS, "mig-1g.10gb", ask)
    assert resources == {"requests": {"cpu": "1", "memory": "4Gi", "nvidia.com/mig-1g.10gb": "1"},
                         "limits": {"cpu": "1", "memory": "4Gi", "nvidia.com/mig-1g.10gb": "1"}}
    assert mounts == [{"name": "home", "mountPath": "/home/jovyan"},
                      {"name": "data-imagenet", "mountPath": "/home/jovyan/data/imagenet", "readOnly": True},
                      {"name": "data-scratch", "mountPath": "/home/jovyan/data/scratch", "readOnly": False}]
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "jupyter-alice", "namespace": "podbay",
                        "labels": labels(user="alice", team="vision", profile="mig-1g.10gb",
                                         units=Fraction(1, 7), component="workspace")},
           "spec": {"containers": [{"name": "notebook", "image": "nvcr.io/nvidia/pytorch:25.01-py3",
                                    "resources": resources, "volumeMounts": mounts}],
                    "volumes": vols, "nodeSelector": node_selector_of(cfg, "dev", ask),
                    "tolerations": tolerations_of(cfg, "dev")}}
    valid(pod)
    assert pod["metadata"]["labels"]["podbay.io/units"] == "1-7"
    assert "CUDA_VISIBLE_DEVICES" not in json.dumps(pod), "the device plugin sets it"


def test_one_node_job_carries_the_teams_queue_and_starts_suspended(cfg):
    (job,) = training_job(cfg, SETTINGS, job_id=7, name="resnet", user="alice", team="vision",
                          image="nvcr.io/nvidia/pytorch:25.01-py3", command=["python", "train.py"],
                          workdir="/home/jovyan/proj", env={"PODBAY_JOB_ID": "7"}, volumes=["imagenet"],
                          gpus_per_node=8, nodes=1, pool="training", queue=None)
    valid(job)
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "podbay-vision"
    assert job["spec"]["suspend"] is True and "completionMode" not in job["spec"]
    pod = job["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": "8"}
    assert pod["nodeSelector"] == {"podbay.io/pool": "training"} and pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert pod["volumes"][0] == {"name": "home", "persistentVolumeClaim": {"claimName": "podbay-home-alice"}}


def test_a_two_node_job_is_an_indexed_job_with_a_headless_service_torchrun_can_use(cfg):
    job, service, policy = training_job(cfg, SETTINGS, job_id=12, name="llm", user="alice", team="vision",
                                        image="nvcr.io/nvidia/pytorch:25.01-py3",
                                        command=["torchrun", "--nnodes=2", "train.py"], workdir="/home/jovyan",
                                        env={}, volumes=[], gpus_per_node=8, nodes=2, pool="training",
                                        queue="big-jobs")
    valid(job)
    valid(service)
    valid(policy)
    assert policy["kind"] == "NetworkPolicy" and policy["spec"]["podSelector"] == {"matchLabels": {"job-name": "podbay-job-12"}}
    spec = job["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 2, 2)
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "big-jobs", "the pool's own queue"
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["selector"] == {"job-name": "podbay-job-12"}
    assert spec["template"]["spec"]["subdomain"] == service["metadata"]["name"]
    env = {e["name"]: e.get("value") or e["valueFrom"]["fieldRef"]["fieldPath"]
           for e in spec["template"]["spec"]["containers"][0]["env"]}
    assert env["MASTER_ADDR"] == "podbay-job-12-0.podbay-job-12" and env["WORLD_SIZE"] == "2"
    assert env["NODE_RANK"] == "metadata.annotations['batch.kubernetes.io/job-completion-index']"


def test_without_kueue_a_job_goes_straight_to_the_scheduler(cfg):
    plain = SETTINGS.model_copy(update={"kueue": False})
    (job,) = training_job(cfg, plain, job_id=1, name="j", user="bob", team=None, image="x", command=["true"],
                          workdir="/home/jovyan", env={}, volumes=[], gpus_per_node=0, nodes=1, pool="dev", queue=None)
    valid(job)
    assert "suspend" not in job["spec"] and "kueue.x-k8s.io/queue-name" not in job["metadata"]["labels"]
    env = {e["name"]: e["value"] for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["NVIDIA_VISIBLE_DEVICES"] == "void", "NGC images see no GPU without one"


def test_homes_are_claims_from_the_storage_class(cfg):
    pvc = home_pvc(SETTINGS, "alice@example.org", "vision")
    valid(pvc)
    assert pvc["metadata"]["name"] == "podbay-home-alice-40example-2eorg"
    assert pvc["spec"] == {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "50Gi"}},
                           "storageClassName": "nfs"}


def test_settings_refuse_what_the_operator_cannot_do():
    # MIG nodes and time-sliced nodes in one pool: each profile asks for its own resource.
    both = PoolGpus(mig_strategy="mixed", time_slicing={"replicas": 4})
    assert gpu_ask(parse_profile_id("mig-1g.10gb"), "dev", both).resources == {"nvidia.com/mig-1g.10gb": 1}
    assert gpu_ask(parse_profile_id("shared-1/4"), "dev", both).resources == {"nvidia.com/gpu.shared": 1}
    assert gpu_ask(parse_profile_id("gpu-1"), "dev", both).resources == {"nvidia.com/gpu": 1}
    with pytest.raises(ValueError, match="not a Kubernetes quantity"):
        KubernetesSettings(resources={"default": {"memory": "8 GB"}})


# --- capacity, as the scheduler counts ------------------------------------------------


def node(name: str, labels: dict, allocatable: dict, pool: str = "dev") -> dict:
    return {"metadata": {"name": name, "labels": {**labels, "podbay.io/pool": pool}},
            "status": {"allocatable": {"cpu": "64", "memory": "512Gi", **allocatable}}}


def pod(node_name: str, resources: dict, phase: str = "Running") -> dict:
    return {"spec": {"nodeName": node_name, "containers": [{"name": "c", "resources": {"limits": resources}}]},
            "status": {"phase": phase}}


def mixed_allocatable(labels: dict) -> dict:
    """What the device plugin advertises for GFD's MIG counts (mixed strategy)."""
    return {f"nvidia.com/mig-{k[len('nvidia.com/mig-'):-len('.count')]}": v
            for k, v in labels.items() if k.startswith("nvidia.com/mig-") and k.endswith(".count")}


def test_free_is_allocatable_minus_the_requests_of_pods_that_have_not_ended(cfg):
    nodes = [node("h100-a", MIXED_H100, mixed_allocatable(MIXED_H100)),
             node("h100-b", MIXED_H100, mixed_allocatable(MIXED_H100)),
             node("dgx-1", {}, {"nvidia.com/gpu": "8"}, pool="training")]
    pods = [pod("h100-a", {"nvidia.com/mig-1g.10gb": "1"}),
            pod("h100-a", {"nvidia.com/mig-1g.10gb": "1"}, phase="Succeeded"),  # ended: holds nothing
            pod("h100-b", {"nvidia.com/mig-1g.10gb": "2"}),
            pod("dgx-1", {"nvidia.com/gpu": "3"})]
    capacity = ClusterCapacity(cfg, SETTINGS, lambda: (nodes, pods))
    assert capacity.counts(parse_profile_id("mig-1g.10gb"), ["dev"], NOTHING) == (4, 1)
    assert capacity.counts(parse_profile_id("mig-3g.40gb"), ["dev"], NOTHING) == (2, 2)
    assert capacity.counts(parse_profile_id("gpu-8"), ["training"], NOTHING) == (1, 0)
    assert capacity.counts(parse_profile_id("gpu-4"), ["training"], NOTHING) == (2, 1)
    assert capacity.counts(parse_profile_id("cpu"), ["dev"], NOTHING) == (-1, -1)
    assert capacity.most_gpus_per_node("training") == 8
    devices = capacity.devices("dev", NOTHING)
    assert (devices["mig-1g.10gb"].total, devices["mig-1g.10gb"].used, devices["mig-1g.10gb"].free) == (4, 3, 1)
    # The H100's own geometry from its product label: 3g.40gb is 3 of 7 compute slices.
    assert capacity.unit_weight(parse_profile_id("mig-3g.40gb"), ["dev"]) == Fraction(3, 7)


def test_nodes_not_ready_or_cordoned_are_counted_never_free_and_drawn_with_their_state(cfg, tmp_path):
    """A node whose kubelet stopped reporting (Ready Unknown) or that is cordoned takes no new
    pod: its GPUs are in the totals, never free. The capacity page and /capacity draw every
    node of a Kubernetes pool from the real ClusterCapacity (not a stand-in object)."""
    from podbay.hub.portal import Portal
    from podbay.hub.service.picture import capacity_picture

    lost = node("dgx-2", {"nvidia.com/gpu.count": "8"}, {"nvidia.com/gpu": "8"}, pool="training")
    lost["status"]["conditions"] = [{"type": "Ready", "status": "Unknown", "reason": "NodeStatusUnknown",
                                     "message": "Kubelet stopped posting node status."}]
    cordoned = node("dgx-3", {}, {"nvidia.com/gpu": "8"}, pool="training")
    cordoned["spec"] = {"unschedulable": True}
    nodes = [node("h100-a", MIXED_H100, mixed_allocatable(MIXED_H100)),
             node("dgx-1", {}, {"nvidia.com/gpu": "8"}, pool="training"), lost, cordoned]
    pods = [pod("dgx-1", {"nvidia.com/gpu": "3"}), pod("h100-a", {"nvidia.com/mig-1g.10gb": "1"})]
    capacity = ClusterCapacity(cfg, SETTINGS, lambda: (nodes, pods))
    assert capacity.counts(parse_profile_id("gpu-4"), ["training"], NOTHING) == (6, 1)
    assert capacity.devices("training", NOTHING)["gpu"].free == 5
    states = {n.name: (n.state, n.gpus, n.gpus_used, n.usable, n.reason) for n in capacity.node_states("training")}
    assert states == {"dgx-1": ("Ready", 8, 3, True, ""),
                      "dgx-2": ("NotReady", 8, 0, False, "Kubelet stopped posting node status."),
                      "dgx-3": ("SchedulingDisabled", 8, 0, False, "cordoned")}
    (h100,) = capacity.node_states("dev")
    assert h100.reason.startswith("MIG: 1 of ") and h100.reason.endswith(" slices in use")
    (tmp_path / "podbay.yaml").write_text(yaml.safe_dump(K8S_CONFIG))
    portal = Portal.open(tmp_path / "podbay.yaml", f"sqlite:///{tmp_path / 'ledger.sqlite'}", tmp_path)
    try:
        portal.capacity = capacity
        picture = {p["name"]: p for p in capacity_picture(portal)}
        drawn = {n["name"]: n for n in picture["training"]["nodes"]}
        assert set(drawn) == {"dgx-1", "dgx-2", "dgx-3"} and drawn["dgx-2"]["state"] == "NotReady"
        assert sum(1 for g in drawn["dgx-1"]["gpus"] if g["devices"][0]["holder"]) == 3
    finally:
        portal.book.dispose()


def test_single_strategy_mig_nodes_are_found_by_their_product_label(cfg):
    cut = {**SINGLE_H100, "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3-MIG-1g.10gb", "nvidia.com/gpu.count": "7"}
    nodes = [node("h100-cut", cut, {"nvidia.com/gpu": "7"}), node("h100-whole", SINGLE_H100, {"nvidia.com/gpu": "1"})]
    settings = KubernetesSettings(pools={"dev": {"mig_strategy": "single", "product": "NVIDIA-H100-80GB-HBM3"}})
    capacity = ClusterCapacity(cfg, settings, lambda: (nodes, [pod("h100-cut", {"nvidia.com/gpu": "2"})]))
    assert capacity.counts(parse_profile_id("mig-1g.10gb"), ["dev"], NOTHING) == (7, 5)
    # A whole GPU asks for the plain model's product, so it never lands on a MIG slice, and
    # the cut node's nvidia.com/gpu are not counted as whole GPUs.
    whole = gpu_ask(parse_profile_id("gpu-1"), "dev", settings.pool("dev"))
    assert whole.node_selector == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert capacity.counts(parse_profile_id("gpu-1"), ["dev"], NOTHING) == (1, 1)


def test_nodes_that_say_what_the_config_does_not_know_are_reported(cfg):
    odd = {**MIXED_H100, "nvidia.com/mig-9g.99gb.count": "1"}
    nodes = [node("h100-a", MIXED_H100, mixed_allocatable(MIXED_H100)), node("h100-odd", odd, {})]
    settings = KubernetesSettings(pools={"dev": {"mig_strategy": "single", "product": "NVIDIA-H100-80GB-HBM3"}})
    problems = ClusterCapacity(cfg, settings, lambda: (nodes, [])).unknown()
    assert "node h100-a (pool dev) uses the mixed MIG strategy, the config says single: its MIG devices are not counted" \
        in problems
    assert "node h100-odd (pool dev) offers MIG profiles podbay does not know: 9g.99gb" in problems
    assert ClusterCapacity(cfg, SETTINGS, lambda: (nodes[:1], [])).unknown() == [], "as configured: nothing to say"


def test_pod_requests_count_init_containers_as_the_scheduler_does():
    p = {"spec": {"containers": [{"resources": {"requests": {"nvidia.com/gpu": "1"}}},
                                 {"resources": {"limits": {"nvidia.com/gpu": "1"}}}],
                  "initContainers": [{"resources": {"limits": {"nvidia.com/gpu": "4"}}}]}}
    assert pod_requests(p) == {"nvidia.com/gpu": 4}
    assert yaml.safe_dump(p)  # plain data, as the API returns it


def test_the_schema_check_is_strict():
    """What the builders are held to: a misspelt field or a wrong type fails."""
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"},
               "spec": {"clusterIP": "None", "selector": {"a": "b"}, "ports": [{"port": 1}]}}
    valid(service)
    with pytest.raises(AssertionError, match="'clusterIp' was unexpected"):
        valid({**service, "spec": {**service["spec"], "clusterIp": "None"}})
    with pytest.raises(AssertionError, match="is not of type"):
        valid({**service, "spec": {**service["spec"], "ports": [{"port": "one"}]}})


# --- what the chart lacks -------------------------------------------------------------


def test_rbac_lets_the_hub_read_capacity_cluster_wide_and_run_jobs_in_its_namespace():
    from podbay.hub.backends.kubernetes.manifests import rbac

    objs = rbac(SETTINGS, hub_account="hub", hub_namespace="jhub")
    for obj in objs:
        valid(obj)
    cluster_role, _, role, binding = objs
    assert cluster_role["rules"] == [{"apiGroups": [""], "resources": ["nodes", "pods"], "verbs": ["get", "list", "watch"]},
                                     {"apiGroups": ["storage.k8s.io"], "resources": ["storageclasses"],
                                      "verbs": ["get", "list"]}]
    # That these and the chart's hub Role grant every call podbay makes (needed_access) is
    # asked of the stand-in cluster's RBAC by podbay doctor: tests/integration/test_doctor.py.
    assert {"create", "delete"} <= set(role["rules"][0]["verbs"]) and role["rules"][0]["resources"] == ["jobs"]
    assert role["metadata"]["namespace"] == "podbay"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "hub", "namespace": "jhub"}]


def test_time_slicing_config_for_the_pools_that_share(cfg):
    from podbay.hub.backends.kubernetes.manifests import time_slicing

    settings = SETTINGS.model_copy(update={"pools": {"dev": RENAMED, "training": WHOLE}})
    (cm,) = time_slicing(cfg, settings)
    valid(cm)
    assert list(cm["data"]) == ["dev"]
    assert yaml.safe_load(cm["data"]["dev"]) == {"version": "v1", "sharing": {"timeSlicing": {
        "renameByDefault": True, "failRequestsGreaterThanOne": True,
        "resources": [{"name": "nvidia.com/gpu", "replicas": 4}]}}}
    assert time_slicing(cfg, SETTINGS) == [], "no pool shares"


def test_kueue_queues_give_each_team_its_job_gpus_in_one_cohort(cfg):
    from podbay.hub.backends.kubernetes.manifests import kueue

    objs = kueue(cfg, SETTINGS)
    by_kind: dict[str, list[dict]] = {}
    for obj in objs:
        by_kind.setdefault(obj["kind"], []).append(obj)
        # Kueue's CRDs have no schema here: their standard part (metadata) is checked strictly.
        valid({"apiVersion": "v1", "kind": "ConfigMap", "metadata": obj["metadata"]})
    # One flavor: Kueue counts quota per flavor, and a team's job GPUs are for all pools together.
    assert [(f["metadata"]["name"], f["spec"]) for f in by_kind["ResourceFlavor"]] == [("podbay-gpus", {})]
    vision = next(q for q in by_kind["ClusterQueue"] if q["metadata"]["name"] == "podbay-vision")
    assert vision["spec"]["cohort"] == "podbay"
    (group,) = vision["spec"]["resourceGroups"]
    assert group["coveredResources"] == ["cpu", "memory", "nvidia.com/gpu"]
    gpus = {f["name"]: next(r["nominalQuota"] for r in f["resources"] if r["name"] == "nvidia.com/gpu")
            for f in group["flavors"]}
    assert gpus == {"podbay-gpus": 16}
    local = {q["metadata"]["name"]: q for q in by_kind["LocalQueue"]}
    assert local["podbay-vision"]["spec"] == {"clusterQueue": "podbay-vision"}
    assert local["podbay-vision"]["metadata"]["namespace"] == "podbay"
    # The queue a job of the team names is one of these.
    (job,) = training_job(cfg, SETTINGS, job_id=3, name="j", user="alice", team="vision", image="x",
                          command=["true"], workdir="/home/jovyan", env={}, volumes=[], gpus_per_node=1,
                          nodes=1, pool="training", queue=None)
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] in local


# --- the spawner: what KubeSpawner renders ------------------------------------------


K8S_CONFIG = {
    "backend": "kubernetes",
    "images": [{"name": "pytorch", "display_name": "PyTorch", "image": "nvcr.io/nvidia/pytorch:25.01-py3"}],
    "profiles": [{"id": "cpu"}, {"id": "mig-1g.10gb"}, {"id": "gpu-2"},
                 {"id": "gpu-8", "pools": ["training"]}],
    "pools": {"dev": {"node_selector": {"podbay.io/pool": "dev"}},
              "training": {"node_selector": {"podbay.io/pool": "training"},
                           "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]}},
    "volumes": [{"name": "imagenet", "allow": {"teams": ["vision"]}}],
    "teams": {"vision": {"members": ["alice"], "quota": {"gpu_units": 8, "workspaces_per_user": 4, "job_gpus": 16}}},
    "kubernetes": {"namespace": "ml", "claims": {"imagenet": "imagenet-ro"}, "pools": {"dev": {"mig_strategy": "mixed", "time_slicing": None},
                                                "training": {}},
                   "resources": {"default": {"cpu": "500m", "memory": "2Gi"},
                                 "gpu-8": {"cpu": "32", "memory": "256Gi", "memory_limit": "400Gi"}},
                   "home": {"storage_class": "nfs-homes", "size": "20Gi"}},
}


@pytest.fixture
def kube_spawner(kubernetes_installed, tmp_path, monkeypatch):
    """A podbay-kubernetes spawner as kubespawner's own tests make one (no hub); its client
    is configured from a kubeconfig that points at nothing, and nothing is called."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "none",
        "clusters": [{"name": "none", "cluster": {"server": "http://127.0.0.1:9"}}],
        "contexts": [{"name": "none", "context": {"cluster": "none", "user": "none"}}],
        "users": [{"name": "none", "user": {}}]}))
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    # kubernetes_asyncio reads KUBECONFIG once, when it is first imported (maybe by an earlier test).
    from kubernetes_asyncio.config import kube_config

    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(kubeconfig))
    (tmp_path / "podbay.yaml").write_text(yaml.safe_dump(K8S_CONFIG))
    from podbay.hub.backends.kubernetes.plugin import KubernetesBackend
    from podbay.hub.backends.kubernetes.spawner import PodbayKubeSpawner

    # No cluster view here (an earlier test may have left the process's one filled): the
    # scheduler would decide, so nothing is refused for capacity.
    monkeypatch.setattr(KubernetesBackend, "view", type(KubernetesBackend.view)())

    def make(user="alice"):
        spawner = PodbayKubeSpawner(_mock=True, config_file=str(tmp_path / "podbay.yaml"), data_dir=str(tmp_path),
                                    db_url=f"sqlite:///{tmp_path / 'ledger.sqlite'}")
        spawner.user.name = user
        spawner.user.groups = []
        return spawner
    return make


@pytest.mark.parametrize("profile, resources, selector", [
    ("cpu", {}, {"podbay.io/pool": "dev"}),
    ("mig-1g.10gb", {"nvidia.com/mig-1g.10gb": "1"}, {"podbay.io/pool": "dev"}),
    ("gpu-2", {"nvidia.com/gpu": "2"}, {"podbay.io/pool": "dev"}),
    ("gpu-8", {"nvidia.com/gpu": "8"}, {"podbay.io/pool": "training"}),
])
async def test_kubespawner_renders_each_profile_as_a_valid_pod(kube_spawner, profile, resources, selector):
    from kubernetes_asyncio.client import ApiClient

    spawner = kube_spawner()
    portal = spawner.portal
    assert not portal.places_devices
    request = portal.validate("alice", [], {"profile": profile, "volumes": ["imagenet"]})
    spawner.podbay_request = request
    spawner.podbay_allocation = portal.claim(key="workspace:alice/", kind="workspace", user="alice",
                                             team=request.team, demand=request.demand, quota=request.quota)
    spawner.podbay_prepare(request)
    async with ApiClient() as api:
        pod = api.sanitize_for_serialization(await spawner.get_pod_manifest())
        pvc = api.sanitize_for_serialization(spawner.get_pvc_manifest())
    pod.setdefault("apiVersion", "v1")
    pod.setdefault("kind", "Pod")
    valid(pod)
    (container,) = pod["spec"]["containers"]
    gpu_limits = {k: v for k, v in container["resources"].get("limits", {}).items() if k.startswith("nvidia.com/")}
    assert gpu_limits == resources
    assert pod["spec"]["nodeSelector"] == selector
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert "CUDA_VISIBLE_DEVICES" not in env, "the device plugin sets it"
    assert env.get("NVIDIA_VISIBLE_DEVICES") == (None if resources else "void")
    assert (env["PODBAY_PROFILE"], env["PODBAY_TEAM"]) == (profile, "vision")
    assert pod["metadata"]["labels"]["podbay.io/team"] == "vision"
    mounts = {m["mountPath"]: m.get("readOnly", False) for m in container["volumeMounts"]}
    assert mounts["/home/jovyan"] is False and mounts["/home/jovyan/data/imagenet"] is True
    claims = {v["persistentVolumeClaim"]["claimName"] for v in pod["spec"]["volumes"] if "persistentVolumeClaim" in v}
    assert claims == {"podbay-home-alice", "imagenet-ro"}
    # The home is ReadWriteOnce: the pod goes where the person's other pods hold it.
    assert pod["metadata"]["labels"]["podbay.io/home"] == "podbay-home-alice"
    (term,) = pod["spec"]["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term == {"labelSelector": {"matchLabels": {"podbay.io/home": "podbay-home-alice"}},
                    "topologyKey": "kubernetes.io/hostname"}
    if profile == "gpu-8":
        assert container["resources"]["requests"]["memory"] == 256 * 2**30
        assert pod["spec"]["tolerations"][0]["key"] == "nvidia.com/gpu"
    pvc.update(apiVersion="v1", kind="PersistentVolumeClaim")
    valid(pvc)
    assert pvc["spec"]["storageClassName"] == "nfs-homes" and pvc["metadata"]["name"] == "podbay-home-alice"


async def rendered(spawner, profile: str) -> tuple[dict, dict]:
    """The pod and home PVC one start of `spawner` on `profile` makes."""
    from kubernetes_asyncio.client import ApiClient

    portal = spawner.portal
    request = portal.validate(spawner.user.name, [], {"profile": profile})
    spawner.podbay_request = request
    spawner.podbay_allocation = portal.claim(key=f"workspace:{spawner.user.name}/", kind="workspace",
                                             user=spawner.user.name, team=request.team, demand=request.demand,
                                             quota=request.quota, replace=True)
    spawner.podbay_prepare(request)
    async with ApiClient() as api:
        return (api.sanitize_for_serialization(await spawner.get_pod_manifest()),
                api.sanitize_for_serialization(spawner.get_pvc_manifest()))


async def test_one_spawner_started_on_cpu_then_on_a_gpu_hides_nothing(kube_spawner):
    """JupyterHub keeps the spawner of a start that failed after it was answered (202) and runs
    the next start of that server on it. The kubelet puts the pod's env after the device
    plugin's, so a "void" left from a CPU start would hide the GPU the next one is given."""
    spawner = kube_spawner()
    spawner.environment = {"SITE": "kept"}  # the deployment's own (c.KubeSpawner.environment)
    # The deployment's tolerations and affinity as KubeSpawner also takes them: named entries.
    spawner.tolerations = {"site": {"key": "site.example/gpu", "operator": "Exists"}}
    spawner.pod_affinity_required = {"rack": {"labelSelector": {"matchLabels": {"rack": "a"}},
                                              "topologyKey": "kubernetes.io/hostname"}}

    def env(pod):
        return {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}

    # The authenticator's pre_spawn_start sets a fresh token in the environment at every start.
    spawner.environment["OAUTH_ACCESS_TOKEN"] = "first"
    pod, _ = await rendered(spawner, "cpu")
    assert env(pod)["NVIDIA_VISIBLE_DEVICES"] == "void" and env(pod)["SITE"] == "kept"
    assert {"key": "site.example/gpu", "operator": "Exists"} in pod["spec"]["tolerations"]
    terms = pod["spec"]["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms[0]["labelSelector"] == {"matchLabels": {"rack": "a"}} and len(terms) == 2
    spawner.environment["OAUTH_ACCESS_TOKEN"] = "second"
    pod, _ = await rendered(spawner, "gpu-2")
    assert "NVIDIA_VISIBLE_DEVICES" not in env(pod), "the device plugin's must stand"
    assert env(pod)["SITE"] == "kept" and env(pod)["OAUTH_ACCESS_TOKEN"] == "second", "this start's token"
    pod, _ = await rendered(spawner, "cpu")
    assert env(pod)["NVIDIA_VISIBLE_DEVICES"] == "void"


async def test_a_home_with_no_storage_class_asks_for_the_clusters_default(kube_spawner, tmp_path):
    """No storageClassName at all lets the DefaultStorageClass admission give the default
    class; "" would mean "no class": no provisioning, a home that never binds."""
    data = copy_of(K8S_CONFIG)
    del data["kubernetes"]["home"]["storage_class"]
    (tmp_path / "podbay.yaml").write_text(yaml.safe_dump(data))
    _, pvc = await rendered(kube_spawner(), "cpu")
    assert "storageClassName" not in pvc["spec"], pvc
    assert "volume.beta.kubernetes.io/storage-class" not in (pvc["metadata"].get("annotations") or {})
    # A class the deployment gave KubeSpawner itself (the chart's singleuser.storage.dynamic) stays.
    spawner = kube_spawner()
    spawner.storage_class = "site-default"
    _, pvc = await rendered(spawner, "cpu")
    assert pvc["spec"]["storageClassName"] == "site-default"


def test_config_check_knows_the_kubernetes_rules(kubernetes_installed, tmp_path):
    from podbay.hub.config import ConfigError, load_config

    data = copy_of(K8S_CONFIG)
    data["profiles"].append({"id": "mig-3g.40gb", "pools": ["training"]})   # training has no MIG
    data["volumes"].append({"name": "scratch", "source": "/scratch"})       # no PVC
    data["pools"]["dev"]["queue"] = "dev-queue"                              # no Kueue
    path = tmp_path / "podbay.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as e:
        load_config(path)
    said = [str(i).split(" (line")[0] for i in e.value.issues]
    assert "profiles[4]: mig-3g.40gb can never start: pool training has no MIG (kubernetes.pools.training.mig_strategy is none)" in said
    assert ("volumes[1]: the kubernetes backend mounts a PersistentVolumeClaim: name it in kubernetes.claims "
            "(scratch: <claim>)") in said
    assert "pools.dev.queue: a pool's queue is a Kueue LocalQueue: set kubernetes.kueue: true, or remove queue" in said
    assert len(said) == 3, said
    data = copy_of(K8S_CONFIG)
    data["kubernetes"]["home"]["access_mode"] = "ReadWriteOncePod"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as e:
        load_config(path)
    (issue,) = [str(i).split(" (line")[0] for i in e.value.issues]
    assert issue.startswith("kubernetes.home.access_mode: a ReadWriteOncePod home admits one pod at a time")


def copy_of(data):
    return json.loads(json.dumps(data))


def _pod(**status) -> dict:
    return {"metadata": {"name": "jupyter-alice"}, "status": {"phase": "Pending", **status}}


def _unschedulable(message: str) -> dict:
    return {"conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message}]}


@pytest.mark.parametrize("pod, waited, said", [
    (None, 0, None),
    (_pod(), 0, None),
    # The container ended, or the kubelet backs off restarting it (KubeSpawner's OnFailure).
    (_pod(phase="Failed", containerStatuses=[{"state": {"terminated": {"exitCode": 3, "reason": "Error"}}}]), 0,
     ("The workspace exited with status 3 while starting (Error).", 500)),
    (_pod(phase="Running", containerStatuses=[{"restartCount": 2, "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                                               "lastState": {"terminated": {"exitCode": 1}}}]), 0,
     ("The workspace exited with status 1 while starting (restarted 2 times).", 500)),
    (_pod(containerStatuses=[{"state": {"waiting": {"reason": "ImagePullBackOff", "message": "not found"}}}]), 0,
     ("The workspace's container cannot start: ImagePullBackOff: not found", 500)),
    # A first pull error may pass (a registry that hiccups): not yet.
    (_pod(containerStatuses=[{"state": {"waiting": {"reason": "ErrImagePull"}}}]), 0, None),
    # No node has the GPU free: after the grace, with the scheduler's words.
    (_pod(**_unschedulable("0/4 nodes are available: 1 Insufficient nvidia.com/mig-1g.10gb.")), 3, None),
    (_pod(**_unschedulable("0/4 nodes are available: 1 Insufficient nvidia.com/mig-1g.10gb.")), 10,
     ("No capacity: the cluster has no node for this workspace now: 0/4 nodes are available: "
      "1 Insufficient nvidia.com/mig-1g.10gb.", 503)),
    # Other waits are the start timeout's: a volume being bound, a preemption under way.
    (_pod(**_unschedulable("0/4 nodes are available: pod has unbound immediate PersistentVolumeClaims.")), 60, None),
    (_pod(nominatedNodeName="dev-01", **_unschedulable("0/4 nodes are available: 1 Insufficient nvidia.com/gpu.")),
     60, None),
])
def test_why_a_workspace_pod_does_not_start(pod, waited, said):
    from podbay.hub.backends.kubernetes.spawner import why_not_starting

    assert why_not_starting(pod, waited, grace=10) == said


def test_what_is_not_capacity_is_not_called_capacity():
    """An autoscaled pool adds a node for what waits (no refusal after the grace); a zonal
    volume and a ReadWriteOnce home that pin the pod elsewhere are said as what they are."""
    from podbay.hub.backends.kubernetes.spawner import why_not_starting

    short = _pod(**_unschedulable("0/4 nodes are available: 4 Insufficient nvidia.com/gpu."))
    assert why_not_starting(short, 60, grace=10, autoscaled=True) is None
    zonal = _pod(**_unschedulable("0/5 nodes are available: 2 Insufficient nvidia.com/gpu, "
                                  "3 node(s) had volume node affinity conflict."))
    message, status = why_not_starting(zonal, 60, grace=10)
    assert status == 503 and message.startswith("A volume of this workspace (its home or a data volume) is in "
                                                 "another zone"), message
    home = _pod(**_unschedulable("0/4 nodes are available: 1 Insufficient nvidia.com/gpu, "
                                 "3 node(s) didn't match pod affinity rules."))
    home["metadata"]["labels"] = {"podbay.io/home": "podbay-home-alice"}
    message, status = why_not_starting(home, 60, grace=10)
    assert status == 503 and message.startswith("Your home is attached to one node at a time (ReadWriteOnce)")


def test_an_autoscaled_pool_with_no_node_yet_refuses_nothing_for_capacity(cfg):
    """Scale from zero: no node of the pool has joined; a workspace is not refused at once, the
    catalog does not say "none free", and a job is sized by the node group's GPUs."""
    settings = KubernetesSettings(pools={"dev": {"mig_strategy": "mixed"},
                                         "training": {"autoscaled": True, "node_gpus": 8}})
    capacity = ClusterCapacity(cfg, settings, _ReadyView([node("h100-a", MIXED_H100, mixed_allocatable(MIXED_H100))]))
    assert capacity.shortage(parse_profile_id("gpu-8"), ["training"]) is None
    assert capacity.counts(parse_profile_id("gpu-8"), ["training"], NOTHING) == (0, -1)
    assert capacity.most_gpus_per_node("training") == 8
    # Not autoscaled: refused at once, with the reason.
    fixed = ClusterCapacity(cfg, SETTINGS, _ReadyView([node("h100-a", MIXED_H100, mixed_allocatable(MIXED_H100))]))
    assert fixed.shortage(parse_profile_id("gpu-8"), ["training"]) == "no node of training offers it"
    assert fixed.most_gpus_per_node("training") == 0


class _ReadyView:
    """A cluster view the watch has filled: these nodes, no pods."""

    def __init__(self, nodes):
        self.nodes = nodes
        self.ready = threading.Event()  # as the ClusterView's
        self.ready.set()

    def __call__(self):
        return self.nodes, []


def test_long_names_stay_unique_and_valid_for_any_username():
    """Names are cut to what Kubernetes takes; two long usernames sharing a prefix must not
    get each other's home or secrets, and a cut name must not end in '-'."""
    from podbay.hub.backends.kubernetes.objects import home_claim_name, k8s_name, label_value, user_secret, user_secret_name

    long_a, long_b = "a" * 300 + "-alice", "a" * 300 + "-bob"
    for name_of in (home_claim_name, user_secret_name):
        a, b = name_of(SETTINGS, long_a), name_of(SETTINGS, long_b)
        assert a != b and len(a) <= 253 and len(b) <= 253 and a[-1].isalnum()
    # Cut where a '-' would be left last.
    assert k8s_name("b" * 52 + "-" + "c" * 20, 63)[-1].isalnum() and len(k8s_name("d" * 70, 63)) == 63
    valid(home_pvc(SETTINGS, long_a, None))
    valid(user_secret(SETTINGS, long_a, {"K": "v"}))
    # Names that fit keep the name they always had: existing homes are found again.
    assert home_claim_name(SETTINGS, "alice") == "podbay-home-alice"
    assert label_value(long_a) != label_value(long_b) and len(label_value(long_a)) <= 63
    assert label_value("alice") == "alice"


def _selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items())


def _peer_matches(peer: dict, policy_ns: str, end: dict) -> bool:
    import ipaddress

    if "ipBlock" in peer:
        ip = ipaddress.ip_address(end["ip"])
        block = peer["ipBlock"]
        return ip in ipaddress.ip_network(block["cidr"]) and not any(
            ip in ipaddress.ip_network(e) for e in block.get("except") or [])
    if "pod" not in end:
        return False
    if "namespaceSelector" in peer:
        if not _selects(peer["namespaceSelector"], {"kubernetes.io/metadata.name": end["ns"]}):
            return False
    elif end["ns"] != policy_ns:
        return False
    return _selects(peer.get("podSelector") or {}, end["labels"])


def _ports_match(rule: dict, port: tuple[int, str]) -> bool:
    ports = rule.get("ports")
    return not ports or any((p.get("port"), p.get("protocol", "TCP")) == port for p in ports)


def reachable(policies: list[dict], src: dict, dst: dict, port: tuple[int, str] = (443, "TCP")) -> bool:
    """NetworkPolicy's meaning (networking.k8s.io/v1): a connection is allowed when the source
    pod's egress and the destination pod's ingress each are either selected by no policy of
    that direction, or allowed by a rule of one that selects it. Ends are pods ({"pod", "ns",
    "labels", "ip"}) or addresses ({"ip"})."""
    def side(pod: dict, direction: str, other: dict) -> bool:
        if "pod" not in pod:
            return True  # an address outside the cluster has no policy
        mine = [p for p in policies if p["metadata"]["namespace"] == pod["ns"]
                and _selects(p["spec"]["podSelector"], pod["labels"]) and direction in p["spec"]["policyTypes"]]
        if not mine:
            return True
        key, peers = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
        return any(_ports_match(rule, port) and (not rule.get(peers) or any(
            _peer_matches(peer, p["metadata"]["namespace"], other) for peer in rule[peers]))
            for p in mine for rule in p["spec"].get(key) or [])
    return side(src, "Egress", dst) and side(dst, "Ingress", src)


def test_job_pods_reach_their_own_ranks_dns_and_the_internet_and_nothing_of_others(cfg):
    """bob's job must not reach alice's job pods (the rendezvous on 29500, TensorBoard), nor
    the cloud metadata server, nor other namespaces; a multi-node job's ranks reach each other."""
    from podbay.hub.backends.kubernetes.manifests import job_network_policy

    def objects(job_id, user):
        return training_job(cfg, SETTINGS, job_id=job_id, name="j", user=user, team=None, image="x", command=["t"],
                            workdir="/", env={}, volumes=[], gpus_per_node=8, nodes=2, pool="training", queue=None)

    alices, bobs = objects(1, "alice"), objects(2, "bob")
    policies = [job_network_policy(SETTINGS), *(o for o in alices + bobs if o["kind"] == "NetworkPolicy")]
    for p in policies:
        valid(p)
    ns = SETTINGS.namespace

    def rank(objs, index, ip):
        labels = {**objs[0]["spec"]["template"]["metadata"]["labels"], "job-name": objs[0]["metadata"]["name"],
                  "batch.kubernetes.io/job-completion-index": str(index)}
        return {"pod": f"{objs[0]['metadata']['name']}-{index}", "ns": ns, "labels": labels, "ip": ip}

    a0, a1, b0 = rank(alices, 0, "10.1.0.10"), rank(alices, 1, "10.1.0.11"), rank(bobs, 0, "10.1.0.20")
    rendezvous = (29500, "TCP")
    assert reachable(policies, a1, a0, rendezvous) and reachable(policies, a0, a1, rendezvous)
    assert not reachable(policies, b0, a0, rendezvous), "another user's job reaches alice's ranks"
    workspace = {"pod": "jupyter-bob", "ns": ns, "labels": {"component": "singleuser-server"}, "ip": "10.1.0.30"}
    assert not reachable(policies, workspace, a0, (6006, "TCP")), "a workspace reaches a job's TensorBoard"
    assert not reachable(policies, a0, {"ip": "169.254.169.254"}, (80, "TCP")), "the cloud metadata server"
    other = {"pod": "db", "ns": "finance", "labels": {"app": "db"}, "ip": "10.2.0.5"}
    assert not reachable(policies, a0, other, (5432, "TCP"))
    dns = {"pod": "coredns", "ns": "kube-system", "labels": {"k8s-app": "kube-dns"}, "ip": "10.96.0.10"}
    assert reachable(policies, a0, dns, (53, "UDP")) and not reachable(policies, a0, dns, (443, "TCP"))
    # NodeLocal DNSCache and GKE's Cloud DNS answer on link-local addresses.
    for resolver in ("169.254.20.10", "169.254.169.254"):
        assert reachable(policies, a0, {"ip": resolver}, (53, "UDP")), resolver
    assert reachable(policies, a0, {"ip": "151.101.0.223"}, (443, "TCP")), "pip and datasets from the internet"
    mirror = {"ip": "10.20.0.8"}
    assert not reachable(policies, a0, mirror, (443, "TCP"))
    # The site opens what its jobs need inside the network, as the chart's egress does for workspaces.
    opened = SETTINGS.model_copy(update={"job_egress": [{"to": [{"ipBlock": {"cidr": "10.20.0.0/16"}}],
                                                         "ports": [{"port": 443, "protocol": "TCP"}]}]})
    valid(job_network_policy(opened))
    assert reachable([job_network_policy(opened), *policies[1:]], a0, mirror, (443, "TCP"))


def test_job_and_workspace_pods_meet_the_restricted_pod_security_standard(cfg):
    """What the stand-in cluster's admission (the API server's Pod Security `restricted`) checks."""
    from tests.standins.k8s_cluster import pod_security_violations

    (job,) = training_job(cfg, SETTINGS, job_id=3, name="j", user="alice", team=None, image="x", command=["t"],
                          workdir="/", env={}, volumes=["imagenet"], gpus_per_node=1, nodes=1, pool="training",
                          queue=None)
    pod = {"metadata": {"name": "p"}, "spec": job["spec"]["template"]["spec"]}
    assert pod_security_violations(pod) == []
    assert pod["spec"]["automountServiceAccountToken"] is False
    pod["spec"]["containers"][0]["securityContext"] = {}
    assert [v.split(" (")[0] for v in pod_security_violations(pod)] == ["allowPrivilegeEscalation != false",
                                                                       "unrestricted capabilities"]


@pytest.mark.parametrize("text, value", [
    ("2", 2), ("500m", Fraction(1, 2)), ("1.5", Fraction(3, 2)), ("8Gi", 8 * 2**30), ("500M", 500 * 10**6),
    ("1e3", 1000), ("1091738596n", Fraction(1091738596, 10**9)), (".5", Fraction(1, 2)), ("4000m", 4),
])
def test_quantities_are_read_with_the_api_servers_grammar(text, value):
    from podbay.hub.backends.kubernetes.quantity import parse

    assert Fraction(parse(text)) == value


@pytest.mark.parametrize("text", ["8GB", "2 cores", "1.2.3", "Gi", "", "0x10"])
def test_what_is_no_quantity_is_refused(text):
    from podbay.hub.backends.kubernetes.quantity import parse

    with pytest.raises(ValueError, match="not a Kubernetes quantity"):
        parse(text)


def test_settings_keep_quantities_as_written_and_refuse_negative_ones():
    res = KubernetesSettings(resources={"default": {"cpu": "1e1", "memory": "8Gi"}}).resources["default"]
    assert (res.cpu, res.memory) == ("1e1", "8Gi")
    with pytest.raises(ValueError, match="negative"):
        KubernetesSettings(resources={"default": {"cpu": "-1"}})


def test_exa_is_a_suffix_and_a_huge_exponent_an_error():
    from podbay.hub.backends.kubernetes.quantity import parse

    assert parse("1E") == 10**18 and parse("2Ei") == 2 * 2**60 and parse("5E2") == 500
    with pytest.raises(ValueError, match="out of range"):
        parse("1e999999999")
    with pytest.raises(ValueError, match="out of range"):
        KubernetesSettings(resources={"default": {"memory": "1e999999999"}})


def test_log_cursors_read_back_whatever_their_fingerprint():
    """Cursors are opaque to clients but must parse back: a fingerprint of digits only is not
    an offset, an older cursor has none, anything else is refused."""
    from podbay.hub.backends.kubernetes.logs import cursor_of as _cursor, fingerprint as _tail, parse_cursor as _parse_cursor
    from podbay.hub.training import BadCursor

    for data in (b"x" * 100, bytes(range(256)) * 3, b"0123456789" * 30):
        tail = _tail(data, len(data))
        assert tail[0] == "f" and _parse_cursor(_cursor("podbay-job-7-0-abcde", len(data), tail)) == \
            ("podbay-job-7-0-abcde", len(data), tail)
    assert _parse_cursor("podbay-job-7-0-abcde:1234:f0123456789012345") == ("podbay-job-7-0-abcde", 1234, "f0123456789012345")
    assert _parse_cursor("podbay-job-7-0-abcde:16") == ("podbay-job-7-0-abcde", 16, None)
    for bad in ("", "pod", "pod:", ":5", "pod:x", "pod:5:zzz", "a:b:5", "pod:5:0123456789012345"):
        with pytest.raises(BadCursor):
            _parse_cursor(bad)


# --- layouts: what the nodes' GPUs are cut into, and MIG Manager's label -------------------


def test_a_nodes_gpus_and_their_layouts_come_from_gfds_labels(cfg):
    from podbay.hub.advice.replay import GpuLayout
    from podbay.hub.backends.kubernetes.layouts import cluster_layouts

    single = {**SINGLE_H100, "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3-MIG-1g.10gb", "nvidia.com/gpu.count": "14"}
    nodes = [node("h100-a", MIXED_H100, mixed_allocatable(MIXED_H100)),
             node("h100-s", single, {"nvidia.com/gpu": "14"}),
             node("dgx-1", {"nvidia.com/gpu.count": "8", "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
                  {"nvidia.com/gpu": "8"}, pool="training"),
             node("cpu-1", {}, {}, pool="elsewhere")]
    pods = [{**pod("h100-a", {"nvidia.com/mig-1g.10gb": "1"}), "metadata": {"namespace": "ml", "name": "w-alice"}},
            {**pod("h100-a", {"nvidia.com/mig-1g.10gb": "1"}, phase="Succeeded"),
             "metadata": {"namespace": "ml", "name": "done"}}]
    found = {(g.node, g.index): (g, holders) for g, holders in cluster_layouts(cfg, nodes, pods)}
    gpu, holders = found[("h100-a", 0)]
    assert gpu.model == "NVIDIA H100 80GB HBM3" and gpu.family.key == "H100-80GB" and gpu.pool == "dev"
    # The fixture's node: one H100 in all-balanced.
    assert gpu.layout == GpuLayout("mig", mig=("3g.40gb", "2g.20gb", "1g.10gb", "1g.10gb"))
    assert holders == ["pod ml/w-alice"]
    # Single strategy: the profile in the product label, every GPU cut alike.
    assert found[("h100-s", 0)][0].layout == found[("h100-s", 1)][0].layout == GpuLayout("mig", mig=("1g.10gb",) * 7)
    assert [found[("dgx-1", i)][0].layout.mode for i in range(8)] == ["whole"] * 8
    assert not any(n == "cpu-1" for n, _ in found)


def test_labels_that_do_not_say_each_gpus_layout_get_no_advice(cfg):
    from podbay.hub.backends.kubernetes.layouts import cluster_layouts

    # MIG devices time-sliced on top (single strategy, renameByDefault off: …-SHARED).
    shared_mig = {**SINGLE_H100, "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3-MIG-1g.10gb-SHARED",
                  "nvidia.com/gpu.count": "7", "nvidia.com/gpu.replicas": "2"}
    # Mixed, two MIG GPUs in a custom config: which GPU has which slices is dealt out,
    # largest first (a guess at which GPU; the counts are right).
    custom = {**MIXED_H100, "nvidia.com/gpu.count": "2", "nvidia.com/mig.config": "custom-mig",
              "nvidia.com/mig-4g.40gb.count": "1", "nvidia.com/mig-3g.40gb.count": "2",
              "nvidia.com/mig-2g.20gb.count": "1", "nvidia.com/mig-1g.10gb.count": "1"}
    # Whole GPUs time-sliced (renamed): the device plugin's node-wide setting, not MIG Manager's.
    sliced = {**SINGLE_H100, "nvidia.com/gpu.count": "2", "nvidia.com/gpu.replicas": "4"}
    nodes = [node("h100-ts", shared_mig, {"nvidia.com/gpu": "14"}),
             node("h100-sl", sliced, {"nvidia.com/gpu.shared": "8"}),
             node("h100-c", custom, mixed_allocatable(custom))]
    found = {(g.node, g.index): g.layout for g, _ in cluster_layouts(cfg, nodes, [])}
    assert not any(n in ("h100-ts", "h100-sl") for n, _ in found)
    assert sorted(Counter(lay.mig) for (n, _), lay in found.items() if n == "h100-c") == sorted(
        [Counter({"4g.40gb": 1, "3g.40gb": 1}), Counter({"3g.40gb": 1, "2g.20gb": 1, "1g.10gb": 1})])


def test_mig_managers_label_is_set_only_when_allowed_and_nothing_holds_the_gpus():
    from podbay.hub.advice.advise import LayoutNotApplied
    from podbay.hub.backends.kubernetes.layouts import check_apply

    on = KubernetesSettings(apply_mig_layouts=True)
    labels = {**MIXED_H100}
    nodes = [node("h100-a", labels, mixed_allocatable(labels)),
             node("h100-b", {**labels, "nvidia.com/gpu.deploy.mig-manager": "false"}, {})]
    busy = [{**pod("h100-a", {"nvidia.com/mig-1g.10gb": "1"}), "metadata": {"namespace": "ml", "name": "w-alice"}}]
    with pytest.raises(LayoutNotApplied, match="apply_mig_layouts is off.*kubectl label node h100-a "
                                               "nvidia.com/mig.config=all-1g.10gb --overwrite"):
        check_apply(KubernetesSettings(), nodes, [], "h100-a", "all-1g.10gb")
    with pytest.raises(LayoutNotApplied, match="no node h100-z"):
        check_apply(on, nodes, [], "h100-z", "all-1g.10gb")
    with pytest.raises(LayoutNotApplied, match="MIG Manager does not run on h100-b"):
        check_apply(on, nodes, [], "h100-b", "all-1g.10gb")
    with pytest.raises(LayoutNotApplied, match="h100-a runs pod ml/w-alice on its GPUs"):
        check_apply(on, nodes, busy, "h100-a", "all-1g.10gb")
    assert check_apply(on, nodes, [], "h100-a", "all-1g.10gb")["metadata"]["name"] == "h100-a"


def test_patching_nodes_is_granted_only_with_apply_mig_layouts():
    from podbay.hub.backends.kubernetes.manifests import needed_access, rbac

    assert ("patch", "", "nodes", None) not in needed_access(SETTINGS)
    on = SETTINGS.model_copy(update={"apply_mig_layouts": True})
    assert ("patch", "", "nodes", None) in needed_access(on)
    rules = rbac(on)[0]["rules"]
    assert {"apiGroups": [""], "resources": ["nodes"], "verbs": ["patch"]} in rules
    assert not any("patch" in r["verbs"] for r in rbac(SETTINGS)[0]["rules"])
    for obj in rbac(on):
        valid(obj)
