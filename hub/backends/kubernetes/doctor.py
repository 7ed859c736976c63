"""`podbay doctor` on a cluster: what the stand-in cluster of the tests enforces
(tests/standins/k8s_cluster.py), checked on the real one from where podbay runs.

- every call podbay makes is allowed (SelfSubjectAccessReview, as the API server decides);
- homes can bind (their storage class, or a default class, exists) and attach where they are
  used (a ReadWriteOnce home follows its person's pods to one node; ReadWriteMany needs a
  class whose provisioner offers it);
- each pool has nodes, with the GPU operator's labels, the MIG strategy and time-slicing
  podbay.yaml says, and a node that offers each profile's resource;
- Kueue's API is served and the queues podbay uses exist, when `kueue: true`;
- the catalog's images are already on the GPU nodes (else a first start pulls them).
"""

from __future__ import annotations

from ...config import PodbayConfig
from ...doctor import Finding
from ...quota.book import Snapshot
from .api import KubernetesUnreachable, api_client, read_json
from .capacity import ClusterCapacity, node_state
from .manifests import needed_access
from .objects import ProfileUnavailable, gpu_ask

DEFAULT_CLASS = "storageclass.kubernetes.io/is-default-class"
# Provisioners of block storage: a volume attaches to one node at a time (no ReadWriteMany).
BLOCK_STORAGE = {"ebs.csi.aws.com", "kubernetes.io/aws-ebs", "pd.csi.storage.gke.io", "kubernetes.io/gce-pd",
                 "disk.csi.azure.com", "kubernetes.io/azure-disk", "rancher.io/local-path", "rbd.csi.ceph.com",
                 "cinder.csi.openstack.org", "csi.vsphere.vmware.com", "linodebs.csi.linode.com"}
APPLY = "apply `podbay k8s manifests | kubectl apply -f -` and the chart with rbac.create: true"


async def diagnose(cfg: PodbayConfig) -> list[Finding]:
    from kubernetes_asyncio import client

    settings = cfg.kubernetes
    try:
        api = await api_client(settings.kubeconfig)
    except KubernetesUnreachable as e:
        return [Finding.fail(str(e), "run where podbay runs (the hub's pod), or set kubernetes.kubeconfig")]
    async with api:
        core = client.CoreV1Api(api)
        try:
            nodes = (await read_json(core.list_node, _request_timeout=30)).get("items") or []
            pods = (await read_json(core.list_pod_for_all_namespaces, _request_timeout=60)).get("items") or []
        except Exception as e:  # noqa: BLE001 - the API server's or the network's words
            if getattr(e, "status", None) == 403:
                nodes, pods = None, None
            else:
                return [Finding.fail(f"the API server does not answer ({e})",
                                     "check kubernetes.kubeconfig, or the pod's service account and network")]
        out = [Finding.ok("the API server answers")]
        out += await rights(api, cfg, hub_identity(cfg))
        out += await storage(api, cfg)
        if nodes is not None:
            out += pools(cfg, nodes, pods)
            out += images(cfg, nodes)
        if settings.kueue:
            out += await kueue(api, cfg)
    return out


def hub_identity(cfg: PodbayConfig) -> str | None:
    """Whose rights to check: None where this runs as the hub (its pod's service account),
    else the hub's ServiceAccount, PODBAY_HUB_ACCOUNT (namespace:name) or the chart's `hub`
    in podbay's namespace. An operator's own kubeconfig (a cluster admin's) says nothing
    of what the hub may do."""
    import os

    from .api import own_namespace

    if os.environ.get("PODBAY_HUB_ACCOUNT"):
        namespace, _, name = os.environ["PODBAY_HUB_ACCOUNT"].rpartition(":")
        return f"system:serviceaccount:{namespace or cfg.kubernetes.namespace}:{name}"
    if own_namespace() is not None:
        return None
    return f"system:serviceaccount:{cfg.kubernetes.namespace}:hub"


