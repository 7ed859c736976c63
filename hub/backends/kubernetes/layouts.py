"""GPU layouts on a Kubernetes cluster: what each node's GPUs are cut into now, read from
GPU Feature Discovery's labels and the device plugin's allocatable, and applying a new one
through the GPU Operator's MIG Manager (it acts on the node label nvidia.com/mig.config).

MIG Manager reconfigures a whole node at once and stops the GPU clients it finds, so podbay
sets the label only where no pod holds a GPU of the node, and only when the operator allowed
it (kubernetes.apply_mig_layouts: patching Nodes is a cluster-wide permission)."""

from __future__ import annotations

import asyncio
from collections import Counter

from ...advice.advise import LayoutNotApplied
from ...advice.layouts import deal_out, predefined_layout
from ...advice.replay import WHOLE, GpuLayout, SimGpu
from ...gpu import family_for
from .capacity import MIG_LABEL, NodeGpus, gpu_nodes, pod_requests
from .objects import GPU, PRODUCT, SHARED
from .quantity import count
from .watch import TERMINATED

MIG_CONFIG = "nvidia.com/mig.config"
MIG_STATE = "nvidia.com/mig.config.state"
MIG_MANAGER = "nvidia.com/gpu.deploy.mig-manager"


def _product(labels: dict[str, str]) -> str:
    """GFD's product label without the time-slicing suffix (…-SHARED, renameByDefault off)."""
    product = labels.get(PRODUCT, "")
    return product[: -len("-SHARED")] if product.endswith("-SHARED") else product


def _model(labels: dict[str, str]) -> str:
    """GFD's product label as NVML names the model: NVIDIA-H100-80GB-HBM3-MIG-1g.10gb → NVIDIA H100 80GB HBM3."""
    return _product(labels).split("-MIG-")[0].replace("-", " ")


