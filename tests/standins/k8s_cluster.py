"""A small stand-in cluster for the kubernetes backend's end-to-end tests: the emulated API
server (tests/standins/k8s_emulator.py) with what a real cluster runs beside it and nothing here can:

- a scheduler: binds a pending pod to a node that matches its node selector, tolerates the
  node's taints and has its requests free (allocatable − requests of the node's pods that
  have not ended), else leaves it Pending with an Unschedulable reason in the scheduler's words;
- a kubelet with NVIDIA's device plugin: hands the pod device IDs of what it asked for
  (NVIDIA_VISIBLE_DEVICES, as the plugin's envvar strategy does; the pod's own env comes after it and wins, as on a real kubelet), mounts its PVCs (a
  directory per claim under the storage root, read-only where the pod says so, fsGroup
  applied) in a mount namespace of its own, and runs the container's command as a host
  process as its runAsUser, on an address of its own (127.N.x.y: the pod IP), writing its
  output where `kubectl logs` reads it, and reports it Running, then its exit code (by its
  restartPolicy: ended, or CrashLoopBackOff, without running it again);
- the Job controller: pods for a Job that is not suspended (`<job>-<index>-<suffix>` with
  hostname `<job>-<index>` for an Indexed Job), the Job's status and conditions; the
  TTL-after-finished controller; the garbage collector (what a deleted object owned goes);
- Pod Security admission at the `restricted` level for every namespace (a Namespace's own
  pod-security.kubernetes.io/enforce label says otherwise): a pod below it is refused with
  the API server's words, and a Job's pods are not made (a FailedCreate event instead);
- storage as the PV controller, a CSI provisioner and the attach-detach controller run it: a
  claim with no storageClassName gets the default class (the DefaultStorageClass
  admission), a claim of class "" binds only a PersistentVolume made by hand (none here: it
  stays Pending, FailedBinding), an unknown class or an access mode the class's provisioner
  cannot offer is ProvisioningFailed, WaitForFirstConsumer binds where the scheduler put the
  first pod; the scheduler refuses a pod whose immediate claim is unbound or missing, and a
  second ReadWriteOncePod user; a ReadWriteOnce volume is attached to one node at a time (a pod
  on another node stays ContainerCreating with the Multi-Attach error); reclaimPolicy Delete: a
  deleted claim's files go once no pod uses it;
- the scheduler's required pod affinity (labelSelector, topologyKey; a pod that matches its own
  term goes anywhere while no other matches);
- with --tokens, authentication and RBAC as the API server's: each request is allowed only by
  what the Roles, ClusterRoles and bindings applied to it grant (the chart's hub Role and
  `podbay k8s manifests`), and SelfSubjectAccessReview answers from the same rules;
- Kueue: a Workload per suspended Job of a LocalQueue, admitted (the Job unsuspended) while
  its ClusterQueue's nominalQuota, or what its cohort leaves unused, covers it; otherwise
  QuotaReserved False with Kueue's reason.

Containers are the host's programs: an image is a name for an entrypoint and a command (the
IMAGES table), its filesystem is the host's, with /home a tmpfs of the pod's own. Run as

    python -m tests.standins.k8s_cluster --state DIR --nodes nodes.yaml [--apply objects.yaml]

It prints `ready <url>` when it serves, and ends every container it started on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime
import json
import os
import random
import shlex
import shutil
import signal
import string
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.standins.k8s_emulator import ADMIN, RESOURCES, Emulator, Rbac, emulated_cluster
from tests.standins.netpol import selects

KUEUE = "kueue.x-k8s.io/v1beta1"
CLUSTER_RESOURCES = {
    **RESOURCES,
    f"{KUEUE}/clusterqueues": ("ClusterQueue", False, {"status"}),
    f"{KUEUE}/localqueues": ("LocalQueue", True, {"status"}),
    f"{KUEUE}/resourceflavors": ("ResourceFlavor", False, set()),
}
PLURALS = {kind: key for key, (kind, _, _) in CLUSTER_RESOURCES.items()}
TERMINATED = {"Succeeded", "Failed"}
# Where the device plugin keeps the IDs it hands out: a test-only annotation on the Node.
DEVICES = "devices.test.podbay.io/"
# The images' software (jupyterhub-singleuser, podbay's workspace files): a site install of
# podbay that every account may run (tests/standins/site_install.py; --image-bin), as an
# image carries its own, never the checkout the tests run from.
BIN = str(Path(sys.executable).parent)
# image -> (entrypoint, cmd, (uid, gid)), as its Dockerfile says (images/base: USER 1000:100,
# tini -- jupyterhub-singleuser).
IMAGES: dict[str, tuple[list[str], list[str], tuple[int, int]]] = {
    "podbay/base:2026.11": ([], ["jupyterhub-singleuser"], (1000, 100)),
    "podbay/debian-root:bookworm": ([], ["bash"], (0, 0)),  # no terminal: bash exits at once
}
IMAGE_PATH = f"{BIN}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# What images/common/install-workspace.sh puts in the workspace images besides the command
# (and the sshd entry, which podbay's own environment registers too): the account jovyan
# (uid 1000, gid 100).
WORKSPACE_IMAGES = {"podbay/base:2026.11"}


def quantity(text: Any) -> float:
    s = str(text)
    for suffix, f in (("Ki", 2**10), ("Mi", 2**20), ("Gi", 2**30), ("Ti", 2**40), ("m", 1e-3), ("k", 1e3),
                      ("M", 1e6), ("G", 1e9)):
        if s.endswith(suffix):
            return float(s[: -len(suffix)]) * f
    return float(s)


def requests_of(pod: dict) -> dict[str, float]:
    total: dict[str, float] = {}
    for c in pod["spec"].get("containers") or []:
        res = c.get("resources") or {}
        for k, v in {**(res.get("limits") or {}), **(res.get("requests") or {})}.items():
            total[k] = total.get(k, 0) + quantity(v)
    return total


RWO, RWOP, RWX, ROX = "ReadWriteOnce", "ReadWriteOncePod", "ReadWriteMany", "ReadOnlyMany"
# The access modes each provisioner's volumes offer (its CSI driver's capabilities): block
# storage, the default class of EKS, GKE and AKS, attaches to one node; file storage to many.
PROVISIONER_MODES = {
    "ebs.csi.aws.com": {RWO, RWOP},
    "pd.csi.storage.gke.io": {RWO, RWOP, ROX},
    "disk.csi.azure.com": {RWO, RWOP},
    "rancher.io/local-path": {RWO, RWOP},
    "efs.csi.aws.com": {RWO, RWX, ROX},
    "filestore.csi.storage.gke.io": {RWO, RWX, ROX},
    "file.csi.azure.com": {RWO, RWX, ROX},
    "nfs.csi.k8s.io": {RWO, RWOP, RWX, ROX},
}
DEFAULT_CLASS = "storageclass.kubernetes.io/is-default-class"
SELECTED_NODE = "volume.kubernetes.io/selected-node"


def now_text() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def condition(type_: str, status: str, reason: str = "", message: str = "") -> dict:
    return {"type": type_, "status": status, "reason": reason, "message": message, "lastTransitionTime": now_text()}


ALLOWED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                   "projected", "secret"}


def pod_security_violations(pod: dict) -> list[str]:
    """What the Pod Security admission of Kubernetes (k8s.io/pod-security-admission, its
    `restricted` level, latest version) refuses in a pod, in its own words."""
    spec = pod.get("spec") or {}
    psc = spec.get("securityContext") or {}
    containers = [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]
    out: list[str] = []
    host = [k for k in ("hostNetwork", "hostPID", "hostIPC") if spec.get(k)]
    if host:
        out.append(f"host namespaces ({', '.join(f'{k}=true' for k in host)})")
    privileged = [c["name"] for c in containers if (c.get("securityContext") or {}).get("privileged")]
    if privileged:
        out.append(f"privileged ({_names(privileged)} must not set securityContext.privileged=true)")
    escalating = [c["name"] for c in containers if (c.get("securityContext") or {}).get("allowPrivilegeEscalation") is not False]
    if escalating:
        out.append(f"allowPrivilegeEscalation != false ({_names(escalating)} must set "
                   "securityContext.allowPrivilegeEscalation=false)")
    undropped = [c["name"] for c in containers
                 if "ALL" not in (((c.get("securityContext") or {}).get("capabilities") or {}).get("drop") or [])]
    added = [c["name"] for c in containers
             if set(((c.get("securityContext") or {}).get("capabilities") or {}).get("add") or []) - {"NET_BIND_SERVICE"}]
    if undropped or added:
        words = []
        if undropped:
            words.append(f'{_names(undropped)} must set securityContext.capabilities.drop=["ALL"]')
        if added:
            words.append(f"{_names(added)} must not include capabilities other than NET_BIND_SERVICE in "
                         "securityContext.capabilities.add")
        out.append(f"unrestricted capabilities ({'; '.join(words)})")
    volumes = [v["name"] for v in spec.get("volumes") or [] if not set(v) - {"name"} <= ALLOWED_VOLUMES]
    if volumes:
        out.append(f"restricted volume types ({', '.join(f'volume {n!r}' for n in volumes)})")
    if not psc.get("runAsNonRoot"):
        roots = [c["name"] for c in containers if (c.get("securityContext") or {}).get("runAsNonRoot") is not True]
        if roots:
            out.append(f"runAsNonRoot != true (pod or {_names(roots)} must set securityContext.runAsNonRoot=true)")
    if psc.get("runAsUser") == 0 or any((c.get("securityContext") or {}).get("runAsUser") == 0 for c in containers):
        out.append("runAsUser=0 (pod and containers must not set runAsUser=0)")

    def confined(sc: dict) -> bool:
        return ((sc or {}).get("seccompProfile") or {}).get("type") in ("RuntimeDefault", "Localhost")

    if not confined(psc):
        loose = [c["name"] for c in containers if not confined(c.get("securityContext"))]
        if loose:
            out.append(f'seccompProfile (pod or {_names(loose)} must set securityContext.seccompProfile.type to '
                       '"RuntimeDefault" or "Localhost")')
    return out


def _names(names: list[str]) -> str:
    quoted = ", ".join(f'"{n}"' for n in names)
    return f"container {quoted}" if len(names) == 1 else f"containers {quoted}"


def pod_security_refusal(pod: dict, level: str) -> str | None:
    """The API server's refusal of a pod in a namespace that enforces `level`, or None."""
    if level != "restricted":
        return None
    found = pod_security_violations(pod)
    if not found:
        return None
    name = (pod.get("metadata") or {}).get("name") or (pod.get("metadata") or {}).get("generateName", "")
    return f'pods "{name}" is forbidden: violates PodSecurity "restricted:latest": {", ".join(found)}'