async def rights(api, cfg: PodbayConfig, subject: str | None = None) -> list[Finding]:
    """Each call podbay makes, asked of the API server for the hub's identity: its own
    (SelfSubjectAccessReview, in the hub's pod), or `subject`'s (SubjectAccessReview, which
    an operator with the right to ask may make)."""
    from kubernetes_asyncio import client

    auth = client.AuthorizationV1Api(api)
    who = subject or "this pod's service account"
    missing = []
    for verb, group, resource, namespace in needed_access(cfg.kubernetes):
        plural, _, sub = resource.partition("/")
        spec = {"resourceAttributes": {"verb": verb, "group": group, "resource": plural,
                                       **({"subresource": sub} if sub else {}),
                                       **({"namespace": namespace} if namespace else {})}}
        try:
            if subject is None:
                answer = await read_json(auth.create_self_subject_access_review, {
                    "apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview", "spec": spec})
            else:
                answer = await read_json(auth.create_subject_access_review, {
                    "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
                    "spec": {**spec, "user": subject,
                             "groups": ["system:serviceaccounts", f"system:serviceaccounts:{subject.split(':')[2]}",
                                        "system:authenticated"] if subject.startswith("system:serviceaccount:") else []}})
        except Exception as e:  # noqa: BLE001
            return [Finding.warn(f"cannot ask the API server what {who} may do ({e})",
                                 "run podbay doctor in the hub's pod, or with a kubeconfig that may create "
                                 "subjectaccessreviews")]
        if not (answer.get("status") or {}).get("allowed"):
            where = f"in {namespace}" if namespace else "cluster-wide"
            missing.append(f"{verb} {resource}{'.' + group if group else ''} {where}")
    if missing:
        return [Finding.fail(f"podbay ({who}) may not: {'; '.join(missing)}", APPLY)]
    return [Finding.ok(f"every call podbay makes is allowed for {who} ({len(needed_access(cfg.kubernetes))} checked)")]


async def storage(api, cfg: PodbayConfig) -> list[Finding]:
    """The home's storage class, how it binds, and whether it attaches where homes are used."""
    from kubernetes_asyncio import client

    home = cfg.kubernetes.home
    try:
        classes = (await read_json(client.StorageV1Api(api).list_storage_class)).get("items") or []
    except Exception as e:  # noqa: BLE001
        return [Finding.warn(f"cannot read the StorageClasses ({e}): homes' storage was not checked",
                             "run podbay doctor with a kubeconfig that may list storageclasses")]
    by_name = {c["metadata"]["name"]: c for c in classes}
    defaults: list[dict] = []
    if home.storage_class:
        cls = by_name.get(home.storage_class)
        if cls is None:
            return [Finding.fail(f"the homes' StorageClass {home.storage_class!r} does not exist: no home would "
                                 "bind and every workspace would wait until its start times out",
                                 f"create it, or set kubernetes.home.storage_class to one of: "
                                 f"{', '.join(sorted(by_name)) or 'none exists'}")]
    else:
        # Several defaults: the API server gives the newest (Kubernetes 1.26 and later).
        defaults = sorted((c for c in classes if (c["metadata"].get("annotations") or {}).get(DEFAULT_CLASS) == "true"),
                          key=lambda c: c["metadata"].get("creationTimestamp") or "", reverse=True)
        if not defaults:
            return [Finding.fail("kubernetes.home.storage_class is unset and the cluster has no default "
                                 "StorageClass: no home would bind",
                                 "set kubernetes.home.storage_class, or mark a class as the default "
                                 f"({DEFAULT_CLASS}: \"true\")")]
        cls = defaults[0]
        if len(defaults) > 1:
            several = Finding.warn(f"{len(defaults)} StorageClasses are marked default "
                                   f"({', '.join(c['metadata']['name'] for c in defaults)}): the newest is used "
                                   "(Kubernetes 1.26 and later; older API servers refuse such claims)",
                                   "keep one default class, or set kubernetes.home.storage_class")
    name, provisioner = cls["metadata"]["name"], cls.get("provisioner", "")
    mode = cls.get("volumeBindingMode", "Immediate")
    out = [Finding.ok(f"homes use StorageClass {name} ({provisioner}, {mode})")]
    if not home.storage_class and len(defaults) > 1:
        out.append(several)
    if provisioner in BLOCK_STORAGE and mode == "Immediate":
        out.append(Finding.warn(f"{name} binds at once (Immediate) on zonal block storage: a home may be made in a "
                                "zone where no node has the GPU a workspace asks for (volume node affinity conflict)",
                                "use a class with volumeBindingMode: WaitForFirstConsumer for homes"))
    if home.access_mode == "ReadWriteMany" and provisioner in BLOCK_STORAGE:
        out.append(Finding.fail(f"homes are ReadWriteMany but {name}'s provisioner {provisioner} is block storage, "
                                "which attaches to one node: no home would be provisioned",
                                "use a file-storage class (NFS, CephFS, EFS, Filestore, Azure Files) for homes"))
    elif home.access_mode == "ReadWriteOncePod":
        out.append(Finding.warn("homes are ReadWriteOncePod: one pod at a time uses a home, so a job waits until "
                                "the workspace whose home it mounts has stopped",
                                "for jobs beside workspaces: kubernetes.home.access_mode: ReadWriteMany"))
    elif home.access_mode != "ReadWriteMany":
        job_pools = sorted(p for p in cfg.pools if not any(p in prof.pools for prof in cfg.profiles))
        out.append(Finding.warn(
            f"homes are {home.access_mode}: attached to one node at a time, so a person's workspaces and jobs "
            "run on one node (a job waits until their workspaces stop), and jobs across nodes are refused"
            + (f"; jobs of pools {', '.join(job_pools)} never share a node with a workspace" if job_pools else ""),
            "for jobs beside workspaces: kubernetes.home.access_mode: ReadWriteMany with a file-storage class"))
    return out


