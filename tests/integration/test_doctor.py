"""`podbay doctor` against the stand-in cluster with RBAC on, as the chart's hub ServiceAccount
with what the chart and `podbay k8s manifests` grant it: healthy, it finds nothing to fix;
each fault injected the way it happens on a real cluster (a Role not applied, no default
StorageClass, a node without the GPU operator, Kueue not installed, an exporter without pod
mapping) is reported with its fix. The docker and slurm backends' checks run against the
tests' real Docker engine and Slurm in their own test files' terms here too."""

from __future__ import annotations

import asyncio
import json

import pytest
import yaml

from tests.harness import ROOT
from tests.standins.k8s_emulator import ADMIN, RESOURCES, Rbac, emulated_cluster

NS = "podbay-contract"
pytestmark = pytest.mark.asyncio(loop_scope="function")


def contract(tmp_path, **kubernetes) -> dict:
    data = yaml.safe_load((ROOT / "tests" / "data" / "podbay-contract.yaml").read_text())
    data["kubernetes"].update(kubernetes)
    return data


async def doctor(tmp_path, data: dict, *, kueue: bool = True, drop=lambda obj: False, nodes=(),
                 token: str = "admin") -> list:
    """The kubernetes backend's findings against a stand-in cluster holding the contract's
    nodes and storage, the chart's hub rights and `podbay k8s manifests` (less what `drop`
    says), run by an operator as a cluster admin (`token`), who asks about the hub's rights."""
    import subprocess
    import sys

    from podbay.hub.backends.kubernetes.doctor import diagnose
    from podbay.hub.config import load_config
    from tests.integration.test_helm import render
    from tests.standins.k8s_cluster import CLUSTER_RESOURCES, PLURALS

    path = tmp_path / "podbay.yaml"
    path.write_text(yaml.safe_dump(data))
    chart = render(ROOT / "config" / "helm" / "values.yaml", namespace=NS)
    assert chart.returncode == 0, chart.stderr
    manifests = subprocess.run([sys.executable, "-m", "podbay.hub.cli", "k8s", "manifests", "--config", str(path)],
                               capture_output=True, text=True, check=True).stdout
    objects = [*yaml.safe_load_all((ROOT / "tests" / "data" / "k8s-contract-nodes.yaml").read_text()),
               *[d for d in yaml.safe_load_all(chart.stdout) if d and d["kind"] in ("Role", "RoleBinding")
                 and d["metadata"]["name"] == "hub"],
               *yaml.safe_load_all(manifests), *nodes]
    async with emulated_cluster(CLUSTER_RESOURCES if kueue else RESOURCES) as (url, emu):
        emu.rbac = Rbac({"hub-token": f"system:serviceaccount:{NS}:hub", "admin": ADMIN})
        for obj in objects:
            if obj and obj.get("kind") in PLURALS and not drop(obj):
                if obj["kind"] in ("Role", "RoleBinding"):
                    obj["metadata"].setdefault("namespace", NS)
                key = PLURALS[obj["kind"]]
                if kueue or not key.startswith("kueue."):
                    await emu.add_object(key, obj)
        (tmp_path / "kubeconfig").write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "hub",
            "clusters": [{"name": "c", "cluster": {"server": url}}],
            "contexts": [{"name": "hub", "context": {"cluster": "c", "user": "hub"}}],
            "users": [{"name": "hub", "user": {"token": token}}]}))
        data["kubernetes"]["kubeconfig"] = str(tmp_path / "kubeconfig")
        path.write_text(yaml.safe_dump(data))
        return await diagnose(load_config(path, "kubernetes"))


def failures(findings) -> list[tuple[str, str]]:
    return [(f.what, f.fix) for f in findings if f.level == "fail"]


async def test_a_healthy_cluster_has_nothing_to_fix(kubernetes_installed, tmp_path):
    findings = await doctor(tmp_path, contract(tmp_path))
    assert failures(findings) == [], findings
    said = [f.what for f in findings]
    assert "the API server answers" in said
    assert "every call podbay makes is allowed for system:serviceaccount:podbay-contract:hub (" in " ".join(said), said
    assert "homes use StorageClass shared-files (nfs.csi.k8s.io, Immediate)" in said
    assert "pool dev: 3 nodes" in said and "pool training: 1 nodes" in said
    assert any(s.startswith("Kueue serves its API and podbay's") for s in said), said


