"""Workspaces as pods: the podbay mixin over KubeSpawner.

The validated request becomes KubeSpawner's settings just before it starts the pod, from
the pure builders in k8s/objects.py: the profile's extended GPU resource (and node
selector) as the pool's GPU-operator setup offers it, the pool's node selector and
tolerations, CPU and memory per profile, the home PVC (made by KubeSpawner from podbay's
storage class) and the catalog volumes' PVCs at ~/data/<name>, and labels that say whose
pod it is. The device plugin picks the devices and sets CUDA_VISIBLE_DEVICES: podbay never
does here (the backend has no placement, so the mixin's environment carries none).
"""

from __future__ import annotations

from kubespawner import KubeSpawner
from traitlets import default

from ..k8s.objects import (
    HOME,
    bytes_of,
    cores,
    container_resources,
    home_claim_name,
    labels,
    node_selector_of,
    pool_ask,
    tolerations_of,
    volume_mounts,
)
from ..portal import Request
from .mixin import PodbaySpawnerMixin


class PodbayKubeSpawner(PodbaySpawnerMixin, KubeSpawner):
    @default("podbay_backend")
    def _default_podbay_backend(self):
        return "kubernetes"

    # jovyan, as in every podbay image: the home's files are the user's own.
    @default("uid")
    def _default_uid(self):
        return 1000

    @default("fs_gid")
    def _default_fs_gid(self):
        return 100

    @property
    def k8s_settings(self):
        return self.portal.cfg.kubernetes

    def podbay_prepare(self, request: Request) -> None:
        cfg, settings = self.portal.cfg, self.k8s_settings
        spec = request.profile.spec
        pool, ask = pool_ask(cfg, settings, spec, request.pools)
        self.image = request.image.image
        self.namespace = settings.namespace
        resources = container_resources(settings, request.profile.id, ask)
        requests, limits = resources.get("requests", {}), resources.get("limits", {})
        # KubeSpawner takes cores and bytes, and writes them back as quantities.
        self.cpu_guarantee, self.cpu_limit = cores(requests.get("cpu")), cores(limits.get("cpu"))
        self.mem_guarantee, self.mem_limit = bytes_of(requests.get("memory")), bytes_of(limits.get("memory"))
        self.extra_resource_limits = {k: str(v) for k, v in ask.resources.items()}
        self.extra_resource_guarantees = dict(self.extra_resource_limits)
        self.node_selector = node_selector_of(cfg, pool, ask)
        self.tolerations = tolerations_of(cfg, pool)
        claim = home_claim_name(settings, self.user.name, self.name)
        # KubeSpawner makes the home PVC the first time, from podbay's storage class.
        self.storage_pvc_ensure = True
        self.pvc_name = claim
        self.storage_capacity = settings.home.size
        self.storage_class = settings.home.storage_class or ""
        self.storage_access_modes = [settings.home.access_mode]
        volumes, mounts = volume_mounts(cfg, settings, [v.name for v in request.volumes], claim)
        self.volumes, self.volume_mounts = volumes, mounts
        self.notebook_dir = HOME
        self.extra_labels = labels(user=self.user.name, team=request.team, profile=request.profile.id,
                                   units=self.portal.profile_units(request.profile), component="workspace")
        if not ask.resources:
            # NGC images ask for every GPU in their own environment: a CPU workspace sees none.
            self.environment = {**self.environment, "NVIDIA_VISIBLE_DEVICES": "void"}