def pools(cfg: PodbayConfig, nodes: list[dict], pods: list[dict]) -> list[Finding]:
    """Each pool's nodes, their GPU operator labels, and a node for each profile."""
    settings = cfg.kubernetes
    capacity = ClusterCapacity(cfg, settings, lambda: (nodes, pods))
    out = []
    for name, pool in cfg.pools.items():
        selector = dict(pool.node_selector)
        members = [n for n in nodes if all(((n.get("metadata") or {}).get("labels") or {}).get(k) == v
                                           for k, v in selector.items())]
        if not members:
            if settings.pool(name).autoscaled:
                out.append(Finding.warn(f"pool {name}: no node yet (autoscaled: one joins when a pod waits)",
                                        "make sure the node group gives its nodes the node_selector's labels "
                                        f"{selector} and the GPU operator"))
            else:
                out.append(Finding.fail(f"pool {name}: no node carries its node_selector {selector}",
                                        f"label the pool's nodes (kubectl label node NODE "
                                        f"{' '.join(f'{k}={v}' for k, v in selector.items())}), or set "
                                        f"kubernetes.pools.{name}.autoscaled where an autoscaler adds them"))
            continue
        bare = [n["metadata"]["name"] for n in members
                if not any(k in (n["metadata"].get("labels") or {}) for k in ("nvidia.com/gpu.present",
                                                                               "nvidia.com/gpu.product"))]
        gpu_profiles = [p for p in cfg.profiles if name in p.pools and p.spec.kind != "cpu"]
        if bare and gpu_profiles:
            out.append(Finding.fail(f"pool {name}: nodes {', '.join(bare)} have no GPU Feature Discovery labels "
                                    "(nvidia.com/gpu.present, nvidia.com/gpu.product)",
                                    "install the NVIDIA GPU operator (or GPU Feature Discovery and the device plugin) "
                                    "on them, or take them out of the pool"))
        down = [f"{n['metadata']['name']} ({node_state(n)[0]})" for n in members if node_state(n)[0] != "Ready"]
        if down:
            out.append(Finding.warn(f"pool {name}: nodes not taking work: {', '.join(down)}"))
        ts = settings.pool(name).time_slicing
        if ts:
            said = {(n["metadata"].get("labels") or {}).get("nvidia.com/gpu.replicas") for n in members} - {None}
            wrong = sorted(r for r in said if r not in ("1", str(ts.replicas)))
            if wrong:
                out.append(Finding.fail(f"pool {name}: nodes time-slice into {', '.join(wrong)}, podbay.yaml says "
                                        f"{ts.replicas}", f"make kubernetes.pools.{name}.time_slicing.replicas match "
                                        "the device plugin's config (nvidia.com/gpu.replicas)"))
        for prof in gpu_profiles:
            try:
                ask = gpu_ask(prof.spec, name, settings.pool(name))
            except ProfileUnavailable as e:
                out.append(Finding.fail(f"profile {prof.id} in pool {name}: {e}", "see kubernetes.pools"))
                continue
            total, _ = capacity.counts(prof.spec, [name], _NOTHING)
            if total == 0:
                out.append(Finding.fail(f"profile {prof.id}: no node of pool {name} offers "
                                        f"{', '.join(f'{k}: {v}' for k, v in ask.resources.items())}",
                                        "check the GPU operator's MIG/time-slicing config of the pool's nodes, "
                                        "or take the profile out of the pool"))
        if not any(f.what.startswith(f"pool {name}:") and f.level == "fail" for f in out):
            out.append(Finding.ok(f"pool {name}: {len(members)} nodes"))
    for problem in capacity.unknown():
        out.append(Finding.fail(problem, "make kubernetes.pools.<pool>.mig_strategy match the GPU operator's "
                                         "(nvidia.com/mig.strategy)"))
    return out


