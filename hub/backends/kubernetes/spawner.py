"""Workspaces as pods: the podbay mixin over KubeSpawner.

The validated request becomes KubeSpawner's settings just before it starts the pod, from
the pure builders in objects.py: the profile's extended GPU resource (and node
selector) as the pool's GPU-operator setup offers it, the pool's node selector and
tolerations, CPU and memory per profile, the home PVC (made by KubeSpawner from podbay's
storage class) and the catalog volumes' PVCs at ~/data/<name>, and labels that say whose
pod it is. The device plugin picks the devices and sets CUDA_VISIBLE_DEVICES: podbay never
does here (the backend has no placement, so the mixin's environment carries none).
"""

from __future__ import annotations

import asyncio
import copy
import time
from urllib.parse import urlparse

from jupyterhub.spawner import SpawnException
from kubespawner import KubeSpawner
from traitlets import Float, default

from ...portal import Request
from ...secrets import SecretsUnavailable
from ...spawner import PodbaySpawnerMixin
from .api import sync_user_secret
from .quantity import bytes_of, cores
from .objects import (
    HOME,
    HOME_LABEL,
    RESTRICTED_CONTAINER,
    RESTRICTED_POD,
    container_resources,
    home_claim_name,
    home_follows,
    labels,
    node_selector_of,
    pool_ask,
    tolerations_of,
    volume_mounts,
)

# Waiting reasons after which a container will not start without someone changing something.
NEVER_STARTS = {"ImagePullBackOff", "ErrImageNeverPull", "InvalidImageName", "CreateContainerConfigError",
                "CreateContainerError", "CrashLoopBackOff", "RunContainerError"}


def why_not_starting(pod: dict | None, unschedulable_for: float, grace: float,
                     autoscaled: bool = False) -> tuple[str, int] | None:
    """What the user should read, and the status, when a workspace pod will not start: its
    container ended or cannot start, or for `grace` seconds no node has had the GPU it asks
    for (unless the pool is `autoscaled`: a node is being added), or its home or volume cannot
    be where the GPU is. Other reasons the scheduler waits (a volume being bound, a
    preemption under way) are left to the start timeout."""
    if pod is None:
        return None
    status = pod.get("status") or {}
    for cs in status.get("containerStatuses") or []:
        state = cs.get("state") or {}
        if "terminated" in state:
            t = state["terminated"]
            return (f"The workspace exited with status {t.get('exitCode')} while starting"
                    f"{' (' + t['reason'] + ')' if t.get('reason') else ''}.", 500)
        waiting = state.get("waiting") or {}
        last = (cs.get("lastState") or {}).get("terminated")
        if waiting.get("reason") == "CrashLoopBackOff" and last:
            # The kubelet restarts it (restartPolicy OnFailure): the exit is in the last state.
            return (f"The workspace exited with status {last.get('exitCode')} while starting "
                    f"(restarted {cs.get('restartCount', 0)} times).", 500)
        if waiting.get("reason") in NEVER_STARTS:
            return f"The workspace's container cannot start: {waiting['reason']}: {waiting.get('message', '')}", 500
    if status.get("phase") == "Failed":
        return f"The workspace's pod failed: {status.get('reason', '')} {status.get('message', '')}".strip(), 500
    if status.get("nominatedNodeName"):
        return None  # the scheduler is making room by preemption
    for cond in status.get("conditions") or []:
        if (cond.get("type"), cond.get("status"), cond.get("reason")) == ("PodScheduled", "False", "Unschedulable"):
            message = cond.get("message") or ""
            home = HOME_LABEL in ((pod.get("metadata") or {}).get("labels") or {})
            if home and "didn't match pod affinity rules" in message and unschedulable_for >= grace:
                return ("Your home is attached to one node at a time (ReadWriteOnce), and your other workspaces or "
                        "jobs use it on a node that has no room for this one: stop them, or choose what that "
                        f"node has free. The scheduler: {message}", 503)
            if "volume node affinity conflict" in message and unschedulable_for >= grace:
                return ("A volume of this workspace (its home or a data volume) is in another zone than the nodes "
                        "with this GPU free; tell the platform team (homes need a class with volumeBindingMode "
                        f"WaitForFirstConsumer, or a regional one). The scheduler: {message}", 503)
            if "Insufficient nvidia.com/" in message and unschedulable_for >= grace and not autoscaled:
                return f"No capacity: the cluster has no node for this workspace now: {message}", 503
    return None


