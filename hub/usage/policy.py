"""Matching utilisation to holdings, the idle clock, and the idle rules' actions.

Every `usage.interval` the service reads the source once, matches each reading to what
holds that device (by GPU UUID, MIG instance or pod), records the round, and runs the idle
rules over the open GPU workspaces:

- any sample at or above the rule's `below` is activity: the clock and any notice reset;
- a workspace idle for `after − warn_before` gets a notice (the hub's home page, the CLI and
  TUI, `podbay notices` inside the workspace), saying when and what will happen and how to
  keep the GPU;
- idle for `after`, and warned at least `warn_before` ago: the action (`release-gpu` restarts
  it on the CPU profile with the same image, volumes and home; `stop` stops it).

Nothing is decided without measurements: a device without a reading (no exporter on its
node, a MIG instance under NVML, a source that is down) keeps its clock where it was, and a
gap of more than three intervals (and five minutes) starts the idle streak again. The clock, notices and
actions are in the database, so a restart of the service neither forgets nor repeats them.
Jobs are measured (showback, jobs that never used their GPUs) but never acted on.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import defaultdict
from typing import TYPE_CHECKING, Callable


from ..config import PodbayConfig
from ..inventory import Inventory
from .settings import IdleRule, fmt_duration
from .sources import Reading, Source, SourceUnavailable
from .store import Holding, Round, UsageStore

if TYPE_CHECKING:
    from podbay.tui.hubapi import HubAPI

log = logging.getLogger("podbay.usage")

# A gap of this many intervals without a reading (and at least GAP_FLOOR seconds: a restart
# of the hub or the service is not a gap) breaks an idle streak.
GAP_INTERVALS = 3
GAP_FLOOR = 300.0


class Matcher:
    """Which readings measure a holding's devices."""

    def __init__(self, inventory: Inventory | None, job_pod_prefix: str | None = None):
        # MIG UUID → (parent GPU UUID, GPU instance id, profile)
        self.mig = {}
        per_profile: dict[tuple[str, str], int] = defaultdict(int)
        for d in (inventory.devices if inventory else []):
            if d.kind == "mig" and d.parent_uuid:
                self.mig[d.visible_id] = (d.parent_uuid, d.gpu_instance, d.mig_profile)
                per_profile[(d.parent_uuid, d.mig_profile)] += 1
        # A profile found once on its GPU identifies its instance even without the GI id.
        self.unique_profile = {k for k, n in per_profile.items() if n == 1}
        self.job_pod_prefix = job_pod_prefix

    def index(self, readings: list[Reading]) -> dict:
        by: dict = defaultdict(list)
        for r in readings:
            if r.gpu_instance is not None:
                by[("gi", r.uuid, r.gpu_instance)].append(r.util)
                if r.mig_profile:
                    by[("profile", r.uuid, r.mig_profile)].append(r.util)
            else:
                by[("uuid", r.uuid)].append(r.util)
            if r.pod:
                by[("pod", r.pod)].append(r.util)
            if r.hpc_job:
                by[("hpc_job", r.hpc_job)].append(r.util)
        return by

    def measure(self, holding: Holding, by: dict) -> tuple[float, float] | None:
        """(mean, max) utilisation of the holding's devices now, or None if none was read."""
        utils: list[float] = []
        for _node, visible in holding.devices:
            found = by.get(("uuid", visible))
            if not found and visible in self.mig:
                parent, gi, profile = self.mig[visible]
                found = by.get(("gi", parent, gi)) if gi is not None else None
                if not found and (parent, profile) in self.unique_profile:
                    found = by.get(("profile", parent, profile))
            if not found and (made := holding.ref.get("made", {}).get(visible)):
                # A MIG instance made for this holding: its GPU instance id was recorded then.
                found = by.get(("gi", made["gpu"], made["gpu_instance"]))
            if found:
                utils.append(max(found))
        if not holding.devices:
            # Where the engine places (Kubernetes): the pod mapping of DCGM's exporter.
            pod, slurm_id = holding.ref.get("pod"), holding.ref.get("slurm_id")
            if pod:
                utils += by.get(("pod", pod), [])
            elif slurm_id:
                # Slurm placed it: DCGM's HPC job mapping names the job on each of its GPUs.
                utils += by.get(("hpc_job", str(slurm_id)), [])
            elif holding.kind == "job" and self.job_pod_prefix:
                job_id = holding.key.split(":", 1)[1]
                prefix = f"{self.job_pod_prefix}-job-{job_id}-"
                utils += [u for (kind, *rest), us in by.items() if kind == "pod" and rest[0].split("/", 1)[-1].startswith(prefix) for u in us]
        if not utils:
            return None
        return sum(utils) / len(utils), max(utils)


