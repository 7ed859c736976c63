"""Pure builders: podbay's config and a request in, Kubernetes objects (plain dicts, as the
API takes them) out. Nothing here talks to a cluster, so every object can be checked against
the Kubernetes schemas in tests, in the spirit of kubespawner's objects.py.

What a GPU profile asks the scheduler for follows how the NVIDIA GPU operator offers the
pool's GPUs (settings.PoolGpus), never a hard-coded resource:

| profile | pool's setup | resources | node selector |
|---|---|---|---|
| cpu | any | none (NVIDIA_VISIBLE_DEVICES=void) | |
| mig-<p> | mig_strategy mixed | nvidia.com/mig-<p>: 1 | |
| mig-<p> | mig_strategy single | nvidia.com/gpu: 1 | nvidia.com/gpu.product=<product>-MIG-<p> |
| shared-1/N | time_slicing, renameByDefault | nvidia.com/gpu.shared: 1 | |
| shared-1/N | time_slicing, not renamed | nvidia.com/gpu: 1 | nvidia.com/gpu.product=<product>-SHARED |
| gpu-N | no time-slicing, or renamed shares | nvidia.com/gpu: N | |
| gpu-N | mig_strategy single, product given | nvidia.com/gpu: N | nvidia.com/gpu.product=<product> |

The device plugin sets CUDA_VISIBLE_DEVICES / NVIDIA_VISIBLE_DEVICES itself for what it
allocates: podbay never does here.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from escapism import escape

from ...config import PodbayConfig, ProfileKind
from .settings import KubernetesSettings, PoolGpus

GPU = "nvidia.com/gpu"
SHARED = "nvidia.com/gpu.shared"
PRODUCT = "nvidia.com/gpu.product"
LABEL = "podbay.io"
KUEUE_QUEUE = "kueue.x-k8s.io/queue-name"
HOME_LABEL = f"{LABEL}/home"
HOSTNAME = "kubernetes.io/hostname"
MASTER_PORT = 29500
_SAFE = set("abcdefghijklmnopqrstuvwxyz0123456789")


class ProfileUnavailable(ValueError):
    """A profile the pool's GPU setup cannot offer; the message says why and what to change."""


@dataclass(frozen=True)
class GpuAsk:
    """What one pod of a profile asks the scheduler for, on one pool."""

    resources: dict[str, int] = field(default_factory=dict)
    node_selector: dict[str, str] = field(default_factory=dict)


def mig_resource(mig_profile: str) -> str:
    return f"nvidia.com/mig-{mig_profile}"


def gpu_ask(spec: ProfileKind, pool_name: str, pool: PoolGpus) -> GpuAsk:
    if spec.kind == "cpu":
        return GpuAsk()
    if spec.kind == "mig":
        if pool.mig_strategy == "mixed":
            return GpuAsk({mig_resource(spec.mig_profile): 1})
        if pool.mig_strategy == "single":
            if not pool.product:
                raise ProfileUnavailable(
                    f"pool {pool_name} uses the single MIG strategy: give kubernetes.pools.{pool_name}.product "
                    "(its nodes' nvidia.com/gpu.product, e.g. NVIDIA-H100-80GB-HBM3) to select MIG nodes by profile")
            return GpuAsk({GPU: 1}, {PRODUCT: f"{pool.product}-MIG-{spec.mig_profile}"})
        raise ProfileUnavailable(f"pool {pool_name} has no MIG (kubernetes.pools.{pool_name}.mig_strategy is none)")
    if spec.kind == "shared":
        ts = pool.time_slicing
        if ts is None:
            raise ProfileUnavailable(f"pool {pool_name} is not time-sliced (kubernetes.pools.{pool_name}.time_slicing)")
        if ts.replicas != spec.replicas:
            raise ProfileUnavailable(f"pool {pool_name} time-slices each GPU into {ts.replicas}, not {spec.replicas}")
        if ts.rename_by_default:
            return GpuAsk({SHARED: 1})
        if not pool.product:
            raise ProfileUnavailable(
                f"pool {pool_name} offers shares as nvidia.com/gpu (renameByDefault false): give "
                f"kubernetes.pools.{pool_name}.product to select the shared nodes (<product>-SHARED)")
        return GpuAsk({GPU: 1}, {PRODUCT: f"{pool.product}-SHARED"})
    if pool.time_slicing is not None and not pool.time_slicing.rename_by_default:
        raise ProfileUnavailable(
            f"pool {pool_name} offers its time-sliced shares as nvidia.com/gpu: a whole GPU cannot be asked for "
            "there (set renameByDefault, time_slicing.rename_by_default: true)")
    if pool.mig_strategy == "single" and pool.product:
        # MIG nodes of the single strategy offer their slices as nvidia.com/gpu too: whole
        # GPUs only on the nodes whose product is the plain model.
        return GpuAsk({GPU: spec.count}, {PRODUCT: pool.product})
    return GpuAsk({GPU: spec.count})