class PodbayKubeSpawner(PodbaySpawnerMixin, KubeSpawner):
    unschedulable_grace = Float(
        10, config=True,
        help="Seconds a workspace pod may stay unschedulable because no node has its GPU free (the "
             "scheduler's 'Insufficient nvidia.com/…') before its start fails with the scheduler's words, "
             "instead of waiting for start_timeout. With a cluster autoscaler that adds GPU nodes, make it "
             "longer than a node takes to join.")

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

    # Kubernetes' `restricted` Pod Security Standard (podbay's images need nothing more): a
    # deployment whose image needs root or a capability configures these itself.
    @default("pod_security_context")
    def _default_pod_security_context(self):
        return dict(RESTRICTED_POD)

    @default("container_security_context")
    def _default_container_security_context(self):
        return dict(RESTRICTED_CONTAINER)

    def podbay_claim_ref(self) -> dict:
        # DCGM's exporter labels a pod's GPU series with namespace and pod.
        return {"pod": f"{self.namespace}/{self.pod_name}"}

    async def load_user_options(self):
        """podbay's options (profile, image, volumes) were validated and applied in
        podbay_prepare; KubeSpawner's profile_list is not used, and its own reading of a
        `profile` option would refuse podbay's profile ids."""

    async def _start(self):
        """KubeSpawner's start, watched: a pod whose container ended or cannot start, or that no
        node can take, fails the start at once with the kubelet's or the scheduler's words
        (KubeSpawner alone waits for start_timeout), and is deleted. A pod is Running as soon as
        its container started (no readiness probe): the start returns once the server in it
        listens, as on the other backends."""
        await self._hand_over_secrets()
        await self._start_watching_pods()
        ref_key = f"{self.namespace}/{self.pod_name}"
        # A pool whose nodes an autoscaler adds: waiting for a GPU is waiting for a node.
        autoscaled = any(self.k8s_settings.pool(p).autoscaled for p in (self.podbay_request.pools
                                                                         if self.podbay_request else []))
        old = (self.pod_reflector.pods.get(ref_key) or {}).get("metadata", {}).get("uid")
        unschedulable_since: float | None = None

        def trouble() -> tuple[str, int] | None:
            nonlocal unschedulable_since
            pod = self.pod_reflector.pods.get(ref_key)
            if pod is None or pod["metadata"].get("uid") == old:
                return None  # not made yet, or the previous pod, which KubeSpawner deletes first
            conditions = (pod.get("status") or {}).get("conditions") or []
            if not any(c.get("reason") == "Unschedulable" for c in conditions):
                unschedulable_since = None
            elif unschedulable_since is None:
                unschedulable_since = time.monotonic()
            waited = time.monotonic() - unschedulable_since if unschedulable_since is not None else 0.0
            return why_not_starting(pod, waited, self.unschedulable_grace, autoscaled)

        async def delete():
            # The pod goes; if deleting it fails, the user still reads why it did not start.
            try:
                await KubeSpawner.stop(self, now=True)
            except Exception:  # noqa: BLE001
                self.log.exception("%s: could not delete the pod that did not start", self.podbay_key)

        async def fail(message: str, status: int):
            await delete()
            raise SpawnException(message, reason="exited" if status == 500 else "capacity", status_code=status)

        starting = asyncio.ensure_future(super()._start())
        try:
            while True:
                done, _ = await asyncio.wait([starting], timeout=self.ready_poll_interval)
                if done:
                    url = starting.result()
                    break
                why = trouble()
                if why is not None:
                    starting.cancel()
                    await asyncio.gather(starting, return_exceptions=True)
                    message, status = why
                    await fail(message + (await self._log_tail() if status == 500 else ""), status)
        finally:
            # Cancelled from outside (the hub's start timeout): KubeSpawner's start must not go
            # on and make a pod after the claim was released.
            if not starting.done():
                starting.cancel()
                await asyncio.gather(starting, return_exceptions=True)

        async def died() -> str | None:
            why = trouble()
            if why is None:
                return None
            message, _ = why
            return message + await self._log_tail()

        parsed = urlparse(url)
        try:
            await self.wait_listening(parsed.hostname, parsed.port or 80, died)
        except SpawnException:
            await delete()
            raise
        return url

    async def _hand_over_secrets(self) -> None:
        """The person's secrets as their Secret (brought up to date: a removed one goes), taken
        by the workspace as environment (envFrom): no value in the pod spec."""
        try:
            values = await asyncio.to_thread(self.portal.secrets.values, self.user.name)
        except SecretsUnavailable as e:
            raise SpawnException(f"Cannot start this workspace: {e}.", reason="secrets", status_code=503) from None
        base = dict((self._configured or {}).get("extra_container_config", self.extra_container_config))
        name = await sync_user_secret(self.api, self.k8s_settings, self.user.name, values)
        # A person's secret wins over a team's setting of the same name, as on every backend:
        # in a pod spec `env` would win over `envFrom`, so the setting is left out.
        self.podbay_settings = {k: v for k, v in self.podbay_settings.items() if k not in values}
        self.extra_container_config = base if name is None else {
            **base, "envFrom": [*base.get("envFrom", []), {"secretRef": {"name": name}}]}

    async def delete_forever(self):
        """JupyterHub calls this when a named server is removed (and for the default one when
        the user is removed). KubeSpawner's would delete `pvc_name`, which is podbay's one
        home of the person, shared by every workspace: their files would go with one
        workspace. podbay deletes a home only when homes are per workspace and the operator
        chose to remove them with it; a catalog volume never."""
        home = self.k8s_settings.home
        if not (self.name and home.per_workspace and home.delete_with_workspace):
            self.log.info("%s removed; its home %s is kept", self.podbay_key,
                          home_claim_name(self.k8s_settings, self.user.name, self.name))
            return
        # Named from settings, not from pvc_name: a spawner that never started this run
        # (after a hub restart) still has KubeSpawner's template there.
        claim = home_claim_name(self.k8s_settings, self.user.name, self.name)
        self.log.info("%s removed; deleting its own home %s (home.delete_with_workspace)", self.podbay_key, claim)
        self.namespace = self.k8s_settings.namespace
        await self._make_delete_pvc_request(claim, self.k8s_api_request_timeout)

    async def _log_tail(self, lines: int = 20) -> str:
        try:
            text = await asyncio.wait_for(self.api.read_namespaced_pod_log(
                self.pod_name, self.namespace, tail_lines=lines), self.k8s_api_request_timeout)
        except Exception:  # noqa: BLE001 - a log we cannot read does not hide the reason
            return ""
        return f" Last lines of its log:\n{text}" if text else ""

    # The deployment's own settings of the traits podbay adds to, as they were before
    # podbay's first start of this server: a spawner object may serve several starts.
    _configured: dict | None = None
    _OWN = ("node_selector", "tolerations", "extra_labels", "extra_container_config", "storage_class",
            "pod_affinity_required")
    # Whether podbay's last start put NVIDIA_VISIBLE_DEVICES=void in the environment (which
    # JupyterHub and the authenticator change between starts too: it is not rebuilt whole).
    _podbay_void = False
    podbay_secrets_apart = True

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
        # Over the deployment's own (the chart's singleuser.nodeSelector, scheduling.userPods.tolerations),
        # kept from before the first workspace: a spawner object serves every start of its server.
        if self._configured is None:
            self._configured = {name: copy.deepcopy(getattr(self, name)) for name in self._OWN}
        own = self._configured
        self.node_selector = {**own["node_selector"], **node_selector_of(cfg, pool, ask)}
        # KubeSpawner takes these as a list or as a dict of named entries.
        self.tolerations = [*self._sorted_dict_values(own["tolerations"]), *tolerations_of(cfg, pool)]
        claim = home_claim_name(settings, self.user.name, self.name)
        home_label, home_terms = home_follows(settings, claim)
        self.pod_affinity_required = [*self._sorted_dict_values(own["pod_affinity_required"]), *home_terms]
        # KubeSpawner makes the home PVC the first time, from podbay's storage class.
        self.storage_pvc_ensure = True
        self.pvc_name = claim
        self.storage_capacity = settings.home.size
        # Unset: no storageClassName at all, so the cluster's default class provisions the
        # home. KubeSpawner would write "" for an empty string, which means "no class": no
        # dynamic provisioning, and the home would wait for a PersistentVolume made by hand.
        self.storage_class = settings.home.storage_class or own["storage_class"]
        self.storage_access_modes = [settings.home.access_mode]
        volumes, mounts = volume_mounts(cfg, settings, [v.name for v in request.volumes], claim)
        self.volumes, self.volume_mounts = volumes, mounts
        self.notebook_dir = HOME
        # Over the deployment's own labels (the chart's hub.jupyter.org/network-access-hub lets
        # the workspace reach the hub through its NetworkPolicy).
        self.extra_labels = {**own["extra_labels"], **home_label,
                             **labels(user=self.user.name, team=request.team, profile=request.profile.id,
                                      units=self.portal.profile_units(request.profile), component="workspace")}
        # The same spawner may serve a CPU start and then a GPU one, and the kubelet puts the
        # pod's own env after the device plugin's: a "void" podbay left from the CPU start
        # would hide the GPU the plugin gave. Only podbay's own entry is taken back; the rest
        # (the deployment's, the authenticator's fresh token) stays as this start set it.
        environment = dict(self.environment)
        if self._podbay_void and environment.get("NVIDIA_VISIBLE_DEVICES") == "void":
            del environment["NVIDIA_VISIBLE_DEVICES"]
        self._podbay_void = not ask.resources
        if not ask.resources:
            # NGC images ask for every GPU in their own environment: a CPU workspace sees none.
            environment["NVIDIA_VISIBLE_DEVICES"] = "void"
        self.environment = environment
