"""podbay's Prometheus metrics (prometheus-client), collected when scraped from the quota
book, the job table and the holdings: nothing is counted twice in memory, and a restart of
the service loses no counter (held and used GPU-hours and idle actions are read from the
database)."""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

if TYPE_CHECKING:
    from ..jobs import JobManager
    from ..portal import Portal
    from .policy import Sampler
    from .store import UsageStore


class Metric(NamedTuple):
    name: str
    kind: str  # "gauge" or "counter"
    help: str
    labels: tuple[str, ...]


# Every family podbay exports: what collect() builds, and what docs/reference/metrics.md lists.
METRICS: dict[str, Metric] = {m.name: m for m in [
    Metric("podbay_capacity_devices", "gauge", "Devices per pool and kind (full, mig, shared slots), by state",
           ("pool", "kind", "state")),
    Metric("podbay_capacity_profile_free", "gauge", "How many more of each GPU profile fit now",
           ("pool", "profile")),
    Metric("podbay_gpu_units_held", "gauge", "GPU units held now (workspaces) and whole GPUs (jobs)",
           ("team", "kind")),
    Metric("podbay_claims", "gauge", "Workspaces and jobs holding a claim now",
           ("kind",)),
    Metric("podbay_jobs", "gauge", "Training jobs by state (the queue: queued, starting)",
           ("state",)),
    Metric("podbay_gpu_hours_held", "counter", "GPU-hours held, since the oldest kept holding",
           ("team", "kind")),
    Metric("podbay_gpu_hours_used", "counter", "GPU-hours used (held × measured utilisation)",
           ("team", "kind")),
    Metric("podbay_idle_actions", "counter",
           "Idle rules' actions taken (warn, release-gpu, stop), carried out or not",
           ("action",)),
    Metric("podbay_workspace_gpu_utilization", "gauge",
           "Mean GPU utilisation (percent) of each open GPU workspace and job over its life so far",
           ("user", "key", "profile")),
    Metric("podbay_workspace_idle_seconds", "gauge", "How long each GPU workspace has been idle (0: active)",
           ("user", "key", "profile")),
    Metric("podbay_usage_source_up", "gauge", "1 if the last utilisation read worked",
           ("type",)),
]}


def family(name: str) -> GaugeMetricFamily | CounterMetricFamily:
    m = METRICS[name]
    make = GaugeMetricFamily if m.kind == "gauge" else CounterMetricFamily
    return make(m.name, m.help, labels=list(m.labels))


class PodbayCollector(Collector):
    def __init__(self, portal: "Portal", jobs: "JobManager", store: "UsageStore", sampler: "Sampler | None",
                 capacity):
        self.portal, self.jobs, self.store, self.sampler, self.capacity = portal, jobs, store, sampler, capacity

    def collect(self):
        cap = self.capacity()
        devices = family("podbay_capacity_devices")
        profiles = family("podbay_capacity_profile_free")
        for pool in cap.pools:
            for kind, row in pool.devices.items():
                devices.add_metric([pool.pool, kind, "used"], row.used)
                devices.add_metric([pool.pool, kind, "free"], row.free)
            for pid, row in pool.profiles.items():
                profiles.add_metric([pool.pool, pid], row.free)
        yield devices
        yield profiles

        held = family("podbay_gpu_units_held")
        claims = family("podbay_claims")
        totals: dict = {}
        counts: dict = {}
        for a in self.portal.book.allocations():
            weight = float(a.gpus if a.kind == "job" else a.units)
            totals[(a.team or "", a.kind)] = totals.get((a.team or "", a.kind), 0.0) + weight
            counts[a.kind] = counts.get(a.kind, 0) + 1
        for (team, kind), v in sorted(totals.items()):
            held.add_metric([team, kind], v)
        for kind in ("workspace", "job"):
            claims.add_metric([kind], counts.get(kind, 0))
        yield held
        yield claims

        queue = family("podbay_jobs")
        for state, n in sorted(self.jobs.store.count_by_state().items()):
            queue.add_metric([state], n)
        yield queue

        held_h = family("podbay_gpu_hours_held")
        used_h = family("podbay_gpu_hours_used")
        for team, kind, h, u in self.store.totals():
            held_h.add_metric([team or "", kind], h)
            used_h.add_metric([team or "", kind], u)
        yield held_h
        yield used_h

        acts = family("podbay_idle_actions")
        for action, n in sorted(self.store.action_counts().items()):
            acts.add_metric([action], n)
        yield acts

        util = family("podbay_workspace_gpu_utilization")
        idle = family("podbay_workspace_idle_seconds")
        for h in self.store.open_holdings():
            if not h.holds_gpu:
                continue
            if h.samples:
                util.add_metric([h.user, h.key, h.profile], h.util_sum / h.samples)
            if h.kind == "workspace":
                idle.add_metric([h.user, h.key, h.profile],
                                (h.last_sample - h.idle_since) if h.idle_since and h.last_sample else 0.0)
        yield util
        yield idle

        up = family("podbay_usage_source_up")
        if self.sampler is not None:
            up.add_metric([self.portal.cfg.usage.source.type], 0 if self.sampler.last_error else 1)
        yield up


def registry_for(collector: PodbayCollector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


__all__ = ["METRICS", "Metric", "PodbayCollector", "family", "registry_for"]
