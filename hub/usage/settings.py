"""podbay.yaml's `usage:` and `idle:` sections: where GPU utilisation comes from, how long
it is kept, and what happens to a GPU that a workspace holds but does not use.

```yaml
usage:
  source: {type: dcgm, urls: ["http://gpu-node-1:9400/metrics"]}
  interval: 60s
idle:
  rules:
    - {pools: [dev], below: 5, after: 2h, warn_before: 30m, action: release-gpu}
  keep_max: 8h
  culler: {timeout: 1d}
```
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")


def parse_duration(value) -> float:
    """Seconds from `90`, `90s`, `30m`, `2h`, `1d` or `1w` (what people write in YAML)."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or text like 30m, 2h, 1d")
    if isinstance(value, (int, float)):
        return float(value)
    m = _DURATION.match(str(value))
    if not m:
        raise ValueError(f"{value!r} is not a duration: write seconds or text like 90s, 30m, 2h, 1d")
    return float(m[1]) * _UNITS[m[2] or "s"]


Duration = Annotated[float, BeforeValidator(parse_duration)]


def fmt_duration(seconds: float) -> str:
    """A duration for people: 45s, 12m, 2h 30m, 3d 4h."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        h, m = divmod(s // 60, 60)
        return f"{h}h {m}m" if m else f"{h}h"
    d, h = divmod(s // 3600, 24)
    return f"{d}d {h}h" if h else f"{d}d"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class UsageSource(_Model):
    """Where utilisation is read.

    dcgm: NVIDIA's DCGM exporters' /metrics (one URL per GPU node), read directly.
    prometheus: a Prometheus server that scrapes them (its HTTP query API).
    nvml: this machine's driver through NVML (local and docker backends on one GPU server
      without DCGM; MIG instances cannot be measured this way and are never called idle).
    none: no utilisation; holdings (showback) are still recorded, idle rules never act.
    """

    # dcgm, prometheus, nvml or none (above).
    type: Literal["dcgm", "prometheus", "nvml", "none"] = "none"
    # dcgm: the exporters' /metrics URLs, one per GPU node.
    urls: list[str] = []
    # prometheus: the server's URL (http://prometheus:9090).
    url: str | None = None
    # Prometheus only: extra label matchers for the queries, e.g. `cluster="a"`.
    selector: str = ""
    # How long one read may take.
    timeout: Duration = Field(default=10.0, gt=0, le=120)

    @model_validator(mode="after")
    def _where(self):
        if self.type == "dcgm" and not self.urls:
            raise ValueError("type dcgm needs urls: the DCGM exporters' /metrics URLs, one per GPU node")
        if self.type == "prometheus" and not self.url:
            raise ValueError("type prometheus needs url: the Prometheus server, e.g. http://prometheus:9090")
        return self


class UsageSettings(_Model):
    # Where utilisation is read.
    source: UsageSource = UsageSource()
    # How often utilisation is read and the idle rules are checked.
    interval: Duration = Field(default=60.0, ge=1, le=3600)
    # Hourly utilisation per holding is kept this long; holdings (who held what, when) too.
    # One row per held workspace or job per hour: bounded by what runs, not by the interval.
    retention_days: int = Field(default=400, ge=1, le=3650)


class IdleRule(_Model):
    """One idle rule. It applies to GPU workspaces of the listed pools and/or profiles (both
    empty: every GPU workspace). The first rule that applies wins."""

    # What notices and logs call the rule.
    name: str | None = None
    # The pools it applies to (empty: all).
    pools: list[str] = []
    # The profiles it applies to (empty: all GPU profiles).
    profiles: list[str] = []
    # GPU utilisation (percent) below which the workspace counts as idle. On several GPUs,
    # any one at or above it is activity.
    below: float = Field(default=5.0, gt=0, le=100)
    # Idle this long: the action is taken.
    after: Duration = Field(gt=0)
    # warn (a notice only), release-gpu (restart on the CPU profile, home and volumes kept) or stop.
    action: Literal["warn", "release-gpu", "stop"] = "warn"
    # The notice comes this long before the action (release-gpu, stop).
    warn_before: Duration = Field(default=1800.0, ge=0)

    @model_validator(mode="after")
    def _order(self):
        if self.action != "warn" and self.warn_before >= self.after:
            raise ValueError(f"warn_before ({fmt_duration(self.warn_before)}) must be shorter than after "
                             f"({fmt_duration(self.after)}): the notice comes before the action")
        return self

    def applies(self, pool: str | None, profile: str) -> bool:
        return (not self.pools or pool in self.pools) and (not self.profiles or profile in self.profiles)


class CullerSettings(_Model):
    """jupyterhub-idle-culler, run by the hub as a managed service: stops whole workspaces
    that nobody used (browser, terminal, kernels) for `timeout`, GPU or not."""

    # Unused this long: the workspace is stopped.
    timeout: Duration = Field(gt=0)
    # How often the culler looks.
    every: Duration = Field(default=600.0, gt=0)
    # Stop workspaces this old even when active (0: never).
    max_age: Duration = Field(default=0.0, ge=0)
    # How many hub API calls it makes at once.
    concurrency: int = Field(default=10, ge=1, le=100)


class IdleSettings(_Model):
    # The idle rules, first match wins.
    rules: list[IdleRule] = []
    # How far ahead a person may say "keep my GPU until …" (0: they may not).
    keep_max: Duration = Field(default=8 * 3600.0, ge=0)
    # The profile a `release-gpu` restarts a workspace on.
    cpu_profile: str = "cpu"
    # Run jupyterhub-idle-culler (unset: no culler).
    culler: CullerSettings | None = None

    def rule_for(self, pool: str | None, profile: str) -> IdleRule | None:
        return next((r for r in self.rules if r.applies(pool, profile)), None)


__all__ = ["CullerSettings", "Duration", "IdleRule", "IdleSettings", "UsageSettings", "UsageSource",
           "fmt_duration", "parse_duration"]
