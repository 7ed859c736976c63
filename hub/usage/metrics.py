"""podbay's Prometheus metrics (prometheus-client), collected when scraped from the quota
book, the job table and the holdings: nothing is counted twice in memory, and a restart of
the service loses no counter (held and used GPU-hours and idle actions are read from the
database)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

if TYPE_CHECKING:
    from ..jobs import JobManager
    from ..portal import Portal
    from .policy import Sampler
    from .store import UsageStore


class PodbayCollector(Collector):
    def __init__(self, portal: "Portal", jobs: "JobManager", store: "UsageStore", sampler: "Sampler | None",
                 capacity):
        self.portal, self.jobs, self.store, self.sampler, self.capacity = portal, jobs, store, sampler, capacity

    def collect(self):
        cap = self.capacity()
        devices = GaugeMetricFamily("podbay_capacity_devices", "Devices per pool and kind (full, mig, shared slots), "
                                    "by state", labels=["pool", "kind", "state"])
        profiles = GaugeMetricFamily("podbay_capacity_profile_free", "How many more of each GPU profile fit now",
                                     labels=["pool", "profile"])
        for pool in cap.pools:
            for kind, row in pool.devices.items():
                devices.add_metric([pool.pool, kind, "used"], row.used)
                devices.add_metric([pool.pool, kind, "free"], row.free)
            for pid, row in pool.profiles.items():
                profiles.add_metric([pool.pool, pid], row.free)
        yield devices
        yield profiles

        held = GaugeMetricFamily("podbay_gpu_units_held", "GPU units held now (workspaces) and whole GPUs (jobs)",
                                 labels=["team", "kind"])
        claims = GaugeMetricFamily("podbay_claims", "Workspaces and jobs holding a claim now", labels=["kind"])
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

        queue = GaugeMetricFamily("podbay_jobs", "Training jobs by state (the queue: queued, starting)",
                                  labels=["state"])
        for state, n in sorted(self.jobs.store.count_by_state().items()):
            queue.add_metric([state], n)
        yield queue

        held_h = CounterMetricFamily("podbay_gpu_hours_held", "GPU-hours held, since the oldest kept holding",
                                     labels=["team", "kind"])
        used_h = CounterMetricFamily("podbay_gpu_hours_used", "GPU-hours used (held × measured utilisation)",
                                     labels=["team", "kind"])
        for team, kind, h, u in self.store.totals():
            held_h.add_metric([team or "", kind], h)
            used_h.add_metric([team or "", kind], u)
        yield held_h
        yield used_h

        acts = CounterMetricFamily("podbay_idle_actions", "Idle rules' actions taken (warn, release-gpu, stop), "
                                   "carried out or not", labels=["action"])
        for action, n in sorted(self.store.action_counts().items()):
            acts.add_metric([action], n)
        yield acts

        util = GaugeMetricFamily("podbay_workspace_gpu_utilization", "Mean GPU utilisation (percent) of each "
                                 "open GPU workspace and job over its life so far", labels=["user", "key", "profile"])
        idle = GaugeMetricFamily("podbay_workspace_idle_seconds", "How long each GPU workspace has been idle "
                                 "(0: active)", labels=["user", "key", "profile"])
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

        up = GaugeMetricFamily("podbay_usage_source_up", "1 if the last utilisation read worked", labels=["type"])
        if self.sampler is not None:
            up.add_metric([self.portal.cfg.usage.source.type], 0 if self.sampler.last_error else 1)
        yield up


def registry_for(collector: PodbayCollector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


__all__ = ["PodbayCollector", "registry_for"]