class Container:
    def __init__(self, proc: asyncio.subprocess.Process, log: Path):
        self.proc, self.log = proc, log


class Cluster:
    def __init__(self, emu: Emulator, state: Path, pod_security: str = "restricted"):
        self.emu, self.state = emu, state
        # Pod Security admission, as a cluster whose AdmissionConfiguration defaults every
        # namespace to `enforce: <level>` (a Namespace's pod-security.kubernetes.io/enforce
        # label says otherwise for it): what podbay's docs ask for its namespace.
        self.pod_security = pod_security
        emu.admit = self.admit
        self.storage = state / "volumes"
        self.containers: dict[str, Container] = {}  # pod uid -> its process
        # Pod IPs on the loopback, in a /16 of this cluster's own: two stand-in clusters at once
        # (a test run and a benchmark) do not hand out the same address and port.
        net = random.randrange(2, 255)
        self.ips = iter(f"127.{net}.{n // 250}.{n % 250 + 2}" for n in range(62500))
        # (namespace, claim) of every PVC seen: the provisioner's volumes.
        self.claims: set[tuple[str, str]] = set()

    def enforced(self, namespace: str | None) -> str:
        ns = self.emu.get_object("v1/namespaces", None, namespace or "") or {}
        return ((ns.get("metadata") or {}).get("labels") or {}).get("pod-security.kubernetes.io/enforce",
                                                                      self.pod_security)

    def admit(self, plural: str, namespace: str | None, obj: dict) -> str | None:
        if plural == "persistentvolumeclaims":
            # The DefaultStorageClass admission plugin: a claim that names no class (the key
            # absent, not "") gets the default one.
            spec = obj.setdefault("spec", {})
            default = self.default_class()
            if "storageClassName" not in spec and default:
                spec["storageClassName"] = default
            return None
        if plural != "pods":
            return None
        return pod_security_refusal(obj, self.enforced(namespace))

    def default_class(self) -> str | None:
        for sc in self.objects("storage.k8s.io/v1/storageclasses"):
            if (sc["metadata"].get("annotations") or {}).get(DEFAULT_CLASS) == "true":
                return sc["metadata"]["name"]
        return None

    # --- reading the emulator's objects --------------------------------------------------

    def objects(self, resource: str) -> list[dict]:
        return self.emu.stored(resource)

    async def patch(self, resource: str, obj: dict, patch: dict) -> None:
        meta = obj["metadata"]
        with contextlib.suppress(KeyError):  # gone meanwhile
            await self.emu.patch_object(resource, meta.get("namespace"), meta["name"], patch)

    async def run(self) -> None:
        while True:
            try:
                await self.kueue()
                await self.job_controller()
                await self.ttl_controller()
                await self.garbage_collector()
                await self.volume_binder()
                await self.scheduler()
                await self.kubelet()
                await self.provisioner()
            except Exception as e:  # noqa: BLE001 - a stand-in that stops would hang every test
                print(f"stand-in cluster: {e!r}", file=sys.stderr, flush=True)
            await asyncio.sleep(0.05)

    # --- Kueue ----------------------------------------------------------------------------

    async def kueue(self) -> None:
        jobs = {j["metadata"]["uid"]: j for j in self.objects("batch/v1/jobs")}
        workloads = self.objects(f"{KUEUE}/workloads")
        owned = {wl["metadata"]["ownerReferences"][0]["uid"]: wl for wl in workloads}
        for uid, job in jobs.items():
            queue = (job["metadata"].get("labels") or {}).get("kueue.x-k8s.io/queue-name")
            if queue and uid not in owned and job["spec"].get("suspend"):
                name = job["metadata"]["name"]
                suffix = "".join(random.choices(string.ascii_lowercase + string.digits, k=5))
                owned[uid] = await self.emu.add_object(f"{KUEUE}/workloads", {
                    "apiVersion": KUEUE, "kind": "Workload",
                    "metadata": {"name": f"job-{name}-{suffix}", "namespace": job["metadata"]["namespace"],
                                 "labels": {"kueue.x-k8s.io/job-uid": uid},
                                 "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": name,
                                                      "uid": uid, "controller": True}]},
                    "spec": {"queueName": queue, "podSets": [{"name": "main", "count": job["spec"].get("parallelism") or 1,
                                                              "template": job["spec"]["template"]}]},
                    "status": {}})
        for uid, wl in list(owned.items()):
            if uid not in jobs:  # the Job went: so does its Workload (garbage collection)
                await self.emu.delete_object(f"{KUEUE}/workloads", wl["metadata"]["namespace"], wl["metadata"]["name"])
                del owned[uid]
        local = {(q["metadata"]["namespace"], q["metadata"]["name"]): q["spec"]["clusterQueue"]
                 for q in self.objects(f"{KUEUE}/localqueues")}
        cqs = {q["metadata"]["name"]: q for q in self.objects(f"{KUEUE}/clusterqueues")}

        def usage(wl: dict) -> dict[str, float]:
            count = wl["spec"]["podSets"][0]["count"]
            pod = {"spec": wl["spec"]["podSets"][0]["template"]["spec"]}
            return {k: v * count for k, v in requests_of(pod).items()}

        def nominal(cq: dict) -> dict[str, float]:
            out: dict[str, float] = {}
            for group in cq["spec"].get("resourceGroups") or []:
                if len(group["flavors"]) != 1:
                    raise ValueError("the stand-in Kueue models one flavor per queue, as podbay makes them")
                for flavor in group["flavors"]:
                    for r in flavor["resources"]:
                        out[r["name"]] = out.get(r["name"], 0) + quantity(r["nominalQuota"])
            return out

        def finished(wl: dict) -> bool:
            job = jobs.get(wl["metadata"]["ownerReferences"][0]["uid"])
            return job is None or any(c["type"] in ("Complete", "Failed") and c["status"] == "True"
                                      for c in (job.get("status") or {}).get("conditions") or [])

        def admitted(wl: dict) -> bool:
            return any(c["type"] == "Admitted" and c["status"] == "True" for c in (wl.get("status") or {}).get("conditions") or [])

        used: dict[str, dict[str, float]] = {}
        for wl in owned.values():
            cq = local.get((wl["metadata"]["namespace"], wl["spec"]["queueName"]))
            if cq and admitted(wl) and not finished(wl):
                for k, v in usage(wl).items():
                    used.setdefault(cq, {})[k] = used.setdefault(cq, {}).get(k, 0) + v
        pending = sorted((wl for wl in owned.values() if not admitted(wl)), key=lambda w: int(w["metadata"]["resourceVersion"]))
        for wl in pending:
            cq_name = local.get((wl["metadata"]["namespace"], wl["spec"]["queueName"]))
            cq = cqs.get(cq_name or "")
            if cq is None:
                reason = f"LocalQueue {wl['spec']['queueName']} doesn't exist"
            else:
                cohort = [q for q in cqs.values() if q["spec"].get("cohort") and q["spec"]["cohort"] == cq["spec"].get("cohort")] or [cq]
                reason = ""
                for resource, need in usage(wl).items():
                    own = nominal(cq).get(resource)
                    if own is None:
                        reason = f"couldn't assign flavors to pod set main: resource {resource} unavailable in ClusterQueue"
                        break
                    # What the cohort's queues leave unused may be borrowed (no borrowingLimit).
                    room = sum(nominal(q).get(resource, 0) - used.get(q["metadata"]["name"], {}).get(resource, 0)
                               for q in cohort)
                    if need > room:
                        reason = (f"couldn't assign flavors to pod set main: insufficient unused quota for {resource} "
                                  f"in flavor {cq['spec']['resourceGroups'][0]['flavors'][0]['name']}, "
                                  f"{need - room:g} more needed")
                        break
            if reason:
                conds = [condition("QuotaReserved", "False", "Pending", reason)]
                if (wl.get("status") or {}).get("conditions") != conds:
                    await self.patch(f"{KUEUE}/workloads", wl, {"status": {"conditions": conds}})
                continue
            for k, v in usage(wl).items():
                used.setdefault(cq_name, {})[k] = used.setdefault(cq_name, {}).get(k, 0) + v
            msg = f"Quota reserved in ClusterQueue {cq_name}"
            await self.patch(f"{KUEUE}/workloads", wl, {"status": {"conditions": [
                condition("QuotaReserved", "True", "QuotaReserved", msg),
                condition("Admitted", "True", "Admitted", "The workload is admitted")]}})
            job = jobs[wl["metadata"]["ownerReferences"][0]["uid"]]
            await self.patch("batch/v1/jobs", job, {"spec": {"suspend": False}})

    # --- the Job controller and the garbage collector ----------------------------------------

    async def job_controller(self) -> None:
        jobs = {j["metadata"]["uid"]: j for j in self.objects("batch/v1/jobs")}
        pods_of: dict[str, list[dict]] = {}
        for pod in self.objects("v1/pods"):
            owner = next((o for o in pod["metadata"].get("ownerReferences") or [] if o.get("kind") == "Job"), None)
            if owner is None:
                continue
            if owner["uid"] not in jobs:  # background propagation: the pods follow their Job
                await self.emu.delete_object("v1/pods", pod["metadata"]["namespace"], pod["metadata"]["name"])
                continue
            pods_of.setdefault(owner["uid"], []).append(pod)
        for uid, job in jobs.items():
            spec, status = job["spec"], job.get("status") or {}
            if spec.get("suspend") or any(c["status"] == "True" for c in status.get("conditions") or []):
                continue
            pods = pods_of.get(uid, [])
            n = spec.get("completions") or 1
            if not pods:
                made = [self.job_pod(job, index) for index in range(n)]
                refused = self.admit("pods", job["metadata"]["namespace"], made[0])
                if refused:
                    # As the Job controller: no pod, a FailedCreate event on the Job (once here).
                    await self.event(job, "FailedCreate", f"Error creating: {refused}")
                    continue
                for pod in made:
                    await self.emu.add_object("v1/pods", pod)
                continue
            phases = [p["status"].get("phase") for p in pods]
            new = {"active": sum(p not in TERMINATED for p in phases), "succeeded": phases.count("Succeeded"),
                   "failed": phases.count("Failed")}
            if new["failed"] > (spec.get("backoffLimit") or 0):
                new["conditions"] = [condition("Failed", "True", "BackoffLimitExceeded", "Job has reached the specified backoff limit")]
                for pod, phase in zip(pods, phases):
                    if phase not in TERMINATED:  # the controller ends the other ranks
                        await self.emu.delete_object("v1/pods", pod["metadata"]["namespace"], pod["metadata"]["name"])
            elif new["succeeded"] >= n:
                new["conditions"] = [condition("Complete", "True")]
            if any(status.get(k) != v for k, v in new.items()):
                await self.patch("batch/v1/jobs", job, {"status": new})

    async def ttl_controller(self) -> None:
        """The TTL-after-finished controller: a Job whose Complete or Failed condition is older
        than its ttlSecondsAfterFinished is deleted (its pods and what it owns follow)."""
        now = datetime.datetime.now(datetime.UTC)
        for job in self.objects("batch/v1/jobs"):
            ttl = job["spec"].get("ttlSecondsAfterFinished")
            ended = [c for c in (job.get("status") or {}).get("conditions") or []
                     if c["type"] in ("Complete", "Failed") and c["status"] == "True"]
            if ttl is None or not ended:
                continue
            at = datetime.datetime.strptime(ended[0]["lastTransitionTime"], "%Y-%m-%dT%H:%M:%SZ").replace(
                tzinfo=datetime.UTC)
            if (now - at).total_seconds() >= ttl:
                with contextlib.suppress(KeyError):
                    await self.emu.delete_object("batch/v1/jobs", job["metadata"]["namespace"], job["metadata"]["name"])

    async def garbage_collector(self) -> None:
        """Objects whose owner is gone are deleted (background propagation), as the garbage
        collector does with ownerReferences."""
        live = {o["metadata"]["uid"] for res in CLUSTER_RESOURCES for o in self.objects(res)}
        for res in ("v1/services", "networking.k8s.io/v1/networkpolicies", "v1/pods"):
            for obj in self.objects(res):
                owners = obj["metadata"].get("ownerReferences") or []
                if owners and not any(o.get("uid") in live for o in owners):
                    with contextlib.suppress(KeyError):
                        await self.emu.delete_object(res, obj["metadata"]["namespace"], obj["metadata"]["name"])

    async def event(self, obj: dict, reason: str, message: str, kind: str = "Job", type_: str = "Warning") -> None:
        meta = obj["metadata"]
        name = f"{meta['name']}.{reason.lower()}"
        if self.emu.get_object("v1/events", meta["namespace"], name) is None:
            await self.emu.add_object("v1/events", {
                "apiVersion": "v1", "kind": "Event", "type": type_, "reason": reason, "message": message,
                "metadata": {"name": name, "namespace": meta["namespace"]},
                "involvedObject": {"kind": obj.get("kind", kind), "name": meta["name"], "namespace": meta["namespace"],
                                   "uid": meta["uid"]}})

    def job_pod(self, job: dict, index: int) -> dict:
        meta, spec = job["metadata"], job["spec"]
        template = json.loads(json.dumps(spec["template"]))
        indexed = spec.get("completionMode") == "Indexed"
        suffix = "".join(random.choices(string.ascii_lowercase + string.digits, k=5))
        name = f"{meta['name']}-{index}-{suffix}" if indexed else f"{meta['name']}-{suffix}"
        labels = {**(template.get("metadata") or {}).get("labels", {}), "job-name": meta["name"],
                  "batch.kubernetes.io/job-name": meta["name"], "controller-uid": meta["uid"]}
        annotations = {}
        pod_spec = template["spec"]
        if indexed:
            annotations["batch.kubernetes.io/job-completion-index"] = str(index)
            labels["batch.kubernetes.io/job-completion-index"] = str(index)
            pod_spec["hostname"] = f"{meta['name']}-{index}"
            for c in pod_spec["containers"]:
                c.setdefault("env", []).append({"name": "JOB_COMPLETION_INDEX", "value": str(index)})
        return {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": meta["namespace"], "labels": labels, "annotations": annotations,
                             "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": meta["name"],
                                                  "uid": meta["uid"], "controller": True, "blockOwnerDeletion": True}]},
                "spec": pod_spec, "status": {"phase": "Pending"}}

    # --- the scheduler -------------------------------------------------------------------------

    async def scheduler(self) -> None:
        pods = self.objects("v1/pods")
        nodes = self.objects("v1/nodes")
        used: dict[str, dict[str, float]] = {}
        for pod in pods:
            node = pod["spec"].get("nodeName")
            if node and (pod.get("status") or {}).get("phase") not in TERMINATED:
                for k, v in requests_of(pod).items():
                    used.setdefault(node, {})[k] = used.setdefault(node, {}).get(k, 0) + v
        placed = {p["metadata"]["uid"]: p["spec"]["nodeName"] for p in pods
                  if p["spec"].get("nodeName") and (p.get("status") or {}).get("phase") not in TERMINATED}
        claims = {(c["metadata"]["namespace"], c["metadata"]["name"]): c
                  for c in self.objects("v1/persistentvolumeclaims")}
        classes = {c["metadata"]["name"]: c for c in self.objects("storage.k8s.io/v1/storageclasses")}
        labels_of = {n["metadata"]["name"]: n["metadata"].get("labels") or {} for n in nodes}
        for pod in sorted((p for p in pods if not p["spec"].get("nodeName")), key=lambda p: int(p["metadata"]["resourceVersion"])):
            ask, why = requests_of(pod), {}
            chosen = None
            refused = self.volumes_refusal(pod, pods, placed, claims, classes)
            if refused:
                msg = f"0/{len(nodes)} nodes are available: {refused}."
                conds = [condition("PodScheduled", "False", "Unschedulable", msg)]
                if pod["status"].get("conditions") != conds:
                    await self.patch("v1/pods", pod, {"status": {"phase": "Pending", "conditions": conds}})
                continue
            allowed = self.affinity_domains(pod, pods, placed, labels_of)
            for node in nodes:
                name, labels = node["metadata"]["name"], node["metadata"].get("labels") or {}
                if (node.get("spec") or {}).get("unschedulable"):
                    why["node(s) were unschedulable"] = why.get("node(s) were unschedulable", 0) + 1
                    continue
                if any(labels.get(k) != v for k, v in (pod["spec"].get("nodeSelector") or {}).items()):
                    why["node(s) didn't match Pod's node affinity/selector"] = why.get("node(s) didn't match Pod's node affinity/selector", 0) + 1
                    continue
                taints = [t for t in (node.get("spec") or {}).get("taints") or [] if t.get("effect") == "NoSchedule"]
                if any(not self.tolerated(t, pod["spec"].get("tolerations") or []) for t in taints):
                    key = "node(s) had untolerated taint {%s: }" % taints[0]["key"]
                    why[key] = why.get(key, 0) + 1
                    continue
                if allowed is not None and not all(labels.get(key) in values for key, values in allowed):
                    why["node(s) didn't match pod affinity rules"] = why.get("node(s) didn't match pod affinity rules", 0) + 1
                    continue
                alloc = {k: quantity(v) for k, v in (node["status"].get("allocatable") or {}).items()}
                short = [k for k, v in ask.items() if v > alloc.get(k, 0) - used.get(name, {}).get(k, 0)]
                if short:
                    why[f"Insufficient {short[0]}"] = why.get(f"Insufficient {short[0]}", 0) + 1
                    continue
                chosen = name
                break
            if chosen:
                for k, v in ask.items():
                    used.setdefault(chosen, {})[k] = used.setdefault(chosen, {}).get(k, 0) + v
                placed[pod["metadata"]["uid"]] = chosen
                for claim in self.claims_of(pod):
                    pvc = claims.get((pod["metadata"]["namespace"], claim))
                    if pvc and (pvc.get("status") or {}).get("phase") != "Bound":
                        # WaitForFirstConsumer: the volume is made where the pod goes.
                        await self.patch("v1/persistentvolumeclaims", pvc,
                                         {"metadata": {"annotations": {SELECTED_NODE: chosen}}})
                await self.patch("v1/pods", pod, {"spec": {"nodeName": chosen}, "status": {
                    "phase": "Pending", "conditions": [condition("PodScheduled", "True")]}})
            else:
                msg = f"0/{len(nodes)} nodes are available: " + ", ".join(f"{n} {w}" for w, n in sorted(why.items())) + "."
                conds = [condition("PodScheduled", "False", "Unschedulable", msg)]
                if pod["status"].get("conditions") != conds:
                    await self.patch("v1/pods", pod, {"status": {"phase": "Pending", "conditions": conds}})

    @staticmethod
    def claims_of(pod: dict) -> list[str]:
        return [v["persistentVolumeClaim"]["claimName"] for v in pod["spec"].get("volumes") or []
                if "persistentVolumeClaim" in v]

    def volumes_refusal(self, pod: dict, pods: list[dict], placed: dict, claims: dict, classes: dict) -> str | None:
        """The scheduler's VolumeBinding and VolumeRestrictions plugins: a claim that does not
        exist, an unbound claim that will not be bound where the pod goes (an immediate class,
        or no class), a ReadWriteOncePod claim another pod uses."""
        ns = pod["metadata"]["namespace"]
        for claim in self.claims_of(pod):
            pvc = claims.get((ns, claim))
            if pvc is None:
                return f'persistentvolumeclaim "{claim}" not found'
            spec = pvc.get("spec") or {}
            if (pvc.get("status") or {}).get("phase") != "Bound":
                cls = classes.get(spec.get("storageClassName") or "")
                if cls is None or cls.get("volumeBindingMode", "Immediate") != "WaitForFirstConsumer":
                    return "pod has unbound immediate PersistentVolumeClaims"
            if RWOP in (spec.get("accessModes") or []):
                if any(p["metadata"]["uid"] in placed and p["metadata"]["namespace"] == ns and claim in self.claims_of(p)
                       for p in pods if p["metadata"]["uid"] != pod["metadata"]["uid"]):
                    return "node has pod using PersistentVolumeClaim with the same name and ReadWriteOncePod access mode"
        return None

    @staticmethod
    def affinity_domains(pod: dict, pods: list[dict], placed: dict, labels_of: dict) -> list[tuple[str, set]] | None:
        """Required pod affinity: for each term, the values of its topologyKey a node must have
        (those of the nodes where a matching pod runs); None where there is no term. A pod
        that matches its own term goes anywhere while no other pod matches (the first of a group)."""
        terms = (((pod["spec"].get("affinity") or {}).get("podAffinity") or {})
                 .get("requiredDuringSchedulingIgnoredDuringExecution") or [])
        if not terms:
            return None
        out = []
        own = pod["metadata"].get("labels") or {}
        for term in terms:
            want = term.get("labelSelector") or {}
            namespaces = set(term.get("namespaces") or [pod["metadata"]["namespace"]])
            nodes = {placed[p["metadata"]["uid"]] for p in pods
                     if p["metadata"]["uid"] in placed and p["metadata"]["uid"] != pod["metadata"]["uid"]
                     and p["metadata"]["namespace"] in namespaces
                     and selects(want, p["metadata"].get("labels") or {})}
            if not nodes:
                if selects(want, own):
                    continue
                out.append((term["topologyKey"], set()))
                continue
            out.append((term["topologyKey"], {labels_of.get(n, {}).get(term["topologyKey"]) for n in nodes} - {None}))
        return out

    # --- storage: the PV controller and the provisioner ------------------------------------

    async def volume_binder(self) -> None:
        """Claims bound as the PV controller and a CSI provisioner bind them (no static
        PersistentVolumes here), or left Pending with their events."""
        classes = {c["metadata"]["name"]: c for c in self.objects("storage.k8s.io/v1/storageclasses")}
        for pvc in self.objects("v1/persistentvolumeclaims"):
            if (pvc.get("status") or {}).get("phase") == "Bound":
                continue
            spec, meta = pvc.get("spec") or {}, pvc["metadata"]
            name = spec.get("storageClassName")
            if not name:
                await self.event(pvc, "FailedBinding", "no persistent volumes available for this claim and no "
                                                       "storage class is set", kind="PersistentVolumeClaim")
                continue
            cls = classes.get(name)
            if cls is None:
                await self.event(pvc, "ProvisioningFailed", f'storageclass.storage.k8s.io "{name}" not found',
                                 kind="PersistentVolumeClaim")
                continue
            offered = PROVISIONER_MODES.get(cls.get("provisioner"), {RWO, RWOP, RWX, ROX})
            unsupported = sorted(set(spec.get("accessModes") or []) - offered)
            if unsupported:
                await self.event(pvc, "ProvisioningFailed", f'failed to provision volume with StorageClass "{name}": '
                                 f"rpc error: code = InvalidArgument desc = access mode {', '.join(unsupported)} "
                                 "is not supported", kind="PersistentVolumeClaim")
                continue
            if cls.get("volumeBindingMode") == "WaitForFirstConsumer" and \
                    not (meta.get("annotations") or {}).get(SELECTED_NODE):
                await self.event(pvc, "WaitForFirstConsumer", "waiting for first consumer to be created before binding",
                                 kind="PersistentVolumeClaim", type_="Normal")
                continue
            await self.patch("v1/persistentvolumeclaims", pvc, {
                "spec": {"volumeName": f"pvc-{meta['uid']}"},
                "status": {"phase": "Bound", "accessModes": spec.get("accessModes") or [],
                           "capacity": ((spec.get("resources") or {}).get("requests") or {})}})

    def multi_attach(self, pod: dict) -> str | None:
        """The attach-detach controller: a ReadWriteOnce volume in use by a running pod on
        another node cannot be attached to this pod's node."""
        ns, node = pod["metadata"]["namespace"], pod["spec"]["nodeName"]
        claims = {(c["metadata"]["namespace"], c["metadata"]["name"]): c for c in self.objects("v1/persistentvolumeclaims")}
        for claim in self.claims_of(pod):
            pvc = claims.get((ns, claim)) or {}
            if RWO not in ((pvc.get("spec") or {}).get("accessModes") or []):
                continue
            users = [p["metadata"]["name"] for p in self.objects("v1/pods")
                     if p["metadata"]["uid"] in self.containers and p["metadata"]["namespace"] == ns
                     and p["spec"].get("nodeName") != node and claim in self.claims_of(p)]
            if users:
                return (f'Multi-Attach error for volume "{(pvc.get("spec") or {}).get("volumeName", claim)}" '
                        f"Volume is already used by pod(s) {', '.join(users)}")
        return None

    @staticmethod
    def tolerated(taint: dict, tolerations: list[dict]) -> bool:
        return any((t.get("operator") == "Exists" and t.get("key") in (None, taint["key"]))
                   or (t.get("key") == taint["key"] and t.get("value") == taint.get("value"))
                   for t in tolerations if t.get("effect") in (None, taint.get("effect")))

    # --- the kubelet, with the device plugin ----------------------------------------------------

    # --- the storage provisioner ----------------------------------------------------------

    async def provisioner(self) -> None:
        """A dynamic provisioner with the default reclaimPolicy Delete: once a claim is deleted
        and no pod uses it any more (the pvc-protection finalizer holds it until then), its
        volume and every file on it are deleted."""
        now = {(p["metadata"]["namespace"], p["metadata"]["name"]) for p in self.objects("v1/persistentvolumeclaims")}
        self.claims |= now
        used = {(p["metadata"]["namespace"], v["persistentVolumeClaim"]["claimName"])
                for p in self.objects("v1/pods") if p["metadata"]["uid"] in self.containers
                for v in p["spec"].get("volumes") or [] if "persistentVolumeClaim" in v}
        for key in self.claims - now - used:
            self.claims.discard(key)
            await asyncio.to_thread(shutil.rmtree, self.storage / key[1], True)

    async def kubelet(self) -> None:
        alive = set()
        for pod in self.objects("v1/pods"):
            uid, node = pod["metadata"]["uid"], pod["spec"].get("nodeName")
            alive.add(uid)
            if not node or pod["status"].get("phase") in TERMINATED:
                continue
            if uid not in self.containers:
                await self.start(pod)
                continue
            box = self.containers[uid]
            statuses = pod["status"].get("containerStatuses") or [{}]
            if box.proc.returncode is not None and "running" in statuses[0].get("state", {}):
                code = box.proc.returncode
                ended = {"exitCode": code, "reason": "Completed" if code == 0 else "Error"}
                policy = pod["spec"].get("restartPolicy", "Always")
                if policy == "Never" or (policy == "OnFailure" and code == 0):
                    await self.patch("v1/pods", pod, {"status": {
                        "phase": "Succeeded" if code == 0 else "Failed",
                        "containerStatuses": [self.container_status(pod, {"terminated": ended}, ready=False)]}})
                else:
                    # The kubelet would restart it, and back off: the pod stays Running and keeps
                    # its devices (this stand-in does not run it again).
                    status = self.container_status(pod, {"waiting": {
                        "reason": "CrashLoopBackOff", "message": "back-off 10s restarting failed container"}},
                        ready=False)
                    status.update(lastState={"terminated": ended}, restartCount=1)
                    await self.patch("v1/pods", pod, {"status": {"containerStatuses": [status]}})
        for uid in set(self.containers) - alive:  # deleted: SIGTERM, the grace period, SIGKILL
            box = self.containers.pop(uid)
            asyncio.ensure_future(self.kill(box.proc))

    @staticmethod
    async def kill(proc: asyncio.subprocess.Process, grace: float = 5) -> None:
        if proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), grace)
        except asyncio.TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()

    def container_status(self, pod: dict, state: dict, ready: bool) -> dict:
        c = pod["spec"]["containers"][0]
        return {"name": c["name"], "image": c["image"], "imageID": f"docker-pullable://{c['image']}",
                "ready": ready, "restartCount": 0, "started": "running" in state, "state": state}

    def allocate(self, pod: dict) -> list[str]:
        """The device plugin: IDs of the node's devices of each extended resource the pod
        asks for, not held by another running pod on the node."""
        node = self.emu.get_object("v1/nodes", None, pod["spec"]["nodeName"])
        taken = {d for p in self.objects("v1/pods") if p["metadata"]["uid"] in self.containers
                 and p["spec"].get("nodeName") == pod["spec"]["nodeName"]
                 for d in (p["metadata"].get("annotations") or {}).get(DEVICES + "ids", "").split(",") if d}
        out = []
        for resource, n in requests_of(pod).items():
            if not resource.startswith("nvidia.com/"):
                continue
            ids = json.loads(node["metadata"].get("annotations", {}).get(DEVICES + resource, "[]"))
            free = [i for i in ids if i not in taken]
            out += free[: int(n)]
        return out

    def field(self, pod: dict, path: str, ip: str) -> str:
        if path.startswith("metadata.annotations['"):
            return (pod["metadata"].get("annotations") or {}).get(path[len("metadata.annotations['"):-2], "")
        if path.startswith("metadata.labels['"):
            return (pod["metadata"].get("labels") or {}).get(path[len("metadata.labels['"):-2], "")
        return {"metadata.name": pod["metadata"]["name"], "metadata.namespace": pod["metadata"]["namespace"],
                "status.podIP": ip, "spec.nodeName": pod["spec"]["nodeName"]}.get(path, "")

    async def start(self, pod: dict) -> None:
        meta, spec = pod["metadata"], pod["spec"]
        c = spec["containers"][0]
        claims = {v["name"]: v["persistentVolumeClaim"] for v in spec.get("volumes") or [] if "persistentVolumeClaim" in v}
        bound = {p["metadata"]["name"] for p in self.objects("v1/persistentvolumeclaims")
                 if p["metadata"]["namespace"] == meta["namespace"] and (p.get("status") or {}).get("phase") == "Bound"}
        if any(cl["claimName"] not in bound for cl in claims.values()):
            return  # the kubelet waits for the volume (WaitForFirstConsumer: being made now)
        attach = self.multi_attach(pod)
        if attach:
            # ContainerCreating until the other node lets go of the volume.
            await self.event(pod, "FailedAttachVolume", attach, kind="Pod")
            creating = [self.container_status(pod, {"waiting": {"reason": "ContainerCreating"}}, ready=False)]
            if pod["status"].get("containerStatuses") != creating:
                await self.patch("v1/pods", pod, {"status": {"containerStatuses": creating}})
            return
        # Volumes are attached and mounted before the image is pulled (the kubelet's SyncPod).
        image = IMAGES.get(c["image"])
        if image is None:
            await self.patch("v1/pods", pod, {"status": {"containerStatuses": [self.container_status(pod, {"waiting": {
                "reason": "ErrImagePull", "message": f'failed to pull and unpack image "{c["image"]}": not found'}},
                ready=False)]}})
            return
        ip = next(self.ips)
        devices = self.allocate(pod)
        security = {**(spec.get("securityContext") or {}), **(c.get("securityContext") or {})}
        entrypoint, cmd, (image_uid, image_gid) = image
        uid, gid = security.get("runAsUser", image_uid), security.get("runAsGroup", image_gid)
        fs_group = security.get("fsGroup")
        # The environment in the kubelet's order, a later entry winning (containerd replaces
        # an image's variable by the runtime options' in order): the image's, then what the
        # device plugin's Allocate answered, then the pod's own envFrom and env
        # (GenerateRunContainerOptions appends the pod's after the device manager's).
        env = {"PATH": IMAGE_PATH, "HOME": "/home/jovyan", "HOSTNAME": spec.get("hostname") or meta["name"]}
        if devices:
            # A time-sliced share's ID is <GPU UUID>::<replica>; the container sees the GPU.
            env["NVIDIA_VISIBLE_DEVICES"] = ",".join(dict.fromkeys(d.split("::")[0] for d in devices))
        for source in c.get("envFrom") or []:  # a Secret's keys, as the kubelet reads them at start
            ref = source.get("secretRef") or {}
            secret = self.emu.get_object("v1/secrets", meta["namespace"], ref.get("name", "")) or {}
            data = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
            env.update(data)
        for e in c.get("env") or []:
            ref = (e.get("valueFrom") or {}).get("fieldRef")
            env[e["name"]] = self.field(pod, ref["fieldPath"], ip) if ref else str(e.get("value", ""))
        if "JUPYTERHUB_SERVICE_URL" in env:
            # Each pod has its own network namespace in a cluster; here they share the host's, so
            # the server listens on its pod IP instead of 0.0.0.0 (KubeSpawner's default).
            env["JUPYTERHUB_SERVICE_URL"] = env["JUPYTERHUB_SERVICE_URL"].replace("0.0.0.0", ip)
        # The image's own /home/jovyan, its user's (under whatever volume mounts over it).
        script = ["set -e", "mount -t tmpfs pod-home /home", "mkdir -p /home/jovyan",
                  f"chown {image_uid}:{image_gid} /home/jovyan"]
        if c["image"] in WORKSPACE_IMAGES:
            # Mounted (the state folder is private to root), where only this pod sees it.
            script.append(f"mount --bind {shlex.quote(str(self.workspace_image_passwd()))} /etc/passwd")
        for m in sorted(c.get("volumeMounts") or [], key=lambda m: len(m["mountPath"])):
            claim = claims.get(m["name"])
            if claim is None:
                continue
            src = self.storage / claim["claimName"]
            src.mkdir(parents=True, exist_ok=True)
            if fs_group is not None and not (m.get("readOnly") or claim.get("readOnly")):
                os.chown(src, -1, fs_group)  # the kubelet applies the pod's fsGroup
                os.chmod(src, 0o2775)
            dst = shlex.quote(m["mountPath"])
            script += [f"mkdir -p {dst}", f"mount --bind {shlex.quote(str(src))} {dst}"]
            if m.get("readOnly") or claim.get("readOnly"):
                script.append(f"mount -o remount,bind,ro {dst}")
        argv = (c.get("command") or entrypoint) + (c.get("args") or ([] if c.get("command") else cmd))
        workdir = c.get("workingDir") or "/"
        # The pod's fsGroup is every container's supplementary group, as the kubelet makes it.
        groups = [f"--groups={fs_group}"] if fs_group is not None else ["--clear-groups"]
        drop = ["setpriv", f"--reuid={uid}", f"--regid={gid}", *groups] if uid else []
        csc = c.get("securityContext") or {}
        if drop and "ALL" in ((csc.get("capabilities") or {}).get("drop") or []):
            drop += ["--inh-caps=-all", "--bounding-set=-all"]  # as the runtime drops them
        if drop and csc.get("allowPrivilegeEscalation") is False:
            drop.append("--no-new-privs")  # the kernel's no_new_privs, which the runtime sets
        script.append(f"cd {shlex.quote(workdir)} 2>/dev/null || cd /")
        script.append("exec " + shlex.join(drop + argv))
        log = self.state / "logs" / f"{meta['namespace']}_{meta['name']}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("wb") as out:
            proc = await asyncio.create_subprocess_exec(
                "unshare", "--mount", "--propagation", "private", "sh", "-c", "\n".join(script),
                stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=asyncio.subprocess.STDOUT, env=env,
                start_new_session=True)
        self.containers[meta["uid"]] = Container(proc, log)
        self.emu.pod_logs[meta["namespace"], meta["name"]] = log
        (self.state / "pods").mkdir(exist_ok=True)
        (self.state / "pods" / f"{meta['namespace']}_{meta['name']}.json").write_text(
            json.dumps({"pid": proc.pid, "devices": devices, "ip": ip}))
        await self.patch("v1/pods", pod, {
            "metadata": {"annotations": {DEVICES + "ids": ",".join(devices)}},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "hostIP": "127.0.0.1",
                       "conditions": [condition("PodScheduled", "True"), condition("Ready", "True")],
                       "containerStatuses": [self.container_status(pod, {"running": {"startedAt": "2026-11-30T00:00:00Z"}},
                                                                   ready=True)]}})

    def workspace_image_passwd(self) -> Path:
        """The workspace image's /etc/passwd: the host's, with jovyan as uid 1000."""
        passwd = self.state / "image" / "passwd"
        if not passwd.exists():
            passwd.parent.mkdir(parents=True, exist_ok=True)
            lines = [line for line in Path("/etc/passwd").read_text().splitlines() if line.split(":")[2:3] != ["1000"]]
            passwd.write_text("\n".join([*lines, "jovyan:x:1000:100::/home/jovyan:/bin/bash"]) + "\n")
        return passwd

    async def shutdown(self) -> None:
        await asyncio.gather(*(self.kill(box.proc, grace=2) for box in self.containers.values()))


