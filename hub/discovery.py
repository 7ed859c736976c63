"""What GPUs a machine has: NVML when a driver is present, or saved `nvidia-smi` output.

Three sources, one result (a list of `Gpu`):
- NVML through nvidia-ml-py (`pynvml`): UUIDs, MIG mode, MIG devices with UUIDs and attributes.
- `nvidia-smi -L`: models, GPU and MIG UUIDs, MIG profile names. No memory sizes.
- `nvidia-smi -q -x`: models, memory, MIG mode and MIG devices, but no MIG UUIDs or profile
  names; the profile is inferred from SM count and memory, as go-nvlib does.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from math import ceil

from .gpu import family_for


class DiscoveryError(Exception):
    """Discovery could not run or its input could not be read."""


@dataclass
class MigDevice:
    index: int
    uuid: str | None
    profile: str | None
    gpu_instance_id: int | None = None
    compute_instance_id: int | None = None
    memory_mib: int | None = None
    multiprocessors: int | None = None


@dataclass
class Gpu:
    index: int
    uuid: str | None
    model: str
    memory_mib: int | None = None
    mig_enabled: bool = False
    mig_devices: list[MigDevice] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


_GPU_LINE = re.compile(r"^GPU (\d+): (.+?) \(UUID: (GPU-[0-9a-fA-F-]+)\)\s*$")
_MIG_LINE = re.compile(r"^\s+MIG (\S+)\s+Device\s+(\d+): \(UUID: (MIG-[^)]+)\)\s*$")


def parse_smi_list(text: str) -> list[Gpu]:
    """Parse `nvidia-smi -L`. Lines of other output around it are ignored, so a whole
    captured session can be given."""
    gpus: list[Gpu] = []
    for line in text.splitlines():
        if m := _GPU_LINE.match(line):
            gpus.append(Gpu(index=int(m[1]), uuid=m[3], model=m[2].strip()))
        elif (m := _MIG_LINE.match(line)) and gpus:
            gpu = gpus[-1]
            gpu.mig_enabled = True
            uuid = m[3]
            gi = ci = None
            # Drivers before R470 print MIG-GPU-<parent>/<gi>/<ci>.
            if legacy := re.match(r"^MIG-GPU-[0-9a-fA-F-]+/(\d+)/(\d+)$", uuid):
                gi, ci = int(legacy[1]), int(legacy[2])
            gpu.mig_devices.append(
                MigDevice(index=int(m[2]), uuid=uuid, profile=m[1],
                          gpu_instance_id=gi, compute_instance_id=ci)
            )
    # `-L` output is the whole machine once; a capture repeating it would list GPUs twice.
    seen: dict[int, Gpu] = {}
    for gpu in gpus:
        seen.setdefault(gpu.index, gpu)
    return list(seen.values())


def _mib(text: str | None) -> int | None:
    if not text:
        return None
    m = re.match(r"\s*(\d+)\s*MiB", text)
    return int(m[1]) if m else None


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def infer_mig_profile(model: str, gpu_memory_mib: int | None, memory_mib: int | None,
                      multiprocessors: int | None) -> str | None:
    """Rebuild a MIG profile name from a MIG device's memory and SM count.

    Memory: the device's share of the GPU's memory, rounded up to eighths (go-nvlib's
    getMigMemorySizeGB). Compute: SMs per slice vary by model (A100 14, H100 16 to 18.9), so
    take the largest slice count whose SMs, with 20% slack, fit in the device's.
    """
    family = family_for(model, gpu_memory_mib)
    if family is None or not gpu_memory_mib or not memory_mib or not multiprocessors:
        return None
    per_slice = family.multiprocessors / family.compute_slices
    compute = max(
        (p.compute_slices for p in family.profiles.values()
         if p.compute_slices * per_slice * 0.8 <= multiprocessors),
        default=1,
    )
    return _profile_by_slices(family, compute, memory_mib, gpu_memory_mib)


def _profile_by_slices(family, compute: int, memory_mib: int, gpu_memory_mib: int) -> str | None:
    slices = min(family.memory_slices, ceil(memory_mib / gpu_memory_mib * family.memory_slices))
    for p in family.profiles.values():
        if p.compute_slices == compute and p.memory_slices == slices and "+" not in p.name:
            return p.name
    return None


def parse_smi_xml(text: str) -> list[Gpu]:
    """Parse `nvidia-smi -q -x`."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError as e:
        raise DiscoveryError(f"not valid nvidia-smi XML: {e}") from e
    if root.tag != "nvidia_smi_log":
        raise DiscoveryError(f"not nvidia-smi -q -x output (root element <{root.tag}>)")
    gpus = []
    for pos, el in enumerate(root.findall("gpu")):
        model = (el.findtext("product_name") or "unknown").strip()
        memory = _mib(el.findtext("fb_memory_usage/total"))
        index = _int(el.findtext("minor_number"))
        mig_mode = (el.findtext("mig_mode/current_mig") or "N/A").strip()
        gpu = Gpu(
            index=index if index is not None else pos,
            uuid=(el.findtext("uuid") or "").strip() or None,
            model=model,
            memory_mib=memory,
            mig_enabled=mig_mode == "Enabled",
        )
        for m in el.findall("mig_devices/mig_device"):
            mem = _mib(m.findtext("fb_memory_usage/total"))
            sms = _int(m.findtext("device_attributes/shared/multiprocessor_count"))
            gpu.mig_devices.append(MigDevice(
                index=_int(m.findtext("index")) or 0,
                uuid=None,
                profile=infer_mig_profile(model, memory, mem, sms),
                gpu_instance_id=_int(m.findtext("gpu_instance_id")),
                compute_instance_id=_int(m.findtext("compute_instance_id")),
                memory_mib=mem,
                multiprocessors=sms,
            ))
        gpus.append(gpu)
    return gpus


