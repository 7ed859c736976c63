"""GPU utilisation as clusters really expose it, as a list of `Reading`s.

- NVIDIA's DCGM exporter (Prometheus text format, read with prometheus-client's parser):
  `DCGM_FI_DEV_GPU_UTIL` (percent) per GPU, and `DCGM_FI_PROF_GR_ENGINE_ACTIVE` (a ratio)
  per MIG instance, which NVML cannot measure. A MIG series carries its parent's UUID and
  `GPU_I_ID` / `GPU_I_PROFILE`, never a MIG UUID. With Kubernetes pod mapping on, series
  carry `pod`/`namespace` (older exporters: `pod_name`/`pod_namespace`); scraped by a
  Prometheus that does not honour the exporter's labels (a ServiceMonitor's default), they
  arrive as `exported_pod`/`exported_namespace`, and `pod` names the exporter's own pod.
- A Prometheus server's query API, for the same series where Prometheus scrapes the exporters.
- NVML (pynvml) on this machine, where no DCGM runs: whole GPUs only.

Label names are matched without regard to case: pipelines in front of the exporter lower-case
them (see the fixtures' dcgm-exporter#272 excerpt).
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
import httpx

from .settings import UsageSource

GPU_UTIL = "dcgm_fi_dev_gpu_util"
# dcgm-exporter 1.x (gpu-monitoring-tools) named it so.
UTIL_NAMES = {GPU_UTIL, "dcgm_gpu_utilization"}
ENGINE_ACTIVE = "dcgm_fi_prof_gr_engine_active"


class SourceUnavailable(Exception):
    """Utilisation could not be read this round; the message says from where and why."""


@dataclass(frozen=True)
class Reading:
    """One device's utilisation now, in percent (0–100)."""

    uuid: str  # the GPU's UUID (for a MIG instance: its parent's), or a MIG UUID from NVML
    util: float
    gpu_instance: int | None = None  # MIG: the GPU instance id
    mig_profile: str | None = None
    hostname: str | None = None
    pod: str | None = None  # "namespace/pod" with Kubernetes pod mapping
    # The Slurm job on the GPU, with the exporter's HPC job mapping (`hpc_job`: the job id a
    # Slurm prolog wrote in the mapping folder for the GPU).
    hpc_job: str | None = None

    @property
    def is_mig(self) -> bool:
        return self.gpu_instance is not None or self.uuid.startswith("MIG-")


