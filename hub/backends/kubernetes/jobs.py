"""Training jobs as batch/v1 Jobs on the cluster.

The cluster queues: with Kueue a Job is created suspended with its team's (or its pool's)
LocalQueue and runs when Kueue admits it; without Kueue its pods wait Pending for the
scheduler. Either way podbay hands every job over at once (`queues_jobs`) and shows the
engine's reason while the job waits. A Job is named after podbay's job id, so a second
submit of the same job (a service restart in between) finds it instead of starting a
second copy, and after a restart every job is found again by that name.

Logs are the pods' (rank 0's for a job across nodes), read through the API; the cursor is
"<pod>:<byte offset>:<fingerprint>" (logs.py), so a follower reads on where it
stopped, starts over if the pod it read was replaced, and reads the new file whole (saying
so) when the kubelet rotated the log under it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ...config import PodbayConfig
from ...training import BackendStatus, BackendUnavailable, JobSpec, TrainingBackend
from .api import read_bytes, read_json, sync_user_secret
from .logs import ROTATED, cursor_of, fingerprint, parse_cursor
from .objects import HOME_LABEL, training_job

log = logging.getLogger("podbay.training.kubernetes")
HOME = "/home/jovyan"


class KubernetesJobs(TrainingBackend):
    name = "kubernetes"
    host_homes = False
    secrets_apart = True
    queues_jobs = True
    multi_node = True

    def __init__(self, cfg: PodbayConfig, api_client):
        """`api_client`: a kubernetes_asyncio ApiClient, or an async function that makes one
        (on the service's loop, at first use: a client belongs to the loop it was made on)."""
        self.cfg = cfg
        self.settings = cfg.kubernetes
        self._api = api_client
        self._apis = None

    async def _ensure(self) -> None:
        if self._apis is None:
            from kubernetes_asyncio import client

            from .api import KubernetesUnreachable

            api = self._api
            if callable(api):
                try:
                    api = await api()
                except KubernetesUnreachable as e:
                    raise BackendUnavailable(str(e)) from None
            self._apis = (client.CoreV1Api(api), client.BatchV1Api(api), client.CustomObjectsApi(api),
                          client.NetworkingV1Api(api))

    async def aclose(self) -> None:
        if self._apis is not None and callable(self._api):  # a client it made itself
            await self._apis[0].api_client.close()
            self._apis = None

    @property
    def core(self):
        return self._apis[0]

    @property
    def batch(self):
        return self._apis[1]

    @property
    def custom(self):
        return self._apis[2]

    @property
    def networking(self):
        return self._apis[3]

    def home_of(self, user: str) -> Path:
        return Path(HOME)

    def mount_source(self, volume, path):
        return self.settings.claims.get(volume.name, "")

    def job_name(self, job_id: int) -> str:
        return f"{self.settings.name_prefix}-job-{job_id}"

    async def _call(self, fn, *args, **kwargs):
        """An API call whose connection errors mean "try later", not "the job failed"."""
        from aiohttp import ClientError

        await self._ensure()
        try:
            return await fn(*args, **kwargs)
        except (ClientError, OSError, TimeoutError) as e:
            raise BackendUnavailable(f"the Kubernetes API is not reachable ({e}); the job is handed over when it is back") from None

    def check_submit(self, *, team: str | None, pool: str, gpus_per_node: int, nodes: int, user: str | None = None,
                     time_limit: str | None = None) -> None:
        super().check_submit(team=team, pool=pool, gpus_per_node=gpus_per_node, nodes=nodes, time_limit=time_limit)
        mode = self.settings.home.access_mode
        if nodes > 1 and mode != "ReadWriteMany":
            # Every rank mounts the home: a ReadWriteOnce one would attach to the first rank's
            # node only, and the others would wait in ContainerCreating for ever.
            raise ValueError(f"a job across {nodes} nodes mounts your home on each of them, and this cluster's "
                             f"homes are {mode} (attached to one node at a time): run it on one node, or ask the "
                             "platform team for homes on a ReadWriteMany storage class (kubernetes.home.access_mode)")

    async def submit(self, job: JobSpec) -> dict:
        await self._ensure()
        from kubernetes_asyncio.client.exceptions import ApiException

        image = self.cfg.image(job.image)
        # The person's secrets as their Secret, brought up to date: the Job takes it by name, and
        # a secret wins over a setting of the same name (in a pod spec env would win over envFrom).
        secret = await self._call(sync_user_secret, self.core, self.settings, job.user, job.secrets)
        env = {k: v for k, v in job.env.items() if k not in job.secrets}
        objects = training_job(
            self.cfg, self.settings, job_id=job.id, name=job.name, user=job.user, team=job.team,
            image=image.image if image else job.image, command=job.command, workdir=job.workdir, env=env,
            volumes=job.volume_names, gpus_per_node=job.gpus_per_node, nodes=job.nodes, pool=job.pool,
            queue=job.queue, workspace=job.workspace, secret=secret)
        ns = self.settings.namespace
        job_obj, *peers = objects
        # A job across nodes: its Service and policy first (the ranks look each other up and
        # connect as soon as they run, which Kueue may allow at once), then the Job, which
        # then owns them, so the garbage collector removes them with it (its TTL after it
        # finished, or a cancel).
        creators = {"Service": self.core.create_namespaced_service,
                    "NetworkPolicy": self.networking.create_namespaced_network_policy}
        for obj in peers:
            try:
                await self._call(creators[obj["kind"]], ns, obj)
            except ApiException as e:
                if e.status != 409:  # already there: this job was handed over before a restart
                    raise
        try:
            made = await self._call(read_json, self.batch.create_namespaced_job, ns, job_obj)
        except ApiException as e:
            if e.status != 409:
                # Refused (a quota, an admission webhook): what was made for it would stay.
                try:
                    await self._delete_peers(job.id)
                except ApiException:
                    pass  # the refusal is what to say
                raise
            made = await self._call(read_json, self.batch.read_namespaced_job, self.job_name(job.id), ns)
        owner = {"apiVersion": "batch/v1", "kind": "Job", "name": made["metadata"]["name"],
                 "uid": made["metadata"]["uid"]}
        patchers = {"Service": self.core.patch_namespaced_service,
                    "NetworkPolicy": self.networking.patch_namespaced_network_policy}
        for obj in peers:
            try:
                await self._call(patchers[obj["kind"]], obj["metadata"]["name"], ns,
                                 {"metadata": {"ownerReferences": [owner]}})
            except ApiException as e:
                # A hub whose rights predate this (`podbay k8s manifests` not applied again):
                # the job runs all the same; cancel still deletes them by name.
                log.warning("cannot make the Job %s own its %s (%s): apply `podbay k8s manifests` again",
                            owner["name"], obj["kind"], e.status)
        return {"name": self.job_name(job.id), "namespace": ns}

    async def sync_secrets(self, user: str, values: dict[str, str]) -> None:
        """A person changed their secrets: their Secret follows at once (a removed key leaves
        the cluster now, not at their next start)."""
        await self._call(sync_user_secret, self.core, self.settings, user, values)

    async def _job(self, ref: dict) -> dict | None:
        from kubernetes_asyncio.client.exceptions import ApiException

        try:
            return await self._call(read_json, self.batch.read_namespaced_job, self.job_name(ref["job_id"]),
                                    self.settings.namespace)
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    async def _pods(self, ref: dict) -> list[dict]:
        found = await self._call(read_json, self.core.list_namespaced_pod, self.settings.namespace,
                                 label_selector=f"job-name={self.job_name(ref['job_id'])}")
        items = found.get("items") or []
        # An emulated API server may ignore the selector: the label decides.
        name = self.job_name(ref["job_id"])
        return [p for p in items if (p.get("metadata", {}).get("labels") or {}).get("job-name") == name]

    async def status(self, ref: dict) -> BackendStatus:
        await self._ensure()
        job = await self._job(ref)
        if job is None:
            return BackendStatus("lost", message="the job's Kubernetes Job is gone (deleted, or removed "
                                                 "kubernetes.job_ttl after it finished)")
        spec, st = job.get("spec") or {}, job.get("status") or {}
        completions = spec.get("completions") or 1
        if (st.get("succeeded") or 0) >= completions:
            return BackendStatus("exited", 0)
        if st.get("failed"):
            return BackendStatus("exited", await self._exit_code(ref))
        if spec.get("suspend"):
            return BackendStatus("pending", message=await self._kueue_reason(job))
        pods = await self._pods(ref)
        running = [p for p in pods if (p.get("status") or {}).get("phase") == "Running"]
        if running and len(running) >= (spec.get("parallelism") or 1):
            return BackendStatus("running")
        if not pods:
            refused = await self._refused(job)
            if refused:
                return BackendStatus("pending", message=refused)
        return BackendStatus("pending", message=_pending_reason(pods, await self._volume_trouble(pods)))

    async def _volume_trouble(self, pods: list[dict]) -> str | None:
        """The attach-detach controller's or the kubelet's latest word on a volume of a pod
        that was placed but does not start (Multi-Attach, a mount that fails): events, which
        the pod's own status never carries."""
        def creating(pod: dict) -> bool:
            # Placed, and its containers not made yet: volumes are attached and mounted first.
            # A pod waiting for anything else (an image) says so itself; an older volume event
            # of it is stale.
            st = pod.get("status") or {}
            reasons = {((cs.get("state") or {}).get("waiting") or {}).get("reason") for cs in st.get("containerStatuses") or []}
            return (bool((pod.get("spec") or {}).get("nodeName")) and st.get("phase") == "Pending"
                    and reasons <= {"ContainerCreating", None})

        waiting = [p["metadata"]["name"] for p in pods if creating(p)][:3]
        for name in waiting:
            try:
                found = await self._call(read_json, self.core.list_namespaced_event, self.settings.namespace,
                                         field_selector=f"involvedObject.name={name}")
            except Exception:  # noqa: BLE001 - no events to read is no reason to give
                return None
            mine = [ev for ev in found.get("items") or [] if (ev.get("involvedObject") or {}).get("name") == name]
            # Newest last: a volume event is the pod's state only until its volumes are
            # attached (the kubelet pulls the image after, with its own events).
            mine.sort(key=lambda ev: ev.get("lastTimestamp") or ev.get("eventTime")
                      or (ev.get("series") or {}).get("lastObservedTime") or ev.get("firstTimestamp") or "")
            for ev in reversed(mine):
                if ev.get("reason") in ("SuccessfulAttachVolume", "Pulling", "Pulled", "Created", "Started"):
                    break
                if ev.get("reason") in ("FailedAttachVolume", "FailedMount"):
                    return ev.get("message") or ev["reason"]
        return None

    async def _refused(self, job: dict) -> str | None:
        """Why the Job controller makes no pod: the API server refused them (Pod Security
        admission, a quota), which its FailedCreate event says."""
        name = job["metadata"]["name"]
        try:
            found = await self._call(read_json, self.core.list_namespaced_event, self.settings.namespace,
                                     field_selector=f"involvedObject.name={name}")
        except Exception:  # noqa: BLE001 - no events to read is no reason to give
            return None
        for ev in reversed(found.get("items") or []):
            if ev.get("reason") == "FailedCreate" and (ev.get("involvedObject") or {}).get("name") == name:
                return f"the cluster refuses its pods (tell the platform team): {ev.get('message', '')}"
        return None

    async def _exit_code(self, ref: dict) -> int:
        for pod in await self._pods(ref):
            for cs in (pod.get("status") or {}).get("containerStatuses") or []:
                code = ((cs.get("state") or {}).get("terminated") or {}).get("exitCode")
                if code:
                    return int(code)
        return 1

    async def _kueue_reason(self, job: dict) -> str:
        """Why Kueue has not admitted the job: its Workload's QuotaReserved condition."""
        from kubernetes_asyncio.client.exceptions import ApiException

        uid = (job.get("metadata") or {}).get("uid")
        try:
            found = await self._call(self.custom.list_namespaced_custom_object, "kueue.x-k8s.io", "v1beta1",
                                     self.settings.namespace, "workloads")
        except ApiException:
            found = {}
        for wl in found.get("items") or []:
            owners = (wl.get("metadata") or {}).get("ownerReferences") or []
            if any(o.get("kind") == "Job" and (o.get("uid") == uid or o.get("name") == job["metadata"]["name"])
                   for o in owners):
                for cond in (wl.get("status") or {}).get("conditions") or []:
                    if cond.get("type") == "QuotaReserved" and cond.get("status") == "False":
                        return f"not admitted by Kueue: {cond.get('message') or cond.get('reason')}"
        return "waiting for Kueue to admit it"

    async def _delete_peers(self, job_id: int) -> None:
        """A multi-node job's Service and NetworkPolicy, by name (none for one node; a Job
        made before they were owned by it leaves them to this). A hub whose rights predate
        the policy (`podbay k8s manifests` not applied again since) may not delete it."""
        from kubernetes_asyncio.client.exceptions import ApiException

        name, ns = self.job_name(job_id), self.settings.namespace
        try:
            await self._call(self.core.delete_namespaced_service, name, ns)
        except ApiException as e:
            if e.status != 404:
                raise
        try:
            await self._call(self.networking.delete_namespaced_network_policy, name, ns)
        except ApiException as e:
            if e.status == 403:
                log.warning("cannot delete the NetworkPolicy %s (403): apply `podbay k8s manifests` again for the "
                            "hub's rights", name)
            elif e.status != 404:
                raise

    async def cancel(self, ref: dict) -> None:
        await self._ensure()
        from kubernetes_asyncio.client import V1DeleteOptions
        from kubernetes_asyncio.client.exceptions import ApiException

        # Background: the Job goes now, its pods after it (SIGTERM, their grace period).
        try:
            await self._call(self.batch.delete_namespaced_job, self.job_name(ref["job_id"]), self.settings.namespace,
                             body=V1DeleteOptions(propagation_policy="Background"))
        except ApiException as e:
            if e.status != 404:
                raise
        await self._delete_peers(ref["job_id"])

    async def read_logs(self, ref: dict, cursor: str | None = None) -> tuple[bytes, str | None]:
        await self._ensure()
        from kubernetes_asyncio.client.exceptions import ApiException

        pod_name, offset, tail = None, 0, None
        if cursor:
            pod_name, offset, tail = parse_cursor(cursor)
        pods = sorted(await self._pods(ref), key=_rank)
        if not pods:
            return b"", cursor
        first = pods[0]["metadata"]["name"]
        if pod_name != first:
            offset = 0  # a new pod (the first was replaced): its output from the start
        try:
            data = await self._call(read_bytes, self.core.read_namespaced_pod_log, first, self.settings.namespace)
        except ApiException as e:
            if e.status in (400, 404):  # not started yet, or gone
                return b"", cursor_of(first, offset, tail)
            raise
        if offset and (offset > len(data) or (tail is not None and fingerprint(data, offset) != tail)):
            # The kubelet rotated the container's log (at containerLogMaxSize): the API serves
            # the new file only, so the offset points into other text. Read the new file
            # whole; what was written between the last read and the rotation is in the old one.
            return ROTATED + data, cursor_of(first, len(data), fingerprint(data, len(data)))
        return data[offset:], cursor_of(first, len(data), fingerprint(data, len(data)))


def _rank(pod: dict) -> tuple:
    ann = (pod.get("metadata") or {}).get("annotations") or {}
    return (int(ann.get("batch.kubernetes.io/job-completion-index", 0)), pod["metadata"]["name"])


def _pending_reason(pods: list[dict], volume_trouble: str | None = None) -> str:
    """The scheduler's word on a pod that waits (PodScheduled False: "0/12 nodes are
    available: 12 Insufficient nvidia.com/gpu"), or the kubelet's (an image being pulled),
    with what it means for the person where that is a volume."""
    for pod in pods:
        st = pod.get("status") or {}
        for cond in st.get("conditions") or []:
            if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
                message = cond.get("message") or cond.get("reason") or ""
                words = volume_words(message, pod)
                return f"{words} (the scheduler: {message})" if words else f"not scheduled: {message}"
    if volume_trouble:
        return f"{volume_words(volume_trouble) or 'waiting for a volume'} ({volume_trouble})"
    for pod in pods:
        st = pod.get("status") or {}
        for cs in st.get("containerStatuses") or []:
            waiting = (cs.get("state") or {}).get("waiting")
            if waiting:
                return f"starting: {waiting.get('reason')}" + (f" ({waiting['message']})" if waiting.get("message") else "")
    return "waiting for its pods to start" if pods else "waiting for the Job controller"


def volume_words(message: str, pod: dict | None = None) -> str | None:
    """What a scheduler's or a volume controller's message about a pod's volumes means for the
    person, or None when it is about something else."""
    labels = ((pod or {}).get("metadata") or {}).get("labels") or {}
    if "didn't match pod affinity rules" in message and HOME_LABEL in labels:
        return ("waiting for your home: it is attached to one node at a time (ReadWriteOnce), the node of your "
                "running workspace, and that node has no room for this job; it starts when your workspaces stop")
    if "ReadWriteOncePod access mode" in message:
        return ("waiting for a volume that one pod at a time may use (ReadWriteOncePod), which another pod uses "
                "now (your workspace, if it is your home); it starts when that pod stops")
    if "Multi-Attach error" in message:
        return ("waiting for a volume that is attached to one node at a time (ReadWriteOnce) and in use on another "
                "node; it starts when the pods using it there stop")
    if "unbound immediate PersistentVolumeClaims" in message or "unbound PersistentVolumeClaims" in message:
        return "waiting for a volume that is not made yet (its claim is not bound); tell the platform team if this lasts"
    if "volume node affinity conflict" in message:
        return ("waiting for a node in the zone of its volumes (its home or data volume is zonal storage, and no "
                "node there has room); tell the platform team if this lasts")
    if "persistentvolumeclaim" in message and "not found" in message:
        return "a volume it mounts has no claim on the cluster (tell the platform team)"
    if "MountVolume" in message or "Unable to attach or mount volumes" in message:
        return "waiting for its volumes to be mounted"
    return None
