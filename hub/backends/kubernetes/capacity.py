"""Free GPUs per profile and pool, from Node and Pod objects, the way the kube-scheduler
counts: a node's `status.allocatable` of each extended resource minus the requests of its
pods that have not terminated (phase not Succeeded or Failed).

The objects come from a watch-backed cache (the backend's reflectors); this module only
computes, so it is tested on node and pod objects shaped like real ones, with GPU Feature
Discovery's recorded labels.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction

from ...config import PodbayConfig, ProfileKind
from ...gpu import family_for, known_mig_profiles
from ...quota.book import Snapshot
from ...quota.capacity import CapacitySource, NodeState, Usage, default_weight
from .objects import GPU, PRODUCT, SHARED, ProfileUnavailable, gpu_ask
from .quantity import count
from .settings import KubernetesSettings
from .watch import TERMINATED

MIG_LABEL = "nvidia.com/mig-"
# The most GPUs on a node of an autoscaled pool that has none yet and declares no node_gpus.
UNKNOWN_SIZE = 1 << 20


def pod_requests(pod: dict) -> dict[str, int]:
    """The extended resources a pod holds: its containers' requests (limits, where only those
    are given, as the API server defaults them), init containers counted as the scheduler does."""
    spec = pod.get("spec") or {}

    def of(container: dict) -> dict[str, int]:
        res = container.get("resources") or {}
        asked = {**(res.get("limits") or {}), **(res.get("requests") or {})}
        return {k: count(v) for k, v in asked.items() if k.startswith("nvidia.com/")}

    total: dict[str, int] = {}
    for c in spec.get("containers") or []:
        for k, v in of(c).items():
            total[k] = total.get(k, 0) + v
    for c in spec.get("initContainers") or []:
        for k, v in of(c).items():
            total[k] = max(total.get(k, 0), v)
    return total


@dataclass
class NodeGpus:
    name: str
    labels: dict[str, str]
    allocatable: dict[str, int]
    used: dict[str, int]
    # Ready, NotReady (the kubelet does not report, or says it is not ready), SchedulingDisabled
    # (cordoned): only a Ready node takes new pods, so only its GPUs are free.
    state: str = "Ready"
    reason: str = ""

    def free(self, resource: str) -> int:
        if self.state != "Ready":
            return 0
        return max(0, self.allocatable.get(resource, 0) - self.used.get(resource, 0))


@dataclass
class ClusterNode(NodeState):
    """A node as the capacity page draws it, in Kubernetes' words for its state."""

    @property
    def usable(self) -> bool:
        return self.state == "Ready"


def node_state(node: dict) -> tuple[str, str]:
    """(state, reason) as `kubectl get nodes` says it: NotReady where the Ready condition is
    not True (the node controller sets Unknown when the kubelet stops reporting), else
    SchedulingDisabled where cordoned."""
    conditions = {c.get("type"): c for c in (node.get("status") or {}).get("conditions") or []}
    ready = conditions.get("Ready")
    if ready is not None and ready.get("status") != "True":
        return "NotReady", ready.get("message") or ready.get("reason") or ""
    if (node.get("spec") or {}).get("unschedulable"):
        return "SchedulingDisabled", "cordoned"
    return "Ready", ""


def gpu_nodes(nodes: Iterable[dict], pods: Iterable[dict]) -> list[NodeGpus]:
    used: dict[str, dict[str, int]] = {}
    for pod in pods:
        node = (pod.get("spec") or {}).get("nodeName")
        if not node or (pod.get("status") or {}).get("phase") in TERMINATED:
            continue
        for k, v in pod_requests(pod).items():
            used.setdefault(node, {})[k] = used.setdefault(node, {}).get(k, 0) + v
    out = []
    for node in nodes:
        meta, status = node.get("metadata") or {}, node.get("status") or {}
        alloc = {k: count(v) for k, v in (status.get("allocatable") or {}).items() if k.startswith("nvidia.com/")}
        # A node that is not Ready or is cordoned takes nothing new: counted in totals, never free.
        state, reason = node_state(node)
        out.append(NodeGpus(meta["name"], dict(meta.get("labels") or {}), alloc, used.get(meta["name"], {}),
                            state, reason))
    return out


