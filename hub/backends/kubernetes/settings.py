"""The `kubernetes:` section of podbay.yaml.

How the NVIDIA GPU operator offers each pool's GPUs decides what a profile asks the
scheduler for, so it is declared per pool, the way the operator was installed:

    kubernetes:
      namespace: podbay
      pools:
        dev:
          mig_strategy: mixed              # nvidia.com/mig-1g.10gb: 1
          time_slicing: {replicas: 4}      # nvidia.com/gpu.shared: 1 (renameByDefault)
        training:
          mig_strategy: none               # nvidia.com/gpu: N
      resources:
        default: {cpu: 2, memory: 8Gi}
        gpu-1: {cpu: 8, memory: 64Gi, cpu_limit: 16, memory_limit: 96Gi}
      home: {storage_class: standard, size: 20Gi}
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ...usage.settings import Duration
from .quantity import checked

DNS_LABEL = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
# An object's name such as a PersistentVolumeClaim's (RFC 1123 subdomain).
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TimeSlicing(_Model):
    """The device plugin's `sharing.timeSlicing` for this pool's GPUs."""

    # How many shares each GPU is offered as (the device plugin's replicas).
    replicas: int = Field(ge=2, le=64)
    # renameByDefault: shares are advertised as nvidia.com/gpu.shared (the operator's
    # recommended setting); false: as nvidia.com/gpu, on nodes whose product label ends in -SHARED.
    rename_by_default: bool = True


class PoolGpus(_Model):
    """How the GPU operator offers the GPUs of one pool's nodes."""

    # MIG: mixed (one resource per profile), single (every GPU of a node cut alike, offered
    # as nvidia.com/gpu), none (whole GPUs, or time-sliced shares).
    mig_strategy: Literal["none", "single", "mixed"] = "none"
    # GPU Feature Discovery's nvidia.com/gpu.product of the pool's GPUs (NVIDIA-H100-80GB-HBM3):
    # with the single strategy a MIG profile is a node selector on <product>-MIG-<profile>.
    product: str | None = None
    # Time-slicing shares the GPUs the device plugin offers as nvidia.com/gpu, never MIG
    # devices; a pool may have both, on different nodes (the plugin's config is chosen per
    # node, by its nvidia.com/device-plugin.config label).
    time_slicing: TimeSlicing | None = None
    # A cluster autoscaler (or Karpenter) adds this pool's nodes when pods wait, from zero:
    # nothing free now is no refusal (the workspace or job waits while a node joins, which the
    # hub's start_timeout must cover), and no node yet is not "no GPUs".
    autoscaled: bool = False
    # With autoscaled: the GPUs of one node of the pool's node group, the largest job per node
    # while none has joined yet (unset: no job is refused for its size until one has).
    node_gpus: int | None = Field(default=None, ge=1, le=64)


class Resources(_Model):
    """CPU and memory of a workspace: requests, and limits (the requests when not given)."""

    # CPU request (a quantity: 2, 500m).
    cpu: str | None = None
    # Memory request (8Gi).
    memory: str | None = None
    # CPU limit (default: the request).
    cpu_limit: str | None = None
    # Memory limit (default: the request).
    memory_limit: str | None = None

    _q = field_validator("cpu", "memory", "cpu_limit", "memory_limit", mode="before")(
        lambda v: checked(v))