# The token of the tests' own view of the stand-in (kubectl as a cluster admin) when RBAC is on.
ADMIN_TOKEN = "stand-in-admin"


async def serve(state: Path, nodes: Path, apply: list[Path], controllers: bool = True,
                tokens: Path | None = None) -> None:
    async with emulated_cluster(CLUSTER_RESOURCES) as (url, emu):
        if tokens is not None:
            # Authentication and RBAC on: {token: user} (a ServiceAccount's user is
            # system:serviceaccount:<namespace>:<name>), and the tests' admin token.
            emu.rbac = Rbac({**yaml.safe_load(tokens.read_text()), ADMIN_TOKEN: ADMIN})
        for path in [nodes, *apply]:
            for obj in yaml.safe_load_all(path.read_text()):
                if obj and obj.get("kind") in PLURALS:
                    await emu.add_object(PLURALS[obj["kind"]], obj)
        cluster = Cluster(emu, state)
        task = asyncio.create_task(cluster.run() if controllers else asyncio.sleep(float("inf")))
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        (state / "url").write_text(url)
        print(f"ready {url}", flush=True)
        await stop.wait()
        task.cancel()
        await cluster.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state", type=Path, required=True)
    parser.add_argument("--nodes", type=Path, required=True)
    parser.add_argument("--apply", type=Path, action="append", default=[])
    parser.add_argument("--tokens", type=Path, help="YAML {token: user}: authentication and RBAC on")
    parser.add_argument("--no-controllers", action="store_true",
                        help="the API server only: objects stay as applied (benchmarks of reading)")
    parser.add_argument("--image-bin", type=Path, help="the images' programs (default: beside this Python)")
    args = parser.parse_args()
    if args.image_bin:
        global IMAGE_PATH
        IMAGE_PATH = IMAGE_PATH.replace(BIN, str(args.image_bin), 1)
    args.state.mkdir(parents=True, exist_ok=True)
    asyncio.run(serve(args.state, args.nodes, args.apply, controllers=not args.no_controllers, tokens=args.tokens))


if __name__ == "__main__":
    main()