def pool_ask(cfg: PodbayConfig, settings: KubernetesSettings, spec: ProfileKind, pools: list[str]) -> tuple[str, GpuAsk]:
    """The first of a profile's pools that can offer it, with its ask."""
    problems = []
    for name in pools:
        try:
            return name, gpu_ask(spec, name, settings.pool(name))
        except ProfileUnavailable as e:
            problems.append(str(e))
    raise ProfileUnavailable("; ".join(problems) or "the profile names no pool")


def safe_name(text: str) -> str:
    """A DNS-label-safe form of a user or workspace name (kubespawner's escaping)."""
    return escape(text, safe=_SAFE, escape_char="-").lower()


def k8s_name(text: str, limit: int = 253) -> str:
    """A name within `limit` characters that stays unique: one that fits is kept as it is (the
    names of homes and secrets that exist already do not change); a longer one is cut and
    ends in a hash of the whole, so two long names sharing a prefix never become one (and
    never end in '-', which the API server refuses)."""
    if len(text) <= limit and not text.endswith("-"):
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    return f"{text[:limit - len(digest) - 1].rstrip('-.')}-{digest}"


def label_value(text: str) -> str:
    """A label value: 63 characters at most, of [A-Za-z0-9._-], starting and ending alphanumeric."""
    out = "".join(c if c.isalnum() or c in "._-" else "_" for c in text).strip("._-")
    if len(out) > 63:  # two long names sharing a prefix stay two
        digest = hashlib.sha256(text.encode()).hexdigest()[:10]
        out = f"{out[:52].rstrip('._-')}-{digest}"
    return out


def labels(*, user: str, team: str | None, profile: str, units: Fraction | None = None,
           component: str) -> dict[str, str]:
    """What every podbay object carries, so the cluster itself says whose it is (capacity,
    quota and showback read it back)."""
    out = {f"{LABEL}/user": label_value(user), f"{LABEL}/team": label_value(team or ""),
           f"{LABEL}/profile": label_value(profile), f"{LABEL}/component": component,
           "app.kubernetes.io/managed-by": "podbay"}
    if units is not None:
        # 3/7 as "3-7": label values have no "/".
        out[f"{LABEL}/units"] = f"{units.numerator}-{units.denominator}"
    return out


def quantity_dict(resources: dict[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in resources.items() if v is not None}


def home_claim_name(settings: KubernetesSettings, user: str, workspace: str | None = None) -> str:
    name = f"{settings.name_prefix}-home-{safe_name(user)}"
    if settings.home.per_workspace and workspace:
        name += f"--{safe_name(workspace)}"
    return k8s_name(name)


def home_pvc(settings: KubernetesSettings, user: str, team: str | None, workspace: str | None = None) -> dict:
    spec: dict[str, Any] = {"accessModes": [settings.home.access_mode],
                            "resources": {"requests": {"storage": settings.home.size}}}
    if settings.home.storage_class:
        spec["storageClassName"] = settings.home.storage_class
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": home_claim_name(settings, user, workspace), "namespace": settings.namespace,
                         "labels": labels(user=user, team=team, profile="home", component="home")},
            "spec": spec}


HOME = "/home/jovyan"