class IdlePolicy:
    def __init__(self, cfg: PodbayConfig, interval: float):
        self.cfg, self.interval = cfg, interval

    def rule(self, h: Holding) -> IdleRule | None:
        if h.kind != "workspace" or not h.holds_gpu:
            return None
        return self.cfg.idle.rule_for(h.pool, h.profile)

    def step(self, h: Holding, measured: tuple[float, float] | None, now: float) -> tuple[dict, dict | None]:
        """The holding's new clock columns and the action to record, if any."""
        rule = self.rule(h)
        clock: dict = {}
        if measured is not None:
            clock["last_sample"] = now
            gap = h.last_sample is None or now - h.last_sample > max(GAP_INTERVALS * self.interval, GAP_FLOOR)
            if rule is not None:
                if measured[1] >= rule.below:
                    if h.idle_since is not None or h.warned_at is not None:
                        clock.update(idle_since=None, warned_at=None)
                elif h.idle_since is None or gap:
                    clock["idle_since"] = now
                    clock["warned_at"] = None
        # Decided only on a measurement: a round without one (no exporter, the source down)
        # never warns or acts on time alone.
        if rule is None or h.acted or measured is None:
            return clock, None
        idle_since = clock.get("idle_since", h.idle_since)
        warned_at = clock.get("warned_at", h.warned_at)
        if idle_since is None:
            return clock, None
        # A keep ends where the clock starts again.
        since = max(idle_since, h.keep_until or 0)
        if h.keep_until and h.keep_until > now:
            return clock, None
        idle_for = now - since
        deadline = since + rule.after
        if rule.action == "warn":
            if idle_for >= rule.after and warned_at is None:
                clock["warned_at"] = now
                return clock, {"action": "warn", "message": f"idle below {rule.below:g}% for "
                                                            f"{fmt_duration(now - idle_since)}: warned"}
            return clock, None
        if warned_at is None:
            if idle_for >= rule.after - rule.warn_before:
                clock["warned_at"] = now
                return clock, None
            return clock, None
        # Never without the notice's full time, even when the service was down meanwhile.
        if now >= max(deadline, warned_at + rule.warn_before):
            # `acted` is set with the action's record, only if nothing (a keep) came between.
            return clock, {"action": rule.action, "message": f"idle below {rule.below:g}% since "
                           f"{time.strftime('%Y-%m-%d %H:%M %Z', time.localtime(since))} "
                           f"(rule {rule.name or self.cfg.idle.rules.index(rule) + 1})"}
        return clock, None


def notices_for(cfg: PodbayConfig, store: UsageStore, policy: "IdlePolicy", user: str, now: float) -> list[dict]:
    """What a person is told: warnings on their idle GPU workspaces (what will happen, when,
    and how to keep the GPU), then what the idle rules did to theirs lately. The service's
    /notices, the CLI and TUI, and the hub's home page all show these."""
    warned, acts = store.notices(user, now)
    out = []
    for h in warned:
        rule = policy.rule(h)
        if rule is None:
            continue
        since = max(h.idle_since or now, h.keep_until or 0)
        deadline = None if rule.action == "warn" else max(since + rule.after, (h.warned_at or now) + rule.warn_before)
        what = {"release-gpu": "its GPU is released (it restarts on the CPU profile with the same image, volumes "
                               "and home; running kernels end)",
                "stop": "it is stopped (running kernels end)"}.get(rule.action)
        message = (f"{h.server} ({h.profile}) has used its GPU below {rule.below:g}% for "
                   f"{fmt_duration(now - (h.idle_since or now))}. "
                   + (f"In {fmt_duration(max(0.0, deadline - now))} {what}. " if deadline else
                      "Stop it, or restart it on the CPU profile, if you no longer need the GPU. ")
                   + "Any GPU activity resets the clock"
                   + (f"; `podbay ws keep {h.server} --hours N` keeps it longer (at most "
                      f"{fmt_duration(cfg.idle.keep_max)})." if cfg.idle.keep_max else "."))
        out.append(dict(workspace=h.server, kind="warning", profile=h.profile, at=h.warned_at or now,
                        deadline=deadline, action=rule.action, state=None, message=message))
    for a in acts:
        if a.action == "warn":
            continue
        out.append(dict(workspace=a.server, kind=a.action, profile=a.profile, at=a.at, deadline=None,
                        action=a.action, state=a.state, message=f"{a.server} ({a.profile}): {a.message}"))
    return out