def parse_smi_output(text: str) -> list[Gpu]:
    """Either kind of saved output, told apart by its first characters."""
    if text.lstrip().startswith("<?xml") or text.lstrip().startswith("<nvidia_smi_log"):
        return parse_smi_xml(text)
    gpus = parse_smi_list(text)
    if not gpus:
        raise DiscoveryError("found no GPU lines: expected `nvidia-smi -L` or `nvidia-smi -q -x` output")
    return gpus


def discover_nvml() -> list[Gpu]:
    """Ask the driver through NVML. Raises DiscoveryError when there is no driver."""
    try:
        import pynvml
    except ImportError as e:  # pragma: no cover - it is a dependency
        raise DiscoveryError("nvidia-ml-py is not installed") from e
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as e:
        raise DiscoveryError(f"NVML is not available on this machine ({e}): no NVIDIA driver?") from e
    try:
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            total = pynvml.nvmlDeviceGetMemoryInfo(h).total // (1024 * 1024)
            gpu = Gpu(index=i, uuid=_str(pynvml.nvmlDeviceGetUUID(h)),
                      model=_str(pynvml.nvmlDeviceGetName(h)), memory_mib=int(total))
            try:
                current, _pending = pynvml.nvmlDeviceGetMigMode(h)
            except pynvml.NVMLError:  # NotSupported on GPUs without MIG
                current = 0
            gpu.mig_enabled = current == pynvml.NVML_DEVICE_MIG_ENABLE
            if gpu.mig_enabled:
                gpu.mig_devices = _nvml_mig_devices(pynvml, h, gpu)
            gpus.append(gpu)
        return gpus
    finally:
        pynvml.nvmlShutdown()


def _nvml_mig_devices(pynvml, handle, gpu: Gpu) -> list[MigDevice]:
    devices = []
    for j in range(pynvml.nvmlDeviceGetMaxMigDeviceCount(handle)):
        try:
            m = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, j)
        except pynvml.NVMLError:  # indices are sparse: NotFound for empty ones
            continue
        attrs = pynvml.nvmlDeviceGetAttributes(m)
        devices.append(MigDevice(
            index=j,
            uuid=_str(pynvml.nvmlDeviceGetUUID(m)),
            profile=_nvml_profile_name(attrs, gpu),
            gpu_instance_id=pynvml.nvmlDeviceGetGpuInstanceId(m),
            compute_instance_id=pynvml.nvmlDeviceGetComputeInstanceId(m),
            memory_mib=int(attrs.memorySizeMB),
            multiprocessors=int(attrs.multiprocessorCount),
        ))
    return devices


def _nvml_profile_name(attrs, gpu: Gpu) -> str | None:
    """NVML gives slice counts, not names: rebuild `<c>c.<g>g.<N>gb` from them."""
    family = family_for(gpu.model, gpu.memory_mib)
    g, c = int(attrs.gpuInstanceSliceCount), int(attrs.computeInstanceSliceCount)
    name = None
    if family is not None and gpu.memory_mib:
        name = _profile_by_slices(family, g, attrs.memorySizeMB, gpu.memory_mib)
    if name is None:
        gb = ceil(attrs.memorySizeMB / 1024)
        name = f"{g}g.{gb}gb"
    return name if c == g else f"{c}c.{name}"


def _str(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