async def test_a_role_not_applied_is_named_with_what_podbay_may_not_do(kubernetes_installed, tmp_path):
    findings = await doctor(tmp_path, contract(tmp_path),
                            drop=lambda o: o["kind"] == "Role" and o["metadata"]["name"] == "podbay-job-runner")
    ((what, fix),) = failures(findings)
    # Run by a cluster admin, about the hub's ServiceAccount (the admin may do all of it).
    assert what.startswith("podbay (system:serviceaccount:podbay-contract:hub) may not: ") and \
        "create jobs.batch in podbay-contract" in what, what
    assert "list workloads.kueue.x-k8s.io in podbay-contract" in what
    assert "create pods in" not in what, "the chart's hub Role grants that"
    assert "podbay k8s manifests" in fix
    # As the hub itself (PODBAY_HUB_ACCOUNT unset, but no pod: the hub's token asks about
    # another subject, which it may not): said, not passed.
    own = await doctor(tmp_path, contract(tmp_path), token="hub-token")
    (warned,) = [f for f in own if "may do" in f.what]
    assert warned.level == "warn" and "subjectaccessreviews" in warned.fix


async def test_no_default_storage_class_and_block_storage_for_shared_homes(kubernetes_installed, tmp_path):
    unset = contract(tmp_path, home={"size": "1Gi"})
    findings = await doctor(tmp_path, unset, drop=lambda o: o["kind"] == "StorageClass" and
                            o["metadata"]["name"] == "standard")
    ((what, fix),) = failures(findings)
    assert what.startswith("kubernetes.home.storage_class is unset and the cluster has no default StorageClass")
    assert "storage_class" in fix
    # RWX homes on the default block-storage class: never provisioned.
    block = contract(tmp_path, home={"size": "1Gi", "storage_class": "standard", "access_mode": "ReadWriteMany"})
    ((what, _),) = failures(await doctor(tmp_path, block))
    assert "pd.csi.storage.gke.io is block storage" in what
    # Today's default (RWO on the default class) works, with what it means said.
    rwo = await doctor(tmp_path, contract(tmp_path, home={"size": "1Gi"}))
    assert failures(rwo) == []
    (warned,) = [f.what for f in rwo if f.level == "warn" and "homes are ReadWriteOnce" in f.what]
    assert "a job waits until their workspaces stop" in warned
    missing = await doctor(tmp_path, contract(tmp_path, home={"size": "1Gi", "storage_class": "fast-ssd"}))
    ((what, fix),) = failures(missing)
    assert what.startswith("the homes' StorageClass 'fast-ssd' does not exist") and "shared-files" in fix


async def test_a_node_without_the_gpu_operator_and_a_profile_no_node_offers(kubernetes_installed, tmp_path):
    bare = {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "dev-09", "labels": {"podbay.io/pool": "dev", "kubernetes.io/hostname": "dev-09"}},
            "status": {"allocatable": {"cpu": "64", "memory": "512Gi"},
                       "conditions": [{"type": "Ready", "status": "True"}]}}
    findings = await doctor(tmp_path, contract(tmp_path), nodes=[bare])
    ((what, fix),) = failures(findings)
    assert what == ("pool dev: nodes dev-09 have no GPU Feature Discovery labels (nvidia.com/gpu.present, "
                    "nvidia.com/gpu.product)") and "GPU operator" in fix
    # The training pool's node gone: nothing offers gpu-2 there, and the pool is empty.
    findings = await doctor(tmp_path, contract(tmp_path), drop=lambda o: o["metadata"].get("name") == "train-01")
    said = [w for w, _ in failures(findings)]
    assert "pool training: no node carries its node_selector {'podbay.io/pool': 'training'}" in said, said


async def test_kueue_not_installed(kubernetes_installed, tmp_path):
    findings = await doctor(tmp_path, contract(tmp_path), kueue=False)
    ((what, fix),) = failures(findings)
    assert what.startswith("kubernetes.kueue is true but the cluster serves no Kueue API") and "Kueue" in fix


async def test_the_utilisation_source_must_name_pods_on_kubernetes(tmp_path):
    """An exporter without pod mapping (or its labels dropped on the way): nothing would be
    matched to a workspace, so the idle rules could never act."""
    from podbay.hub.config import load_config
    from podbay.hub.doctor import utilisation
    from tests.standins.dcgm_exporter import Exporter

    async def findings_for(pods):
        exporter = Exporter(["GPU-1"], 50.0, pods=pods)
        try:
            data = contract(tmp_path)
            data["usage"] = {"source": {"type": "dcgm", "urls": [exporter.url]}}
            (tmp_path / "podbay.yaml").write_text(yaml.safe_dump(data))
            return await utilisation(load_config(tmp_path / "podbay.yaml", "kubernetes"), True)
        finally:
            exporter.close()

    unmapped = await findings_for(None)
    ((what, fix),) = failures(unmapped)
    assert what.startswith("no utilisation series names a pod") and "pod mapping" in fix
    mapped = await findings_for({"GPU-1": ("podbay", "jupyter-alice")})
    assert [f.level for f in mapped] == ["ok", "ok"], mapped