def images(cfg: PodbayConfig, nodes: list[dict]) -> list[Finding]:
    """The catalog's images on the GPU nodes already (the kubelet lists what it holds)."""
    gpu_nodes = [n for n in nodes if "nvidia.com/gpu.present" in (n["metadata"].get("labels") or {})]
    out = []
    for image in cfg.images:
        want = image.image if ":" in image.image.rsplit("/", 1)[-1] else f"{image.image}:latest"
        lacking = [n["metadata"]["name"] for n in gpu_nodes
                   if not any(want in (i.get("names") or []) or any(x.endswith("/" + want) for x in i.get("names") or [])
                              for i in (n.get("status") or {}).get("images") or [])]
        if lacking:
            out.append(Finding.warn(f"image {image.name} ({image.image}) is not on {len(lacking)} of "
                                    f"{len(gpu_nodes)} GPU nodes: a first start there pulls it (NGC images: "
                                    "15-20 GB, minutes)", "pre-pull the catalog: `podbay k8s values` gives the "
                                                          "chart's prePuller.extraImages"))
    return out


async def kueue(api, cfg: PodbayConfig) -> list[Finding]:
    from kubernetes_asyncio import client

    settings = cfg.kubernetes
    custom = client.CustomObjectsApi(api)
    try:
        queues = await read_json(custom.list_namespaced_custom_object, "kueue.x-k8s.io", "v1beta1",
                                 settings.namespace, "localqueues")
    except Exception as e:  # noqa: BLE001
        if getattr(e, "status", None) == 404:
            return [Finding.fail("kubernetes.kueue is true but the cluster serves no Kueue API (kueue.x-k8s.io/"
                                 "v1beta1): jobs would be created suspended and never run",
                                 "install Kueue (0.9 or later), or set kubernetes.kueue: false")]
        return [Finding.warn(f"cannot read Kueue's LocalQueues ({e})", "run podbay doctor with rights to list them")]
    have = {q["metadata"]["name"] for q in queues.get("items") or []}
    want = {pool.queue for pool in cfg.pools.values() if pool.queue}
    want |= {f"{settings.name_prefix}-{team}" for team in [*cfg.teams, "no-team"]} if any(
        not pool.queue for pool in cfg.pools.values()) else set()
    missing = sorted(want - have)
    if missing:
        return [Finding.fail(f"Kueue's LocalQueues {', '.join(missing)} do not exist in {settings.namespace}: "
                             "jobs sent to them are never admitted", APPLY)]
    return [Finding.ok(f"Kueue serves its API and podbay's {len(want)} queues exist")]


# An empty quota book's snapshot: the doctor counts what the cluster offers.
_NOTHING = Snapshot(0, frozenset(), {}, {}, {})