class ClusterCapacity(CapacitySource):
    """What the cluster has free, for the form, `catalog`, `capacity` and the TUI.

    `source` returns the current (nodes, pods); the backend's watch keeps them current.
    A source with a `version` (the ClusterView) is summed up once per version, not once per
    profile of every catalog request."""

    def __init__(self, cfg: PodbayConfig, settings: KubernetesSettings, source):
        self.cfg, self.settings, self.source = cfg, settings, source
        self._summed: tuple[int | None, list[NodeGpus]] = (None, [])
        # (version, spec, pools) -> (total, free), for the current version of the view only.
        self._counted: dict[tuple, tuple[int, int]] = {}

    def _all_nodes(self) -> list[NodeGpus]:
        version, summed = self._summed
        current = getattr(self.source, "version", None)
        if current is None or current != version:
            summed = gpu_nodes(*self.source())
            self._summed = (current, summed)
            self._counted = {}
        return summed

    def _nodes(self, pool: str) -> list[NodeGpus]:
        selector = dict(self.cfg.pools[pool].node_selector) if pool in self.cfg.pools else {}
        return [n for n in self._all_nodes() if all(n.labels.get(k) == v for k, v in selector.items())]

    def _fits(self, spec: ProfileKind, pool: str, nodes: list[NodeGpus], free: bool) -> int:
        try:
            ask = gpu_ask(spec, pool, self.settings.pool(pool))
        except ProfileUnavailable:
            return 0
        n = 0
        for node in nodes:
            if any(node.labels.get(k) != v for k, v in ask.node_selector.items()):
                continue
            if spec.kind != "mig" and "-MIG-" in node.labels.get(PRODUCT, ""):
                continue  # a node cut into MIG slices (single strategy) offers no whole GPU or share
            n += min((node.free(r) if free else node.allocatable.get(r, 0)) // c for r, c in ask.resources.items())
        return n

    def unit_weight(self, spec, pools):
        if spec.kind == "mig":
            for pool in pools:
                for node in self._nodes(pool):
                    family = family_for(node.labels.get(PRODUCT, "").replace("-", " "))
                    if family is not None and spec.mig_profile in family.profiles:
                        return Fraction(family.profiles[spec.mig_profile].compute_slices, family.compute_slices)
        return default_weight(spec)

    def counts(self, spec, pools, snap: Snapshot):
        # Not memoised on the book's snapshot: the cluster moves without the book knowing.
        if spec.kind == "cpu":
            return (-1, -1)
        self._all_nodes()  # brings the view's version in, and forgets counts of an older one
        # Keyed by the version too: a thread that counted an older view cannot file it as the new one's.
        key = (self._summed[0], spec, tuple(pools))
        counted = self._counted.get(key)
        if counted is None or getattr(self.source, "version", None) is None:
            total = free = 0
            for pool in pools:
                nodes = self._nodes(pool)
                total += self._fits(spec, pool, nodes, free=False)
                free += self._fits(spec, pool, nodes, free=True)
            if any(self.settings.pool(p).autoscaled for p in pools):
                free = -1  # the autoscaler adds what is asked for
            counted = self._counted[key] = (total, free)
        return counted

    def shortage(self, spec, pools):
        """Refuse at once what the scheduler could not place now, rather than leave a pod
        Pending: nothing free of the profile's resource on any node of its pools. Two spawns
        at once may both see the last one; the scheduler then leaves the second Pending, and
        the spawner reports its reason (spawner.py)."""
        if spec.kind == "cpu" or not getattr(self.source, "ready", None) or not self.source.ready.is_set():
            return None  # no view of the cluster yet: the scheduler decides
        if any(self.settings.pool(p).autoscaled for p in pools):
            return None  # the autoscaler adds a node for what waits
        total = free = 0
        for pool in pools:
            nodes = self._nodes(pool)
            total += self._fits(spec, pool, nodes, free=False)
            free += self._fits(spec, pool, nodes, free=True)
        if free > 0:
            return None
        where = ", ".join(pools)
        if total == 0:
            return f"no node of {where} offers it"
        return f"all {total} in {where} are in use; try another profile, or later"

    def devices(self, pool, snap):
        out: dict[str, Usage] = {}
        for node in self._nodes(pool):
            for resource, n in node.allocatable.items():
                if resource == GPU:
                    kind = "gpu"
                elif resource == SHARED:
                    kind = "shared"
                elif resource.startswith(MIG_LABEL):
                    kind = "mig-" + resource[len(MIG_LABEL):]
                else:
                    continue
                row = out.setdefault(kind, Usage(0, 0, 0))
                used = min(n, node.used.get(resource, 0))
                row.total += n
                row.used += used
                row.free += node.free(resource)
        return out

    def node_states(self, pool: str) -> list[NodeState]:
        """Each node of the pool with its GPUs (GPU Feature Discovery's nvidia.com/gpu.count,
        else the whole GPUs it offers) and how many are taken: whole GPUs, and a GPU for each
        started set of time-sliced shares; MIG slices are told in the reason."""
        out = []
        sliced = self.settings.pool(pool).time_slicing
        replicas = sliced.replicas if sliced else 1
        for node in self._nodes(pool):
            gpus = count(node.labels.get("nvidia.com/gpu.count", "0")) or node.allocatable.get(GPU, 0)
            taken = node.used.get(GPU, 0) + -(-node.used.get(SHARED, 0) // replicas)
            slices = {r: n for r, n in node.allocatable.items() if r.startswith(MIG_LABEL)}
            reason = node.reason
            if slices:
                used = sum(min(n, node.used.get(r, 0)) for r, n in slices.items())
                reason = "; ".join(filter(None, [reason, f"MIG: {used} of {sum(slices.values())} slices in use"]))
            out.append(ClusterNode(node.name, node.state, gpus, min(gpus, taken), reason))
        return out

    def most_gpus_per_node(self, pool):
        seen = max((n.allocatable.get(GPU, 0) for n in self._nodes(pool)), default=0)
        gpus = self.settings.pool(pool)
        if gpus.autoscaled:
            # A node group the autoscaler grows: its declared size, or no refusal for size.
            return max(seen, gpus.node_gpus or (0 if seen else UNKNOWN_SIZE))
        return seen

    def unknown(self) -> list[str]:
        """Nodes whose GPU Feature Discovery labels say what the config does not know: a MIG
        strategy other than their pool's, or MIG profiles podbay has no facts for. Reported
        (the hub's log, `podbay k8s check`), never silently counted."""
        known = known_mig_profiles()
        problems = []
        for pool in self.cfg.pools:
            strategy = self.settings.pool(pool).mig_strategy
            for node in self._nodes(pool):
                said = node.labels.get("nvidia.com/mig.strategy")
                # The operator labels every node with the cluster's strategy; only a node whose
                # GPUs are cut into MIG devices offers them under it.
                cut = "-MIG-" in node.labels.get(PRODUCT, "") or any(
                    k.startswith(MIG_LABEL) and k.endswith(".count") for k in node.labels)
                if said and cut and said != strategy:
                    problems.append(f"node {node.name} (pool {pool}) uses the {said} MIG strategy, the config "
                                    f"says {strategy}: its MIG devices are not counted")
                mig = sorted({k[len(MIG_LABEL):].rsplit(".", 1)[0] for k in node.labels
                              if k.startswith(MIG_LABEL) and k.endswith(".count")})
                strange = [m for m in mig if m not in known]
                if strange:
                    problems.append(f"node {node.name} (pool {pool}) offers MIG profiles podbay does not know: "
                                    + ", ".join(strange))
        return problems
