"""What the Zero to JupyterHub chart lacks for podbay, built from podbay.yaml: the hub's
rights to read Nodes (capacity) and to run Jobs, the NetworkPolicy of training-job pods, Kueue's queues (one ClusterQueue per team,
its job-GPU quota as nominalQuota of one flavor, all in one cohort so idle quota can be
borrowed; a LocalQueue per team in podbay's namespace), and the device plugin's
time-slicing config for the pools that share GPUs."""

from __future__ import annotations

import yaml

from ...config import PodbayConfig
from .objects import GPU, LABEL
from .settings import KubernetesSettings

KUEUE = "kueue.x-k8s.io/v1beta1"


def _meta(name: str, namespace: str | None = None) -> dict:
    meta = {"name": name, "labels": {"app.kubernetes.io/managed-by": "podbay"}}
    if namespace:
        meta["namespace"] = namespace
    return meta


def needed_access(settings: KubernetesSettings) -> list[tuple[str, str, str, str | None]]:
    """Every call podbay's hub and service make to the API server, as (verb, API group,
    resource[/subresource], namespace or None for the whole cluster). `podbay doctor` asks the
    API server about each (SelfSubjectAccessReview); the chart's hub Role and rbac() grant
    them (tested against the stand-in cluster's RBAC)."""
    ns = settings.namespace
    calls = [
        # Capacity: every node, and every namespace's pods (their requests take the same GPUs).
        *[(verb, "", res, None) for res in ("nodes", "pods") for verb in ("list", "watch")],
        # Workspaces (KubeSpawner: its pods, their events, the homes), the hub's reconcile at start.
        *[(verb, "", "pods", ns) for verb in ("get", "list", "watch", "create", "delete")],
        ("get", "", "pods/log", ns),
        *[(verb, "", "events", ns) for verb in ("list", "watch")],
        *[(verb, "", "persistentvolumeclaims", ns) for verb in ("get", "list", "create", "delete")],
        # People's secrets, one Secret each (created, replaced whole, deleted).
        *[(verb, "", "secrets", ns) for verb in ("get", "create", "update", "delete")],
        # Training jobs: the Job, and across nodes its headless Service and own NetworkPolicy.
        *[(verb, "batch", "jobs", ns) for verb in ("get", "list", "create", "delete")],
        *[(verb, "", "services", ns) for verb in ("create", "delete", "patch")],
        *[(verb, "networking.k8s.io", "networkpolicies", ns) for verb in ("create", "delete", "patch")],
    ]
    if settings.kueue:
        calls += [("list", "kueue.x-k8s.io", "workloads", ns), ("list", "kueue.x-k8s.io", "localqueues", ns)]
    # `podbay doctor` from the hub's pod.
    calls.append(("list", "storage.k8s.io", "storageclasses", None))
    if settings.apply_mig_layouts:
        # `podbay advise --apply`: MIG Manager's label on a node.
        calls.append(("patch", "", "nodes", None))
    return calls


def rbac(settings: KubernetesSettings, hub_account: str = "hub", hub_namespace: str | None = None) -> list[dict]:
    """The chart's hub Role covers pods, PVCs, secrets, services and events of its namespace:
    capacity needs Nodes and every namespace's pods (their requests use the same GPUs), and
    training jobs need batch/jobs in podbay's namespace."""
    prefix, ns = settings.name_prefix, settings.namespace
    subject = [{"kind": "ServiceAccount", "name": hub_account, "namespace": hub_namespace or ns}]
    reader = f"{prefix}-capacity-reader"
    runner = f"{prefix}-job-runner"
    return [
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": _meta(reader),
         "rules": [{"apiGroups": [""], "resources": ["nodes", "pods"], "verbs": ["get", "list", "watch"]},
                   # `podbay doctor` in the hub's pod: how homes are provisioned.
                   {"apiGroups": ["storage.k8s.io"], "resources": ["storageclasses"], "verbs": ["get", "list"]},
                   # `podbay advise --apply` (apply_mig_layouts): MIG Manager's label on a node.
                   *([{"apiGroups": [""], "resources": ["nodes"], "verbs": ["patch"]}]
                     if settings.apply_mig_layouts else [])]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": _meta(reader),
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": reader},
         "subjects": subject},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": _meta(runner, ns),
         "rules": [
             {"apiGroups": ["batch"], "resources": ["jobs"],
              "verbs": ["get", "list", "watch", "create", "delete"]},
             {"apiGroups": [""], "resources": ["pods", "pods/log", "services", "persistentvolumeclaims", "events"],
              "verbs": ["get", "list", "watch", "create", "delete"]},
             # A multi-node job's Service and policy are made first, then owned by its Job.
             {"apiGroups": [""], "resources": ["services"], "verbs": ["patch"]},
             # People's secrets, one Secret each, which their workspaces and jobs take as environment.
             {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "create", "update", "delete"]},
             {"apiGroups": ["kueue.x-k8s.io"], "resources": ["workloads", "localqueues"],
              "verbs": ["get", "list", "watch"]},
             # A multi-node job's own policy: its pods reach one another (NCCL, the rendezvous).
             {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"],
              "verbs": ["get", "create", "delete", "patch"]},
         ]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": _meta(runner, ns),
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": runner},
         "subjects": subject},
    ]