class HubServers:
    """Stopping and restarting a person's workspace through JupyterHub's REST API, as the
    service (its role has the `servers` scope)."""

    def __init__(self, api: "HubAPI"):
        self.api = api

    async def _server(self, user: str, server: str, stopped: bool) -> dict | None:
        r = await self.api.user(user, stopped=stopped)
        r.raise_for_status()
        return (r.json().get("servers") or {}).get(server)

    async def options(self, user: str, server: str) -> dict | None:
        model = await self._server(user, server, stopped=True)
        return None if model is None else dict(model.get("user_options") or {})

    async def running(self, user: str, server: str) -> bool:
        model = await self._server(user, server, stopped=False)
        return bool(model and (model.get("ready") or model.get("pending")) and not model.get("stopped"))

    async def stop(self, user: str, server: str, timeout: float = 120) -> None:
        r = await self.api.stop_server(user, server)
        if r.status_code not in (202, 204, 404):
            raise RuntimeError(f"the hub refused to stop it ({r.status_code}: {r.text[:200]})")
        deadline = time.monotonic() + timeout
        while await self.running(user, server):
            if time.monotonic() > deadline:
                raise RuntimeError(f"it did not stop within {timeout:.0f} s")
            await asyncio.sleep(0.5)

    async def start(self, user: str, server: str, options: dict, timeout: float = 600) -> None:
        r = await self.api.start_server(user, server, options)
        if r.status_code not in (201, 202):
            raise RuntimeError(f"the hub did not start it ({r.status_code}: {r.text[:300]})")
        # 202: still starting. Done only when it is ready; a start that fails is a failure.
        deadline = time.monotonic() + timeout
        while True:
            model = await self._server(user, server, stopped=False) or {}
            if model.get("ready"):
                return
            if not model.get("pending"):
                raise RuntimeError("it did not come up (its log in the hub says why)")
            if time.monotonic() > deadline:
                raise RuntimeError(f"it was not ready within {timeout:.0f} s")
            await asyncio.sleep(0.5)


