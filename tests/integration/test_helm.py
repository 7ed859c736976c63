"""podbay's values for the Zero to JupyterHub chart 4.4 (config/helm/values.yaml), rendered by
the real helm against the chart (a copy in tests/data/z2jh) for the chart's oldest
Kubernetes and a current one, every document validated strictly against the oldest and
newest schemas podbay supports; what podbay relies on is in the output; the chart's schema
refuses a misspelt key; what `podbay k8s manifests` prints is valid too."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.harness import ROOT, require
from tests.unit.test_k8s import valid  # strict, for the oldest and newest versions podbay supports

CHART = ROOT / "tests" / "data" / "z2jh" / "jupyterhub"
VALUES = ROOT / "config" / "helm" / "values.yaml"


def helm() -> str:
    found = shutil.which("helm", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    require(found is not None, "helm is not installed (the README's test command fetches it)")
    return found


def render(*values: Path, kube: str = "1.33.0", namespace: str = "podbay") -> subprocess.CompletedProcess:
    args = [helm(), "template", "podbay", str(CHART), "--namespace", namespace, "--kube-version", kube]
    for v in values:
        args += ["-f", str(v)]
    return subprocess.run(args, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("kube", ["1.28.0", "1.33.0"])
def test_the_values_render_with_the_chart_into_valid_objects(kube):
    out = render(VALUES, kube=kube)
    assert out.returncode == 0, out.stderr
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    assert len(docs) > 15
    for doc in docs:
        valid(doc)
    by = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    hub = by["Deployment", "hub"]["spec"]["template"]["spec"]
    (container,) = hub["containers"]
    assert container["image"] == "podbay/hub-k8s:2026.11"
    assert {"name": "podbay-config", "mountPath": "/etc/podbay", "readOnly": True} in container["volumeMounts"]
    assert any(v.get("configMap", {}).get("name") == "podbay-config" for v in hub["volumes"])
    assert {"name": "podbay", "port": 8083, "targetPort": 8083, "protocol": "TCP"} in by["Service", "hub"]["spec"]["ports"]
    # The hub's configuration as the chart hands it to jupyterhub_config.py.
    secret = by["Secret", "hub"]["data"]
    values = yaml.safe_load(base64.b64decode(secret["values.yaml"]))
    assert values["hub"]["config"]["JupyterHub"]["spawner_class"] == "podbay-kubernetes"
    assert "configure_on_cluster(c)" in values["hub"]["extraConfig"]["00-podbay"]
    service = values["hub"]["services"]["podbay"]
    assert service["url"] == values["hub"]["config"]["PodbaySpawnerMixin"]["service_url"] == "http://hub:8083"
    assert service["environment"]["PODBAY_DB_URL"] == values["hub"]["config"]["PodbaySpawnerMixin"]["db_url"]
    assert "hub.services.podbay.apiToken" in secret, "the chart makes the service's token"
    # The service believes X-Forwarded-For from the chart's proxy pods, found by their labels
    # (as the API server reads the selector), and from no workspace's.
    from tests.standins.k8s_emulator import selector_matches

    selector = service["environment"]["PODBAY_TRUSTED_PROXY_PODS"]
    assert selector_matches(selector, by["Deployment", "proxy"]["spec"]["template"]["metadata"]["labels"].get)
    assert selector_matches(selector, {"app": "jupyterhub", "component": "autohttps"}.get)
    assert not selector_matches(selector, {"app": "jupyterhub", "component": "singleuser-server"}.get)
    # Workspaces and the proxy may reach podbay's service port.
    ingress = by["NetworkPolicy", "hub"]["spec"]["ingress"]
    assert any({"port": 8083, "protocol": "TCP"} in rule.get("ports", []) for rule in ingress)


def test_the_charts_schema_refuses_a_misspelt_key():
    out = render(VALUES, ROOT / "tests" / "data" / "helm-bad-values.yaml")
    assert out.returncode != 0
    assert "additional properties 'imagee' not allowed" in out.stderr, out.stderr


def test_the_values_settings_are_the_spawners_own():
    """hub.config's PodbaySpawnerMixin keys are traits the spawner has (the chart's schema
    passes anything under hub.config through, so a misspelt one would go unnoticed)."""
    from traitlets.config import Config

    from podbay.hub.hubconfig import Podbay
    from podbay.hub.spawner import PodbaySpawnerMixin

    values = yaml.safe_load(VALUES.read_text())
    settings = values["hub"]["config"]["PodbaySpawnerMixin"]
    assert set(settings) <= set(PodbaySpawnerMixin.class_trait_names(config=True)), settings
    assert not set(values["hub"]["config"]) - {"JupyterHub", "PodbaySpawnerMixin", "Spawner", Podbay.__name__}
    from jupyterhub.app import JupyterHub
    from jupyterhub.spawner import Spawner

    for cls in (JupyterHub, Spawner):
        keys = set(values["hub"]["config"].get(cls.__name__, {}))
        assert keys <= set(cls.class_trait_names(config=True)), keys - set(cls.class_trait_names(config=True))
    mixin = PodbaySpawnerMixin(config=Config(values["hub"]["config"]))
    assert (mixin.config_file, mixin.podbay_backend) == ("/etc/podbay/podbay.yaml", "kubernetes")


def test_podbay_k8s_manifests_prints_valid_objects():
    out = subprocess.run([sys.executable, "-m", "podbay.hub.cli", "k8s", "manifests", "--config",
                          str(ROOT / "tests" / "data" / "podbay-contract.yaml")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    kinds = [d["kind"] for d in docs]
    assert kinds.count("ClusterQueue") == kinds.count("LocalQueue") == 3  # vision, nlp, and no team
    assert {"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "ConfigMap", "ResourceFlavor"} <= set(kinds)
    for doc in docs:
        if doc["apiVersion"].startswith("kueue.x-k8s.io/"):
            # No schema for Kueue's CRDs here: their standard parts are checked as a ConfigMap's would be.
            valid({"apiVersion": "v1", "kind": "ConfigMap", "metadata": doc["metadata"]})
        else:
            valid(doc)


def test_podbay_k8s_values_pre_pull_the_catalog_on_the_gpu_nodes(tmp_path):
    """`podbay k8s values` after podbay's values: the chart's continuous pre-puller pulls every
    catalog image (the contract's and an NGC one) and tolerates the GPU pools' taints."""
    data = yaml.safe_load((ROOT / "tests" / "data" / "podbay-contract.yaml").read_text())
    data["images"].append({"name": "pytorch", "display_name": "PyTorch", "image": "nvcr.io/nvidia/pytorch:25.01-py3"})
    data["pools"]["training"]["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    (tmp_path / "podbay.yaml").write_text(yaml.safe_dump(data))
    out = subprocess.run([sys.executable, "-m", "podbay.hub.cli", "k8s", "values", "--config",
                          str(tmp_path / "podbay.yaml")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    (tmp_path / "prepull.yaml").write_text(out.stdout)
    rendered = render(VALUES, tmp_path / "prepull.yaml")
    assert rendered.returncode == 0, rendered.stderr
    (puller,) = [d for d in yaml.safe_load_all(rendered.stdout)
                 if d and d["kind"] == "DaemonSet" and d["metadata"]["name"] == "continuous-image-puller"]
    valid(puller)
    pulled = {c["image"] for c in puller["spec"]["template"]["spec"]["initContainers"]}
    assert {"nvcr.io/nvidia/pytorch:25.01-py3", "podbay/base:2026.11"} <= pulled, pulled
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in \
        puller["spec"]["template"]["spec"]["tolerations"]
