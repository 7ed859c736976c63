"""The kubernetes backend's plugin: its podbay.yaml section and rules, no placement (the
device plugin and the kube-scheduler place), capacity from the cluster's own view.

Not yet an installed `podbay.backends` entry point: it becomes one when it passes the
backend contract suite (tests/integration/test_contract.py) against an emulated API server.
"""

from __future__ import annotations

from ..backends import Backend
from ..config import PodbayConfig
from .capacity import ClusterCapacity
from .objects import ProfileUnavailable, gpu_ask
from .settings import KubernetesSettings
from .watch import ClusterView


class KubernetesBackend(Backend):
    name = "kubernetes"
    spawner = "podbay-kubernetes"
    places_devices = False
    # One per process: the hub's watches feed the view every capacity source reads.
    view = ClusterView()

    @classmethod
    def settings_model(cls):
        return KubernetesSettings

    def describe(self, cfg):
        return f"kubernetes, namespace {cfg.kubernetes.namespace}"

    def check(self, cfg: PodbayConfig) -> list[tuple[tuple, str]]:
        """What the GPU operator's setup of each pool cannot offer, and volumes with no PVC."""
        settings: KubernetesSettings = cfg.kubernetes
        out = []
        for i, prof in enumerate(cfg.profiles):
            problems = []
            for pool in prof.pools:
                try:
                    gpu_ask(prof.spec, pool, settings.pool(pool))
                    break
                except ProfileUnavailable as e:
                    problems.append(str(e))
            else:
                out.append((("profiles", i), f"{prof.id} can never start: " + "; ".join(problems)))
        for name in settings.pools:
            if name not in cfg.pools:
                out.append((("kubernetes", "pools", name), f"pool {name!r} is not declared under pools:"))
        for i, vol in enumerate(cfg.volumes):
            if not vol.pvc:
                out.append((("volumes", i), "the kubernetes backend mounts a PersistentVolumeClaim: give pvc"))
        for name, pool in cfg.pools.items():
            if pool.queue and not settings.kueue:
                out.append((("pools", name, "queue"), "a pool's queue is a Kueue LocalQueue: set kubernetes.kueue: true, "
                                                       "or remove queue"))
        return out

    def capacity(self, cfg, inventory):
        return ClusterCapacity(cfg, cfg.kubernetes, self.view)