class Sampler:
    """The service's loop: read, match, record, apply the idle rules, carry out actions."""

    def __init__(self, cfg: PodbayConfig, store: UsageStore, inventory: Inventory | None,
                 servers: HubServers | None, source: Source | None = None, clock: Callable[[], float] = time.time,
                 job_pod_prefix: str | None = None):
        self.cfg, self.store, self.servers = cfg, store, servers
        self.interval = cfg.usage.interval
        self.source = source or Source(cfg.usage.source, window=cfg.usage.interval)
        self.matcher = Matcher(inventory, job_pod_prefix)
        self.policy = IdlePolicy(cfg, self.interval)
        self.clock = clock
        self.last_error: str | None = None
        self.rounds = 0

    async def run(self) -> None:
        await self.resume()
        pruned_at = 0.0
        while True:
            started = time.monotonic()
            try:
                await self.round()
            except Exception:  # noqa: BLE001 - the next round tries again; never stop measuring
                log.exception("a usage round failed")
            if time.monotonic() - pruned_at > 3600:
                pruned_at = time.monotonic()
                try:
                    await asyncio.to_thread(self.store.prune, self.clock(), self.cfg.usage.retention_days)
                except Exception:  # noqa: BLE001
                    log.exception("pruning old usage failed")
            await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - started)))

    async def round(self) -> Round:
        now = self.clock()
        try:
            readings = await self.source.read()
            self.last_error = None
        except SourceUnavailable as e:
            if self.last_error != str(e):
                log.warning("GPU utilisation not read: %s; no idle clock advances until it is", e)
            self.last_error = str(e)
            readings = []
        by = self.matcher.index(readings)
        holdings = await asyncio.to_thread(self.store.open_holdings)
        rnd = Round(now=now)
        for h in holdings:
            measured = self.matcher.measure(h, by) if h.holds_gpu else None
            if measured is not None:
                rnd.measured[h.id] = measured
            clock, action = self.policy.step(h, measured, now)
            if clock:
                rnd.clock[h.id] = clock
            if action is not None and action["action"] != "warn":
                rnd.actions.append(dict(holding_id=h.id, user=h.user, server=h.server, action=action["action"],
                                        profile=h.profile, at=now, state="started", message=action["message"]))
            elif action is not None:
                rnd.actions.append(dict(holding_id=h.id, user=h.user, server=h.server, action="warn",
                                        profile=h.profile, at=now, state="done", message=action["message"]))
        recorded = await asyncio.to_thread(self.store.write_round, rnd)
        self.rounds += 1
        for action_id, values in recorded:
            if values["state"] != "started":
                continue
            await self.carry_out(action_id, values["holding_id"], values["user"], values["server"], values["action"])
        return rnd

    async def resume(self) -> None:
        """Finish actions a previous run recorded but did not see through."""
        for row in await asyncio.to_thread(self.store.unfinished_actions):
            log.info("finishing the %s of %s/%s begun before a restart", row.action, row.user, row.server)
            await self.carry_out(row.id, row.holding_id, row.user, row.server, row.action, step=row.state,
                                 options=json.loads(row.options or "{}"))

    async def carry_out(self, action_id: int, holding_id: int | None, user: str, server: str, action: str,
                        step: str = "started", options: dict | None = None) -> None:
        """Stop, or stop and start on the CPU profile, the workspace the rule decided on, and
        only that one: if the person stopped it or started it anew since, nothing is done.
        A release-gpu records the workspace's options before stopping it, so that a restart
        of the service in between still starts it again on the CPU profile."""
        finish = self.store.finish_action
        if self.servers is None:
            await asyncio.to_thread(finish, action_id, "failed", "no hub to act through")
            return
        key = f"workspace:{user}/{server}"
        try:
            current = await asyncio.to_thread(self.store.open_holding_id, key)
            if step == "restarting" and current not in (None, holding_id):
                # Started anew since it was stopped: by this action (before a restart of the
                # service let it say so) if it runs on the CPU profile, else by the person.
                now = await self.servers.options(user, server) or {}
                done = now.get("profile") == self.cfg.idle.cpu_profile
                await asyncio.to_thread(finish, action_id, "done" if done else "skipped",
                                        "restarted on the CPU profile: its GPU was idle" if done else
                                        "it was started anew before the rule acted")
                return
            if step == "started" and current != holding_id:
                await asyncio.to_thread(finish, action_id, "skipped",
                                        "it was stopped or started anew before the rule acted")
                return
            if action == "stop":
                await self.servers.stop(user, server)
                message = "stopped: its GPU was idle"
            else:
                cpu = self.cfg.idle.cpu_profile
                if step == "started":
                    options = await self.servers.options(user, server)
                    if options is None:
                        await asyncio.to_thread(finish, action_id, "skipped", "the workspace no longer exists")
                        return
                    await asyncio.to_thread(self.store.set_action, action_id, "restarting", options)
                await self.servers.stop(user, server)
                await self.servers.start(user, server, {**(options or {}), "profile": cpu})
                message = f"restarted on {cpu} (same image, volumes and home): its GPU was idle"
            log.info("idle rule: %s/%s %s", user, server, message)
            await asyncio.to_thread(finish, action_id, "done", message)
        except Exception as e:  # noqa: BLE001 - recorded for the person and the operator
            log.warning("idle rule: could not %s %s/%s: %s", action, user, server, e)
            if action == "release-gpu" and await self._stopped(user, server):
                # Stopped, not started again: the GPU is back in the pool, the home and
                # volumes are kept; the person starts it again (the notice says how).
                await asyncio.to_thread(finish, action_id, "failed",
                                        f"stopped to release its idle GPU, but starting it on {self.cfg.idle.cpu_profile} "
                                        f"failed ({type(e).__name__}: {e}). Your home and volumes are kept: start it "
                                        f"again with `podbay ws new {server} --profile {self.cfg.idle.cpu_profile}`")
                return
            # Not stopped (the hub refused or is down): it keeps its GPU for now, with a new
            # notice, and the rule tries again after warn_before.
            await asyncio.to_thread(finish, action_id, "failed", f"{type(e).__name__}: {e}; tried again later")
            if holding_id is not None:
                await asyncio.to_thread(self.store.retry_later, holding_id, self.clock())

    async def _stopped(self, user: str, server: str) -> bool:
        try:
            return not await self.servers.running(user, server)
        except Exception:  # noqa: BLE001 - the hub is not reachable: not known to be stopped
            return False


__all__ = ["HubServers", "IdlePolicy", "Matcher", "Sampler", "notices_for"]