def kueue(cfg: PodbayConfig, settings: KubernetesSettings) -> list[dict]:
    """One ResourceFlavor, a ClusterQueue per team with its job GPUs as nominalQuota, in one
    cohort (idle quota is borrowed), and a LocalQueue per team in podbay's namespace.

    One flavor, not one per pool: a team's job_gpus is what its jobs hold at once in all
    pools together, and Kueue counts quota per flavor (a flavor per pool would give a team
    job_gpus in each). The flavor has no node labels: each job carries its pool's node
    selector and tolerations itself. Jobs ask for whole GPUs only; CPU and memory are
    covered too (Kueue admits only what a queue covers), without a team limit."""
    prefix = settings.name_prefix
    flavor = f"{prefix}-gpus"
    objects: list[dict] = [{"apiVersion": KUEUE, "kind": "ResourceFlavor", "metadata": _meta(flavor), "spec": {}}]
    for team_name, team in [*cfg.teams.items(), ("no-team", None)]:
        quota = team.quota if team else cfg.default_quota
        queue = f"{prefix}-{team_name}"
        objects.append({"apiVersion": KUEUE, "kind": "ClusterQueue", "metadata": _meta(queue), "spec": {
            "cohort": prefix,
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": settings.namespace}},
            "queueingStrategy": "BestEffortFIFO",
            "resourceGroups": [{"coveredResources": ["cpu", "memory", GPU], "flavors": [
                {"name": flavor, "resources": [
                    {"name": "cpu", "nominalQuota": settings.kueue_cpu},
                    {"name": "memory", "nominalQuota": settings.kueue_memory},
                    {"name": GPU, "nominalQuota": quota.job_gpus}]}]}],
        }})
        objects.append({"apiVersion": KUEUE, "kind": "LocalQueue", "metadata": _meta(queue, settings.namespace),
                        "spec": {"clusterQueue": queue}})
    return objects


def time_slicing(cfg: PodbayConfig, settings: KubernetesSettings, namespace: str = "gpu-operator") -> list[dict]:
    """The device plugin's config, one key per time-sliced pool (the GPU operator's
    `devicePlugin.config.name` points at this ConfigMap; label a pool's nodes with
    nvidia.com/device-plugin.config=<pool>)."""
    data = {}
    for pool in cfg.pools:
        ts = settings.pool(pool).time_slicing
        if ts is None:
            continue
        data[pool] = yaml.safe_dump({"version": "v1", "sharing": {"timeSlicing": {
            "renameByDefault": ts.rename_by_default, "failRequestsGreaterThanOne": True,
            "resources": [{"name": GPU, "replicas": ts.replicas}]}}}, sort_keys=False)
    if not data:
        return []
    return [{"apiVersion": "v1", "kind": "ConfigMap",
             "metadata": _meta(f"{settings.name_prefix}-time-slicing", namespace), "data": data}]


# What a pod may reach beyond the cluster: every address but the private ranges (other pods,
# nodes, Services), link-local (the cloud metadata server at 169.254.169.254, which hands out
# the node's credentials) and the carrier-grade NAT range some clusters use for pods.
NOT_THE_CLUSTER = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16", "100.64.0.0/10"]
DNS = [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]


def job_network_policy(settings: KubernetesSettings) -> dict:
    """Training-job pods are in no policy of the chart (it selects singleuser-server pods): this
    one lets nothing in, and lets them reach DNS (on any address: kube-dns, NodeLocal
    DNSCache at 169.254.20.10, GKE's Cloud DNS at 169.254.169.254) and addresses outside the
    cluster, as the chart's singleuser policy does for workspaces, plus the site's own
    `kubernetes.job_egress` rules (a pip mirror, object storage, MLflow inside the network).
    A multi-node job adds its own (objects.job_peer_policy): its pods reach one another,
    nobody else's."""
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": _meta(f"{settings.name_prefix}-jobs", settings.namespace),
            "spec": {"podSelector": {"matchLabels": {f"{LABEL}/component": "job"}},
                     "policyTypes": ["Ingress", "Egress"],
                     "ingress": [],
                     "egress": [
                         {"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": NOT_THE_CLUSTER}}]},
                         {"ports": DNS},
                         *(dict(rule) for rule in settings.job_egress),
                     ]}}


def manifests(cfg: PodbayConfig, settings: KubernetesSettings, hub_account: str = "hub",
              hub_namespace: str | None = None) -> list[dict]:
    out = rbac(settings, hub_account, hub_namespace) + time_slicing(cfg, settings) + [job_network_policy(settings)]
    if settings.kueue:
        out += kueue(cfg, settings)
    return out


def image_ref(image: str) -> tuple[str, str] | None:
    """(name, tag) of an image reference, as the chart's extraImages take it; None for a
    digest, which they cannot name."""
    if "@" in image:
        return None
    repo, _, last = image.rpartition("/")
    name, sep, tag = last.partition(":")
    return (f"{repo}/{name}" if repo else name), (tag if sep else "latest")


def prepuller_values(cfg: PodbayConfig) -> dict:
    """The Zero to JupyterHub chart's pre-puller for the catalog: a DaemonSet that pulls every
    catalog image on the user nodes before anyone asks (an NGC image is 15-20 GB: pulled at
    a first start, it looks like a hung start), tolerating the pools' GPU taints."""
    images = {}
    for image in cfg.images:
        ref = image_ref(image.image)
        if ref:
            images[f"podbay-{image.name}"] = {"name": ref[0], "tag": ref[1]}
    tolerations = []
    for pool in cfg.pools.values():
        for t in pool.tolerations:
            if dict(t) not in tolerations:
                tolerations.append(dict(t))
    return {"prePuller": {"continuous": {"enabled": True}, "extraImages": images, "extraTolerations": tolerations}}
