"""The connections podbay needs on a cluster, and those it must not allow, evaluated over the
real policies: what `helm template` renders of the Zero to JupyterHub chart with podbay's
values (config/helm/values.yaml) and what `podbay k8s manifests` and a multi-node job add
(tests/standins/netpol.py: NetworkPolicy's semantics as the API documents them). A values
change that cuts one of these flows, or opens one, fails here and not on a cluster."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from tests.harness import ROOT
from tests.integration.test_helm import VALUES, render
from tests.standins.netpol import Peer, allowed

NS = "podbay"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """The policies and the pods (labels and named ports as the chart, KubeSpawner and podbay
    make them): the hub, the proxy, alice's and bob's workspaces, two ranks of alice's job and
    one of bob's, and addresses outside."""
    from podbay.hub.backends.kubernetes.objects import labels, training_job
    from podbay.hub.config import load_config

    tmp = tmp_path_factory.mktemp("netpol")
    data = yaml.safe_load((ROOT / "tests" / "data" / "podbay-contract.yaml").read_text())
    data["kubernetes"]["namespace"] = NS
    (tmp / "podbay.yaml").write_text(yaml.safe_dump(data))
    chart = render(VALUES, namespace=NS)
    assert chart.returncode == 0, chart.stderr
    made = subprocess.run([sys.executable, "-m", "podbay.hub.cli", "k8s", "manifests", "--config",
                           str(tmp / "podbay.yaml")], capture_output=True, text=True, check=True).stdout
    rendered = [d for d in yaml.safe_load_all(chart.stdout) if d]
    policies = [d for d in [*rendered, *yaml.safe_load_all(made)] if d and d["kind"] == "NetworkPolicy"]
    for p in policies:
        p["metadata"].setdefault("namespace", NS)
    pods = {}
    for dep in (d for d in rendered if d["kind"] == "Deployment" and d["metadata"]["name"] in ("hub", "proxy")):
        template = dep["spec"]["template"]
        ports = {p["name"]: p["containerPort"] for c in template["spec"]["containers"] for p in c.get("ports") or []
                 if "name" in p}
        pods[dep["metadata"]["name"]] = Peer(f"10.1.0.{len(pods) + 2}", template["metadata"]["labels"], NS, ports)
    # A workspace as KubeSpawner makes it under the chart: its common labels, the chart's
    # singleuser.extraLabels (network-access-hub), podbay's own.
    cfg = load_config(tmp / "podbay.yaml", "kubernetes")
    for i, user in enumerate(("alice", "bob")):
        pods[f"ws-{user}"] = Peer(f"10.1.1.{i + 2}", {
            "app": "jupyterhub", "release": "podbay", "component": "singleuser-server",
            "hub.jupyter.org/network-access-hub": "true",
            **labels(user=user, team="vision", profile="cpu", component="workspace")}, NS, {"notebook-port": 8888})
    # Job pods as the Job controller makes them from podbay's Job (its template's labels and job-name).
    for job_id, user, ranks in ((1, "alice", 2), (2, "bob", 1)):
        objects = training_job(cfg, cfg.kubernetes, job_id=job_id, name="j", user=user, team="vision", image="x",
                               command=["torchrun"], workdir="/home/jovyan", env={}, volumes=[], gpus_per_node=1,
                               nodes=ranks, pool="training", queue=None)
        policies += [o for o in objects if o["kind"] == "NetworkPolicy"]
        template = objects[0]["spec"]["template"]["metadata"]["labels"]
        for rank in range(ranks):
            pods[f"job-{user}-{rank}"] = Peer(f"10.1.2.{job_id * 10 + rank}",
                                              {**template, "job-name": objects[0]["metadata"]["name"]}, NS)
    # kube-dns, and a service of the cluster's own whose pods have addresses in 100.64.0.0/10.
    pods["kube-dns"] = Peer("10.96.0.10", {"k8s-app": "kube-dns"}, "kube-system")
    pods["prometheus"] = Peer("100.64.3.4", {"app": "prometheus"}, "monitoring")
    pods["metadata-server"] = Peer("169.254.169.254")
    pods["internet"] = Peer("151.101.0.223")
    return policies, pods


@pytest.mark.parametrize("src, dst, port", [
    ("proxy", "hub", 8081),           # the proxy's API calls and routes to the hub
    ("proxy", "hub", 8083),           # /services/podbay/ to podbay's service in the hub pod
    ("proxy", "ws-alice", 8888),      # a person's browser to their workspace
    ("hub", "proxy", 8001),           # the hub sets the proxy's routes
    ("hub", "ws-alice", 8888),        # the hub's checks of a workspace it started
    ("ws-alice", "hub", 8081),        # a workspace's hub API (JUPYTERHUB_API_URL)
    ("ws-alice", "hub", 8083),        # PODBAY_SERVICE_URL: the notices, `podbay` inside a workspace
    ("job-alice-0", "job-alice-1", 29500),  # torchrun's rendezvous between a job's own ranks
    ("job-alice-1", "job-alice-0", 29500),
    ("job-alice-0", "job-alice-1", 12345),  # NCCL, on ports of its own choosing
    ("job-alice-0", "internet", 443),  # pip, object storage, the model hub
    ("ws-alice", "internet", 443),
    ("ws-alice", "kube-dns", 53),     # names: the hub's Service, the internet
    ("job-alice-0", "kube-dns", 53),  # torchrun's MASTER_ADDR, a rank's name under the job's Service
    ("hub", "hub", 8081),             # a pod cannot block itself, through its Service too
])
def test_the_flows_podbay_needs_are_allowed(cluster, src, dst, port):
    policies, pods = cluster
    protocols = ("UDP", "TCP") if port == 53 else ("TCP",)
    for protocol in protocols:
        assert allowed(policies, pods[src], pods[dst], port, protocol), f"{src} → {dst}:{port}/{protocol} is cut"


@pytest.mark.parametrize("src, dst, port", [
    ("ws-bob", "ws-alice", 8888),     # another person's workspace
    ("job-bob-0", "job-alice-0", 29500),  # another person's job
    ("ws-bob", "job-alice-0", 29500),
    ("job-alice-0", "hub", 8081),     # a job has no business with the hub
    ("job-alice-0", "metadata-server", 80),  # the cloud's credentials
    ("ws-alice", "metadata-server", 80),
    # A service of the cluster's own on pod addresses outside RFC 1918 (EKS custom
    # networking, Calico pools): the chart's own rule would let workspaces reach it.
    ("ws-alice", "prometheus", 9090),
    ("job-alice-0", "prometheus", 9090),
])
def test_what_must_not_connect_does_not(cluster, src, dst, port):
    policies, pods = cluster
    assert not allowed(policies, pods[src], pods[dst], port), f"{src} → {dst}:{port} is open"