def node_gpus(node: NodeGpus, pool: str) -> list[SimGpu] | None:
    """The GPUs of one node, each with the layout it is offered in now; None where advice
    leaves the node alone: time-sliced (a node-wide device plugin setting), or MIG on a model
    without known geometry."""
    labels = node.labels
    model = _model(labels)
    memory = count(labels["nvidia.com/gpu.memory"]) if labels.get("nvidia.com/gpu.memory", "").isdigit() else None
    family = family_for(model, memory)
    physical = count(labels.get("nvidia.com/gpu.count", "0"))
    mig = Counter({r[len(MIG_LABEL):]: n for r, n in node.allocatable.items() if r.startswith(MIG_LABEL) and n})
    whole = node.allocatable.get(GPU, 0)
    replicas = count(labels.get("nvidia.com/gpu.replicas", "0") or "0")
    product = _product(labels)
    if node.allocatable.get(SHARED) or replicas > 1:
        # Time-sliced by the device plugin's config for the node: not a layout MIG Manager
        # sets, and on MIG devices not one these labels describe per GPU. Left alone.
        return None
    if (mig or "-MIG-" in product) and family is None:
        return None  # MIG on a model podbay has no geometry for: never taken for whole GPUs
    if "-MIG-" in product and family is not None:
        # Single strategy: every GPU cut alike into one profile, offered as nvidia.com/gpu;
        # GFD's gpu.count then counts the MIG devices, not the GPUs.
        profile = product.split("-MIG-")[1]
        if profile not in family.profiles:
            return None
        per_gpu = family.profiles[profile].max_instances
        layouts = [GpuLayout("mig", mig=(profile,) * per_gpu)] * -(-(physical or whole) // per_gpu)
    elif mig:
        # Mixed strategy: MIG Manager's config, where it is a predefined one, says each GPU's
        # layout; otherwise the node's devices are dealt out to its MIG GPUs (which GPU has
        # which is then a guess: a custom config's own devices: lists say it exactly).
        mig_gpus = max(1, physical - whole)
        same = predefined_layout(family, labels.get(MIG_CONFIG, ""))
        if same is not None and same.mode == "mig" and Counter({p: n * mig_gpus for p, n in Counter(same.mig).items()}) == mig:
            layouts = [WHOLE] * whole + [same] * mig_gpus
        else:
            layouts = [WHOLE] * whole + [GpuLayout("mig", mig=lay) for lay in deal_out(family, mig, mig_gpus)]
    else:
        layouts = [WHOLE] * (physical or whole)
    return [SimGpu(node.name, pool, i, model, family, lay) for i, lay in enumerate(layouts)]


def gpu_pods(pods: list[dict], node: str) -> list[str]:
    """The pods holding GPUs of `node` that have not ended, as namespace/name."""
    out = []
    for p in pods:
        if (p.get("spec") or {}).get("nodeName") != node or (p.get("status") or {}).get("phase") in TERMINATED:
            continue
        if any(k.startswith("nvidia.com/") and v for k, v in pod_requests(p).items()):
            meta = p.get("metadata") or {}
            out.append(f"pod {meta.get('namespace', '')}/{meta.get('name')}")
    return out


def cluster_layouts(cfg, nodes: list[dict], pods: list[dict]) -> list[tuple[SimGpu, list[str]]]:
    """Every GPU node of the pools Kubernetes runs, its GPUs and what runs on them (MIG
    Manager changes a node at once, so each GPU names every GPU pod of its node). A node
    matching several pools' node_selectors is advised for the first."""
    out = []
    for node in gpu_nodes(nodes, pods):
        pool = next((name for name, p in cfg.pools.items()
                     if all(node.labels.get(k) == v for k, v in p.node_selector.items())), None)
        if pool is None:
            continue
        gpus = node_gpus(node, pool)
        if not gpus:
            continue
        holders = gpu_pods(pods, node.name)
        out += [(g, holders) for g in gpus]
    return out


def _by_hand(name: str, config: str) -> str:
    return f"label it yourself: kubectl label node {name} {MIG_CONFIG}={config} --overwrite"


def _off(name: str = "<node>", config: str = "<config>") -> str:
    return ("kubernetes.apply_mig_layouts is off in podbay.yaml (podbay then may patch Nodes: `podbay k8s "
            f"manifests` grants it), or {_by_hand(name, config)}")


def check_apply(settings, nodes: list[dict], pods: list[dict], name: str, config: str) -> dict:
    """The node to label, or LayoutNotApplied with why not and what to do."""
    by_hand = _by_hand(name, config)
    if not settings.apply_mig_layouts:
        raise LayoutNotApplied(_off(name, config))
    node = next((n for n in nodes if (n.get("metadata") or {}).get("name") == name), None)
    if node is None:
        raise LayoutNotApplied(f"the cluster has no node {name}")
    labels = (node.get("metadata") or {}).get("labels") or {}
    if labels.get(MIG_MANAGER) != "true":
        raise LayoutNotApplied(f"MIG Manager does not run on {name} ({MIG_MANAGER} is not true): the GPU Operator "
                               "applies MIG layouts only where it deploys MIG Manager")
    busy = gpu_pods(pods, name)
    if busy:
        raise LayoutNotApplied(f"{name} runs {', '.join(busy)} on its GPUs; MIG Manager would stop them. Apply it "
                               f"once they end (podbay advise names them), or {by_hand}")
    return node


def cannot_apply(settings, view) -> str | None:
    """Why no layout can be applied now, before any advice is made for it; None: it may be."""
    if not settings.apply_mig_layouts:
        return _off()
    if not getattr(view, "ready", None) or not view.ready.is_set():
        return "podbay's view of the cluster is not complete yet (its watches are starting): try again in a moment"
    return None


async def apply(settings, view, name: str, config: str) -> str:
    from kubernetes_asyncio import client
    from kubernetes_asyncio.client.exceptions import ApiException

    from .api import KubernetesUnreachable, api_client, read_json

    why = cannot_apply(settings, view)
    if why:
        raise LayoutNotApplied(why)
    nodes, pods = view()
    node = check_apply(settings, nodes, pods, name, config)
    if ((node.get("metadata") or {}).get("labels") or {}).get(MIG_CONFIG) == config:
        return f"{name} already has {MIG_CONFIG}={config}"
    api = await api_client(settings.kubeconfig)
    async with api:
        core = client.CoreV1Api(api)
        try:
            # The node's pods as the API server has them now, not as the watch last saw them.
            # A pod bound between this and the label is MIG Manager's to stop: the window is
            # this request's, not the watch's.
            fresh = await read_json(core.list_pod_for_all_namespaces, field_selector=f"spec.nodeName={name}")
        except (ApiException, KubernetesUnreachable, OSError, asyncio.TimeoutError) as e:
            raise LayoutNotApplied(f"could not list {name}'s pods to check nothing runs on its GPUs: {e}") from None
        check_apply(settings, nodes, fresh.get("items") or [], name, config)
        try:
            await core.patch_node(name, {"metadata": {"labels": {MIG_CONFIG: config}}})
        except ApiException as e:
            if e.status == 403:
                raise LayoutNotApplied(f"the API server refused to label {name}: podbay may not patch Nodes "
                                       "(apply `podbay k8s manifests` with apply_mig_layouts on)") from None
            raise LayoutNotApplied(f"the API server refused to label {name}: {e.status} {e.reason}") from None
    return (f"{name}: {MIG_CONFIG}={config}. MIG Manager applies it and reports in {MIG_STATE} "
            f"(kubectl get node {name} -L {MIG_STATE}); podbay's capacity follows the node's new devices.")