def home_follows(settings: KubernetesSettings, claim: str) -> tuple[dict[str, str], list[dict]]:
    """The label and the required pod-affinity term of a pod that mounts a person's home.

    A ReadWriteOnce volume is attached to one node at a time: a second pod on another node
    waits in ContainerCreating for ever (the attach-detach controller's Multi-Attach error),
    and the scheduler does not know. So every pod that mounts such a home goes to the node
    of the others that do (their workspaces, their jobs); the first goes anywhere, as the
    scheduler lets a pod that matches its own term when no other does. ReadWriteMany homes
    follow nothing; ReadWriteOncePod the scheduler enforces itself (one pod at all)."""
    if settings.home.access_mode != "ReadWriteOnce":
        return {}, []
    value = label_value(claim)
    return {HOME_LABEL: value}, [{"labelSelector": {"matchLabels": {HOME_LABEL: value}}, "topologyKey": HOSTNAME}]


def volume_mounts(cfg: PodbayConfig, settings: KubernetesSettings, names: list[str], home_claim: str
                  ) -> tuple[list[dict], list[dict]]:
    """(volumes, volumeMounts): the home PVC at /home/jovyan and each catalog volume's PVC at
    ~/<mount path>, read-only where declared, as on every backend."""
    volumes = [{"name": "home", "persistentVolumeClaim": {"claimName": home_claim}}]
    mounts = [{"name": "home", "mountPath": HOME}]
    for name in names:
        vol, claim = cfg.volume(name), settings.claims.get(name)
        if vol is None or not claim:
            continue
        key = k8s_name(f"data-{safe_name(name)}", 63)
        volumes.append({"name": key, "persistentVolumeClaim": {"claimName": claim, "readOnly": vol.read_only}})
        mounts.append({"name": key, "mountPath": f"{HOME}/{vol.target}", "readOnly": vol.read_only})
    return volumes, mounts


def tolerations_of(cfg: PodbayConfig, pool: str) -> list[dict]:
    p = cfg.pools.get(pool)
    return [dict(t) for t in p.tolerations] if p else []


def node_selector_of(cfg: PodbayConfig, pool: str, ask: GpuAsk) -> dict[str, str]:
    p = cfg.pools.get(pool)
    return {**(dict(p.node_selector) if p else {}), **ask.node_selector}


def container_resources(settings: KubernetesSettings, profile_id: str, ask: GpuAsk) -> dict:
    """Requests and limits of the workspace's container: the profile's CPU and memory, and its
    extended GPU resource (which Kubernetes requires as a limit, requests equal to it)."""
    r = settings.resources_of(profile_id)
    requests = quantity_dict({"cpu": r.cpu, "memory": r.memory})
    limits = quantity_dict({"cpu": r.cpu_limit or r.cpu, "memory": r.memory_limit or r.memory})
    for name, count in ask.resources.items():
        requests[name] = limits[name] = str(count)
    out = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def user_secret_name(settings: KubernetesSettings, user: str) -> str:
    return k8s_name(f"{settings.name_prefix}-secrets-{safe_name(user)}")


def user_secret(settings: KubernetesSettings, user: str, values: dict[str, str]) -> dict:
    """A person's secrets as one Secret of podbay's namespace: their workspaces and jobs take
    it as environment (envFrom), so the values are in no pod spec."""
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": user_secret_name(settings, user), "namespace": settings.namespace,
                         "labels": {f"{LABEL}/user": label_value(user), f"{LABEL}/component": "secrets",
                                    "app.kubernetes.io/managed-by": "podbay"}},
            "stringData": dict(values)}


def env_list(env: dict[str, str]) -> list[dict]:
    return [{"name": k, "value": v} for k, v in env.items()]


def job_peer_policy(settings: KubernetesSettings, job_name: str, meta_labels: dict[str, str]) -> dict:
    """A multi-node job's pods reach one another (NCCL, torchrun's rendezvous on MASTER_PORT),
    on top of the namespace's policy for job pods (manifests.job_network_policy), which lets
    nothing in. The Job controller labels each pod with its Job's name."""
    peers = [{"podSelector": {"matchLabels": {"job-name": job_name}}}]
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": job_name, "namespace": settings.namespace, "labels": dict(meta_labels)},
            "spec": {"podSelector": {"matchLabels": {"job-name": job_name}}, "policyTypes": ["Ingress", "Egress"],
                     "ingress": [{"from": peers}], "egress": [{"to": peers}]}}


