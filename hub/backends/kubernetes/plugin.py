"""The kubernetes backend's plugin: its podbay.yaml section and rules, no placement (the
device plugin and the kube-scheduler place), capacity from the cluster's own view (kept by
the watches `serve` runs), training jobs as batch/v1 Jobs, and at hub start the quota book
reconciled with the workspace pods that run. It passes the backend contract suite
(tests/integration/test_contract.py) against the stand-in cluster of tests/standins/k8s_cluster.py.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

from ...config import PodbayConfig
from .. import BackendError
from ..base import Backend, HubSide
from .api import KubernetesUnreachable, api_client, own_namespace, read_json
from .capacity import ClusterCapacity
from .objects import ProfileUnavailable, gpu_ask
from .settings import KubernetesSettings
from .watch import TERMINATED, ClusterView, ClusterWatch

log = logging.getLogger("podbay.k8s")


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
            if vol.name not in settings.claims:
                out.append((("volumes", i), "the kubernetes backend mounts a PersistentVolumeClaim: name it in "
                                            f"kubernetes.claims ({vol.name}: <claim>)"))
        for name in settings.claims:
            if cfg.volume(name) is None:
                out.append((("kubernetes", "claims", name), f"no volume named {name!r} under volumes:"))
        home = settings.home
        if home.access_mode == "ReadWriteOncePod" and not home.per_workspace:
            # One pod at all may mount such a volume: a person's second workspace, or any job
            # while a workspace runs, would wait for ever.
            out.append((("kubernetes", "home", "access_mode"),
                        "a ReadWriteOncePod home admits one pod at a time, and every workspace and job of a person "
                        "mounts it: use ReadWriteOnce or ReadWriteMany, or home.per_workspace: true"))
        for name, pool in cfg.pools.items():
            if pool.queue and not settings.kueue:
                out.append((("pools", name, "queue"), "a pool's queue is a Kueue LocalQueue: set kubernetes.kueue: true, "
                                                       "or remove queue"))
        return out

    async def doctor(self, cfg):
        from .doctor import diagnose

        return await diagnose(cfg)

    def capacity(self, cfg, inventory):
        return ClusterCapacity(cfg, cfg.kubernetes, self.view)

    async def serve(self, portal) -> None:
        """Keep the cluster view current for as long as the process serves, and say in the log
        which nodes carry GPU labels the config does not know (they are not counted)."""
        from kubernetes_asyncio import client

        api = await api_client(portal.cfg.kubernetes.kubeconfig)
        try:
            async with api:
                await asyncio.gather(ClusterWatch(self.view, client.CoreV1Api(api)).run(),
                                     self.report_unknown_nodes(portal))
        finally:
            # A view nobody keeps current any more refuses nothing (capacity.shortage).
            self.view.ready.clear()

    async def report_unknown_nodes(self, portal, every: float = 60) -> None:
        capacity = self.capacity(portal.cfg, None)
        said: set[str] = set()
        while True:
            if self.view.ready.is_set():
                for problem in set(await asyncio.to_thread(capacity.unknown)) - said:
                    log.warning("%s", problem)
                    said.add(problem)
            await asyncio.sleep(every if self.view.ready.is_set() else 1)

    def follow_proxies(self, env, found):
        """On a cluster the proxy is a pod of its own, found by its labels
        (PODBAY_TRUSTED_PROXY_PODS: the chart's app=jupyterhub,component in (proxy,autohttps))
        in the hub's namespace."""
        selector = env.get("PODBAY_TRUSTED_PROXY_PODS")
        if not selector:
            return None
        from .api import follow_pod_addresses

        namespace = env.get("POD_NAMESPACE") or own_namespace() or "default"
        return lambda: follow_pod_addresses(selector, namespace, found)

    def layouts(self, portal):
        from .layouts import cluster_layouts

        return cluster_layouts(portal.cfg, *self.view())

    def layout_modes(self, cfg):
        # Time-slicing is the device plugin's config of a whole node (its replicas, renamed or
        # not), not a GPU's layout MIG Manager applies: advice proposes MIG and whole only.
        return frozenset({"whole", "mig"})

    def cannot_apply_layouts(self, portal):
        from .layouts import cannot_apply

        return cannot_apply(portal.cfg.kubernetes, self.view)

    async def apply_layout(self, portal, node, config):
        from .layouts import apply

        return await apply(portal.cfg.kubernetes, self.view, node, config)

    def job_pod_prefix(self, cfg):
        return cfg.kubernetes.name_prefix

    def training(self, portal):
        from .jobs import KubernetesJobs

        settings = portal.cfg.kubernetes
        return KubernetesJobs(portal.cfg, lambda: api_client(settings.kubeconfig))

    def start_hub(self, cfg, portal, hub_port):
        """Release what the quota book holds for workspaces whose pods are gone (a hub that
        was down while they ended). Runs while the hub loads its configuration, on a loop of
        its own in a thread (the hub's loop is already running then)."""
        settings = cfg.kubernetes

        async def running() -> set[tuple[str, str]]:
            from kubernetes_asyncio import client

            try:
                api = await api_client(settings.kubeconfig)
            except KubernetesUnreachable as e:
                raise BackendError(f"refusing to start the kubernetes backend: {e}") from None
            async with api:
                try:
                    pods = await read_json(client.CoreV1Api(api).list_namespaced_pod, settings.namespace,
                                           label_selector="podbay.io/component=workspace", _request_timeout=30)
                except Exception as e:  # noqa: BLE001 - the API server's or the network's words
                    raise BackendError(f"refusing to start the kubernetes backend: the API server does not "
                                       f"answer ({e}); check kubernetes.kubeconfig and the cluster") from None
            alive = set()
            for pod in pods.get("items") or []:
                meta = pod.get("metadata") or {}
                labels, notes = meta.get("labels") or {}, meta.get("annotations") or {}
                if labels.get("podbay.io/component") != "workspace" or meta.get("deletionTimestamp"):
                    continue
                if (pod.get("status") or {}).get("phase") in TERMINATED:
                    continue
                # KubeSpawner's annotations carry the names as they are (labels, escaped).
                alive.add((notes.get("hub.jupyter.org/username", ""), notes.get("hub.jupyter.org/servername", "")))
            return alive

        with ThreadPoolExecutor(1) as pool:
            alive = pool.submit(asyncio.run, running()).result()
        from ...spawner import spawn_may_be_under_way

        def runs(allocation) -> bool:
            user, _, server = allocation.key.removeprefix("workspace:").partition("/")
            return (user, server) in alive or spawn_may_be_under_way(allocation)

        released = portal.book.reconcile(runs, kinds=("workspace",))
        return HubSide("127.0.0.1", released)