class Home(_Model):
    """Each user's persistent home: a PVC made from a storage class."""

    # The StorageClass of homes (unset: the cluster's default class).
    storage_class: str | None = None
    # Each home's size (a quantity: 50Gi).
    size: str = "10Gi"
    # One home per named workspace instead of one per user.
    per_workspace: bool = False
    # With per_workspace: deleting a workspace (podbay ws rm, the hub's delete button) deletes
    # its own home too. Off by default: a home is never deleted by podbay otherwise, and one
    # shared by all of a person's workspaces never is (KubeSpawner's delete_pvc would).
    delete_with_workspace: bool = False
    # The homes' access mode. ReadWriteOnce (block storage, the clouds' default classes): a
    # person's workspaces and jobs all run on the node where their home is attached (a job
    # waits for their workspaces to stop; none runs across nodes). ReadWriteMany (a
    # file-storage class): anywhere, the training pool and multi-node jobs included.
    access_mode: Literal["ReadWriteOnce", "ReadWriteMany", "ReadWriteOncePod"] = "ReadWriteOnce"

    _q = field_validator("size", mode="before")(lambda v: checked(v))

    @model_validator(mode="after")
    def _only_own_homes_go(self):
        if self.delete_with_workspace and not self.per_workspace:
            raise ValueError("home.delete_with_workspace needs home.per_workspace: true (a home shared by all "
                             "of a person's workspaces is never deleted with one of them)")
        return self


class KubernetesSettings(_Model):
    # The namespace of podbay's pods, Jobs, PVCs and Secrets.
    namespace: str = Field(default="podbay", pattern=DNS_LABEL)
    # How podbay reaches the API server: in a pod, its service account; elsewhere this
    # kubeconfig file (None: KUBECONFIG, else ~/.kube/config).
    kubeconfig: str | None = None
    # Pods, Jobs, Services and PVCs are named <prefix>-…
    name_prefix: str = Field(default="podbay", pattern=DNS_LABEL, max_length=20)
    # How the GPU operator offers each pool's GPUs (MIG strategy, time-slicing).
    pools: dict[str, PoolGpus] = {}
    # Each catalog volume's PersistentVolumeClaim, in this namespace: {volume's name: claim}.
    claims: dict[str, Annotated[str, Field(pattern=DNS_SUBDOMAIN, max_length=253)]] = {}
    # By profile id; `default` for profiles not named.
    resources: dict[str, Resources] = {"default": Resources(cpu="1", memory="4Gi")}
    # Each user's persistent home.
    home: Home = Home()
    # Kueue: jobs carry kueue.x-k8s.io/queue-name of their pool's `queue` (a LocalQueue in
    # this namespace), or of their team's queue `<prefix>-<team>` when the pool names none.
    kueue: bool = False
    # What each team's ClusterQueue admits of CPU and memory (Kueue admits only covered
    # resources); GPUs are the team's job_gpus.
    kueue_cpu: str = "1000"
    # …and of memory.
    kueue_memory: str = "16Ti"
    # Egress rules (NetworkPolicy's own form) that job pods get beyond DNS and addresses
    # outside the cluster: what the site's workspaces get through the chart's
    # singleuser.networkPolicy.egress, e.g. [{to: [{ipBlock: {cidr: 10.20.0.0/16}}], ports: [{port: 443}]}].
    job_egress: list[dict] = []
    # How long a finished job's Job, pods (and so its logs) and Service stay on the cluster
    # (the Job's ttlSecondsAfterFinished; its Service and NetworkPolicy are owned by it and go
    # with it). podbay keeps its record of the job; `podbay job logs` reads nothing after.
    # At least an hour: a Job deleted while podbay's service was down (an upgrade) would be
    # recorded as lost, not as finished.
    job_ttl: Duration = Field(default=7 * 86400.0, ge=3600, le=365 * 86400.0)
    # `podbay advise --apply <node>` sets the node's nvidia.com/mig.config label, which the GPU
    # Operator's MIG Manager acts on (only where no pod holds the node's GPUs). Off by default:
    # it needs the permission to patch every Node (rbac() grants it only then).
    apply_mig_layouts: bool = False

    _q = field_validator("kueue_cpu", "kueue_memory", mode="before")(lambda v: checked(v))

    def pool(self, name: str) -> PoolGpus:
        return self.pools.get(name, PoolGpus())

    def resources_of(self, profile_id: str) -> Resources:
        return self.resources.get(profile_id) or self.resources.get("default") or Resources()