def _labels(raw: dict[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in raw.items()}


def reading_from(name: str, labels: dict[str, str], value: float) -> Reading | None:
    """A Reading from one series (metric name, labels, value), or None if it is not one."""
    name, labels = name.lower(), _labels(labels)
    uuid = labels.get("uuid")
    if not uuid or math.isnan(value):
        return None
    gi = labels.get("gpu_i_id")
    # Prometheus with honor_labels false (kube-prometheus-stack's ServiceMonitor default)
    # renames each of the exporter's labels that its target also has: pod/namespace then name
    # the exporter's own pod. Each is read on its own (a target may carry one and not the other).
    pod = labels.get("exported_pod") or labels.get("pod") or labels.get("pod_name")
    namespace = labels.get("exported_namespace") or labels.get("namespace") or labels.get("pod_namespace")
    common = dict(uuid=uuid, hostname=labels.get("hostname"), pod=f"{namespace}/{pod}" if pod and namespace else None,
                  gpu_instance=int(gi) if gi not in (None, "") else None, mig_profile=labels.get("gpu_i_profile") or None,
                  hpc_job=labels.get("hpc_job") or None)
    if name in UTIL_NAMES:
        return Reading(util=float(value), **common)
    if name == ENGINE_ACTIVE:
        # A ratio (0–1) of time the graphics/compute engine was busy.
        return Reading(util=float(value) * 100, **common)
    return None


def parse_dcgm(text: str) -> list[Reading]:
    """The utilisation series of one DCGM exporter scrape (Prometheus text format)."""
    from prometheus_client.parser import text_string_to_metric_families

    util: dict[tuple, Reading] = {}
    engine: dict[tuple, Reading] = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                r = reading_from(sample.name, sample.labels, sample.value)
                if r is None:
                    continue
                key = (r.uuid, r.gpu_instance, r.pod, r.hpc_job)
                (util if sample.name.lower() in UTIL_NAMES else engine)[key] = r
    except ValueError as e:
        raise SourceUnavailable(f"the exporter's answer is not Prometheus text format ({e})") from None
    return _combine(util, engine)


def _combine(util: dict[tuple, Reading], engine: dict[tuple, Reading]) -> list[Reading]:
    out = dict(util)
    for key, r in engine.items():
        # A MIG instance has only engine activity; a whole GPU uses it where GPU_UTIL is missing.
        if r.gpu_instance is not None or key not in out:
            out[key] = r
    # On a MIG-enabled GPU, the parent's GPU_UTIL series is not any instance's.
    mig_parents = {r.uuid for r in out.values() if r.gpu_instance is not None}
    return [r for r in out.values() if r.gpu_instance is not None or r.uuid not in mig_parents]


def parse_prometheus(answers: list[tuple[str, dict]]) -> list[Reading]:
    """Readings from Prometheus query API answers: [(metric name, JSON body), …]."""
    util: dict[tuple, Reading] = {}
    engine: dict[tuple, Reading] = {}
    for name, body in answers:
        if body.get("status") != "success":
            raise SourceUnavailable(f"Prometheus refused the query for {name}: {body.get('error', body.get('status'))}")
        for item in (body.get("data") or {}).get("result") or []:
            labels = dict(item.get("metric") or {})
            try:
                value = float(item["value"][1])
            except (KeyError, IndexError, TypeError, ValueError):
                continue
            r = reading_from(name, labels, value)
            if r is not None:
                (util if name == GPU_UTIL else engine)[(r.uuid, r.gpu_instance, r.pod, r.hpc_job)] = r
    return _combine(util, engine)


class Source:
    """Reads every device's utilisation once per call to `read()`."""

    def __init__(self, settings: UsageSource, transport: httpx.AsyncBaseTransport | None = None,
                 window: float = 60.0):
        self.settings = settings
        # Prometheus: the window each ask covers (usage.interval).
        self.window = window
        self.http = httpx.AsyncClient(timeout=settings.timeout, transport=transport)

    async def read(self) -> list[Reading]:
        kind = self.settings.type
        if kind == "dcgm":
            return await self._dcgm()
        if kind == "prometheus":
            return await self._prometheus()
        if kind == "nvml":
            return await asyncio.to_thread(read_nvml)
        return []

    async def _dcgm(self) -> list[Reading]:
        readings: list[Reading] = []
        failed: list[str] = []
        for url in self.settings.urls:
            try:
                r = await self.http.get(url)
                r.raise_for_status()
                readings += parse_dcgm(r.text)
            except (httpx.HTTPError, SourceUnavailable) as e:
                # One node's exporter down: the others' devices are still measured; that
                # node's are not, and no idle clock advances without a measurement.
                failed.append(f"{url} ({type(e).__name__}: {e})")
        if failed and not readings:
            raise SourceUnavailable("no DCGM exporter answered: " + "; ".join(failed))
        self.failed = failed
        return readings

    async def _prometheus(self) -> list[Reading]:
        base = self.settings.url.rstrip("/")
        answers = []
        for name in ("DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_PROF_GR_ENGINE_ACTIVE"):
            series = f"{name}{{{self.settings.selector}}}" if self.settings.selector else name
            # The highest value over the last interval: Prometheus scrapes more often than
            # podbay asks, and a burst between two asks is activity all the same.
            query = f"max_over_time({series}[{max(int(self.window), 1)}s])"
            try:
                r = await self.http.get(f"{base}/api/v1/query", params={"query": query})
            except httpx.HTTPError as e:
                raise SourceUnavailable(f"Prometheus at {base} is not reachable ({type(e).__name__})") from None
            try:
                answers.append((name.lower(), r.json()))
            except ValueError:
                raise SourceUnavailable(f"Prometheus at {base} answered {r.status_code} without JSON") from None
        return parse_prometheus(answers)

    async def aclose(self) -> None:
        await self.http.aclose()


def read_nvml() -> list[Reading]:
    """Whole GPUs' utilisation from this machine's driver. MIG instances are left out: NVML
    cannot measure them one by one (nvmlDeviceGetUtilizationRates is not supported on
    them), and a device with no reading is never called idle."""
    try:
        import pynvml
    except ImportError as e:
        raise SourceUnavailable(f"NVML is not available ({e}): install nvidia-ml-py") from None
    try:
        pynvml.nvmlInit()
    except Exception as e:  # noqa: BLE001 - pynvml's NVMLError kinds vary by driver
        raise SourceUnavailable(f"NVML cannot start ({e}): is the NVIDIA driver loaded?") from None
    try:
        out = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            uuid = pynvml.nvmlDeviceGetUUID(h)
            uuid = uuid.decode() if isinstance(uuid, bytes) else uuid
            try:
                current, _pending = pynvml.nvmlDeviceGetMigMode(h)
            except Exception:  # noqa: BLE001 - not MIG-capable
                current = 0
            if current:
                continue
            try:
                rates = pynvml.nvmlDeviceGetUtilizationRates(h)
            except Exception:  # noqa: BLE001 - not supported on this device: not measured
                continue
            out.append(Reading(uuid=uuid, util=float(rates.gpu)))
        return out
    finally:
        pynvml.nvmlShutdown()


__all__ = ["Reading", "Source", "SourceUnavailable", "parse_dcgm", "parse_prometheus", "read_nvml", "reading_from"]