# What Kubernetes' `restricted` Pod Security Standard asks of every pod and container: podbay's
# images run as jovyan and need no capability.
RESTRICTED_POD = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
RESTRICTED_CONTAINER = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def training_job(cfg: PodbayConfig, settings: KubernetesSettings, *, job_id: int, name: str, user: str,
                 team: str | None, image: str, command: list[str], workdir: str, env: dict[str, str],
                 volumes: list[str], gpus_per_node: int, nodes: int, pool: str, queue: str | None,
                 workspace: str | None = None, secret: str | None = None) -> list[dict]:
    """A training job as a batch/v1 Job (an Indexed Job with a headless Service across
    nodes, so torchrun works unchanged), with the workspace's image, home and volumes."""
    spec = ProfileKind("full", count=gpus_per_node) if gpus_per_node else ProfileKind("cpu")
    ask = gpu_ask(spec, pool, settings.pool(pool))
    job_name = f"{settings.name_prefix}-job-{job_id}"
    meta_labels = {**labels(user=user, team=team, profile=f"gpu-{gpus_per_node}", component="job"),
                   f"{LABEL}/job": str(job_id)}
    kueue_queue = None
    if settings.kueue:
        kueue_queue = queue or f"{settings.name_prefix}-{team or 'no-team'}"
        meta_labels[KUEUE_QUEUE] = kueue_queue
    home_claim = home_claim_name(settings, user, workspace)
    vols, mounts = volume_mounts(cfg, settings, volumes, home_claim)
    home_label, home_terms = home_follows(settings, home_claim)
    container_env = env_list(env)
    if nodes > 1:
        # torchrun's rendezvous: the first pod is the master; the completion index is the rank.
        container_env += env_list({"MASTER_ADDR": f"{job_name}-0.{job_name}", "MASTER_PORT": str(MASTER_PORT),
                                   "WORLD_SIZE": str(nodes), "NNODES": str(nodes)})
        container_env.append({"name": "NODE_RANK", "valueFrom": {"fieldRef": {
            "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}})
    limits = {k: str(v) for k, v in ask.resources.items()}
    container = {"name": "job", "image": image, "command": list(command), "workingDir": workdir,
                 "env": container_env, "volumeMounts": mounts, "securityContext": dict(RESTRICTED_CONTAINER),
                 "resources": {"limits": limits, "requests": dict(limits)} if limits else {}}
    if not ask.resources:
        container["env"] = container_env + env_list({"NVIDIA_VISIBLE_DEVICES": "void"})
    if secret:
        container["envFrom"] = [{"secretRef": {"name": secret}}]
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never", "containers": [container], "volumes": vols,
        "nodeSelector": node_selector_of(cfg, pool, ask), "tolerations": tolerations_of(cfg, pool),
        # jovyan, as in the workspace, so the home's files are the user's own.
        "securityContext": {"runAsUser": 1000, "runAsGroup": 100, "fsGroup": 100, **RESTRICTED_POD},
        # A job has no business with the Kubernetes API.
        "automountServiceAccountToken": False,
    }
    if home_terms:
        pod_spec["affinity"] = {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": home_terms}}
    job_spec: dict[str, Any] = {"backoffLimit": 0, "ttlSecondsAfterFinished": int(settings.job_ttl), "template": {"metadata": {"labels": {**meta_labels, **home_label}},
                                                                "spec": pod_spec}}
    if kueue_queue:
        # Created suspended: Kueue admits it (unsuspends) when its ClusterQueue has room.
        job_spec["suspend"] = True
    objects = []
    if nodes > 1:
        job_spec.update(completionMode="Indexed", completions=nodes, parallelism=nodes)
        pod_spec["subdomain"] = job_name
        objects.append({"apiVersion": "v1", "kind": "Service",
                        "metadata": {"name": job_name, "namespace": settings.namespace, "labels": dict(meta_labels)},
                        "spec": {"clusterIP": "None", "selector": {"job-name": job_name},
                                 "ports": [{"name": "rendezvous", "port": MASTER_PORT}],
                                 # The ranks find each other before they are ready.
                                 "publishNotReadyAddresses": True}})
        objects.append(job_peer_policy(settings, job_name, meta_labels))
    job = {"apiVersion": "batch/v1", "kind": "Job",
           "metadata": {"name": job_name, "namespace": settings.namespace, "labels": meta_labels},
           "spec": job_spec}
    return [job, *objects]
