"""MIG instances made per request, on the GPUs podbay owns (`mig_on_request`), through NVML.

The quota book is the truth. A claim on such a GPU names a profile and a start position
(inventory.on_request_key); after the claim commits, `MigMaker.make` creates the GPU
instance there and one compute instance spanning it, and the claim records the MIG device's
UUID as its visible id. An instance whose UUID no claim records is removed by `tidy`: the
workspace or job ended, a claim was taken back, or the process that made it died before
recording it. Making and tidying hold one lock per data directory (a file lock: the hub and
the service both make instances), so an instance never exists unrecorded while a tidy looks.

NVML's rules, which this follows (nvml.h, the MIG User Guide):
- a GPU instance is made with a placement (start, size in memory slices); the driver refuses
  one that overlaps another (NVML_ERROR_INSUFFICIENT_RESOURCES);
- GPU instance ids are fixed by the placement and reused, the MIG device UUID is new each time
  an instance is made: only the UUID tells "ours" from "made again since";
- a compute instance in use cannot be destroyed (NVML_ERROR_IN_USE) and a GPU instance with
  compute instances neither: removal is retried at the next tidy, and the start stays taken;
- making or destroying instances needs root (or the MIG config capability):
  NVML_ERROR_NO_PERMISSION.
"""

from __future__ import annotations

import ctypes
import fcntl
import logging
import threading
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .gpu import GpuFamily, MigProfile, family_for
from .inventory import Device, on_request_key

log = logging.getLogger("podbay.mig")

# nvml.h's GPU instance profile constants, by what tells the profiles apart: compute slices,
# and the variants with all media engines (+me) or twice the memory per slice (1g.20gb).
_GI_PROFILE = {1: 0x0, 2: 0x1, 3: 0x2, 4: 0x3, 7: 0x4, 8: 0x5, 6: 0x6}
_GI_PROFILE_ME = {1: 0x7, 2: 0x8}
_GI_PROFILE_WIDE = {1: 0x9}
# nvml.h's compute instance profile constants by compute slices; podbay makes one compute
# instance over the whole GPU instance.
_CI_PROFILE = {1: 0x0, 2: 0x1, 3: 0x2, 4: 0x3, 7: 0x4, 8: 0x5, 6: 0x6}
_CI_ENGINE_SHARED = 0x0


class MigError(Exception):
    """An instance could not be made: the message says what to do."""


def gi_profile_index(profile: MigProfile) -> int:
    """The NVML_GPU_INSTANCE_PROFILE_* constant of a profile (what
    nvmlDeviceGetGpuInstanceProfileInfo takes; its `.id` is the model's own profile id)."""
    if "+me" in profile.name:
        return _GI_PROFILE_ME[profile.compute_slices]
    if profile.memory_slices > profile.compute_slices and profile.compute_slices in _GI_PROFILE_WIDE:
        return _GI_PROFILE_WIDE[profile.compute_slices]
    return _GI_PROFILE[profile.compute_slices]


@dataclass(frozen=True)
class Made:
    """A MIG instance on a GPU: where it starts, its ids and its device's UUID."""

    gpu_uuid: str
    profile: str
    start: int
    gpu_instance: int
    compute_instance: int
    uuid: str

    @property
    def key(self) -> str:
        return on_request_key(self.gpu_uuid, self.profile, self.start)


class MigMaker:
    """Makes and removes the MIG instances of the on-request GPUs of one machine.

    `recorded` reads the visible ids the quota book's claims hold (inside the lock); `nvml`
    is the pynvml module (a test gives the same module bound to a stand-in library)."""

    def __init__(self, lock_path: Path, recorded: Callable[[], set[str]], nvml=None):
        self.lock_path = Path(lock_path)
        self.recorded = recorded
        self._nvml = nvml
        self._threads = threading.Lock()

    @property
    def nvml(self):
        if self._nvml is None:
            import pynvml

            self._nvml = pynvml
        return self._nvml

    @contextmanager
    def _session(self):
        """The machine's MIG lock, and NVML initialised for the while."""
        nv = self.nvml
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        with self._threads, open(self.lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                nv.nvmlInit()
            except nv.NVMLError as e:
                raise MigError(f"NVML is not available ({e}): podbay makes the MIG instances of mig_on_request "
                               "GPUs through the NVIDIA driver on this machine") from e
            try:
                yield nv
            finally:
                nv.nvmlShutdown()

    # --- reading -------------------------------------------------------------------------

    def instances(self, gpu_uuid: str, family: GpuFamily) -> list[Made]:
        with self._session() as nv:
            return self._instances(nv, gpu_uuid, family)

    @staticmethod
    def _device(nv, gpu_uuid: str):
        try:
            return nv.nvmlDeviceGetHandleByUUID(gpu_uuid)
        except nv.NVMLError_NotFound:
            raise MigError(f"GPU {gpu_uuid} is not on this machine: check its uuid in podbay.yaml "
                           "(podbay gpus lists this machine's)") from None

    def _instances(self, nv, gpu_uuid: str, family: GpuFamily) -> list[Made]:
        dev = self._device(nv, gpu_uuid)
        uuids = self._mig_uuids(nv, dev)
        out = []
        for profile in family.profiles.values():
            for gi in self._gpu_instances(nv, dev, profile):
                info = nv.nvmlGpuInstanceGetInfo(gi)
                ci, uuid = min(((c, u) for (g, c), u in uuids.items() if g == info.id), default=(-1, ""))
                out.append(Made(gpu_uuid, profile.name, int(info.placement.start), int(info.id), ci, uuid))
        return out

    @staticmethod
    def _profile_info(nv, dev, profile: MigProfile):
        try:
            return nv.nvmlDeviceGetGpuInstanceProfileInfo(dev, gi_profile_index(profile))
        except nv.NVMLError_NotSupported:
            return None  # a profile this driver does not offer (1g.20gb before R525)

    def _gpu_instances(self, nv, dev, profile: MigProfile) -> list:
        info = self._profile_info(nv, dev, profile)
        if info is None or not info.instanceCount:
            return []
        found = (nv.c_nvmlGpuInstance_t * info.instanceCount)()
        count = ctypes.c_uint(0)
        nv.nvmlDeviceGetGpuInstances(dev, info.id, found, ctypes.byref(count))
        return [found[i] for i in range(count.value)]

    @staticmethod
    def _mig_uuids(nv, dev) -> dict[tuple[int, int], str]:
        """(GPU instance id, compute instance id) → MIG device UUID, for the GPU's MIG devices."""
        out = {}
        for j in range(nv.nvmlDeviceGetMaxMigDeviceCount(dev)):
            try:
                m = nv.nvmlDeviceGetMigDeviceHandleByIndex(dev, j)
            except nv.NVMLError_NotFound:  # indices are sparse
                continue
            uuid = nv.nvmlDeviceGetUUID(m)
            out[(nv.nvmlDeviceGetGpuInstanceId(m), nv.nvmlDeviceGetComputeInstanceId(m))] = (
                uuid.decode() if isinstance(uuid, bytes) else uuid)
        return out

    # --- making and removing --------------------------------------------------------------

    def make(self, devices: Iterable[Device], record: Callable[[dict[str, Made]], None]) -> dict[str, Made]:
        """Make the instances of these claimed on-request devices (tidying their GPUs first,
        so that the starts of ended claims are free) and `record` them (device key → what
        was made) before anyone else may look. On a failure, what this call made is removed
        again; MigError says why."""
        made: dict[str, Made] = {}
        with self._session() as nv:
            try:
                for d in devices:
                    family = family_for(d.model, d.memory_mib)
                    self._tidy(nv, d.parent_uuid, family)
                    made[d.key] = self._make(nv, d, family)
                record(made)
            except nv.NVMLError as e:
                for m in made.values():
                    self._remove(nv, m)
                raise MigError(f"the NVIDIA driver refused: {e}") from e
            except BaseException:
                for m in made.values():
                    self._remove(nv, m)
                raise
        return made

    def _make(self, nv, d: Device, family: GpuFamily) -> Made:
        profile = family.profiles[d.mig_profile]
        dev = self._device(nv, d.parent_uuid)
        if nv.nvmlDeviceGetMigMode(dev)[0] != nv.NVML_DEVICE_MIG_ENABLE:
            raise MigError(f"GPU {d.gpu_index} on {d.node} is not in MIG mode: enable it "
                           f"(nvidia-smi -i {d.gpu_index} -mig 1) or set mig_on_request: false")
        info = self._profile_info(nv, dev, profile)
        if info is None or info.sliceCount != profile.compute_slices:
            raise MigError(f"the driver of GPU {d.gpu_index} on {d.node} ({d.model}) does not offer MIG profile "
                           f"{profile.name}: update the driver or leave the profile out of this pool")
        placement = nv.c_nvmlGpuInstancePlacement_t(d.mig_start, profile.memory_slices)
        try:
            gi = nv.nvmlDeviceCreateGpuInstanceWithPlacement(dev, info.id, ctypes.byref(placement))
        except nv.NVMLError_InsufficientResources as e:
            raise MigError(f"MIG slots {d.mig_start}–{d.mig_start + profile.memory_slices - 1} of GPU {d.gpu_index} "
                           f"on {d.node} are held by an instance something still runs on ({e}); it is removed "
                           "once that ends (nvidia-smi mig -lgi shows it)") from e
        except nv.NVMLError_NoPermission as e:
            raise MigError("making MIG instances needs root (or the MIG config capability, "
                           "/proc/driver/nvidia/capabilities/mig/config): run the hub and the service "
                           "as root, or declare this GPU's instances under mig: instead") from e
        try:
            ci_info = nv.nvmlGpuInstanceGetComputeInstanceProfileInfo(
                gi, _CI_PROFILE[profile.compute_slices], _CI_ENGINE_SHARED)
            ci = nv.nvmlGpuInstanceCreateComputeInstance(gi, ci_info.id)
            gi_id = int(nv.nvmlGpuInstanceGetInfo(gi).id)
            ci_id = int(nv.nvmlComputeInstanceGetInfo(ci).id)
            uuid = self._mig_uuids(nv, dev).get((gi_id, ci_id))
            if not uuid:
                raise MigError(f"the driver made MIG instance {gi_id}/{ci_id} on GPU {d.gpu_index} but lists "
                               "no MIG device for it")
        except BaseException:
            self._destroy_gi(nv, gi)
            raise
        made = Made(d.parent_uuid, profile.name, d.mig_start, gi_id, ci_id, uuid)
        log.info("made MIG %s at slot %d on GPU %s (%s): %s", profile.name, d.mig_start, d.parent_uuid,
                 d.node, uuid)
        return made

    def tidy(self, gpus: Iterable[tuple[str, GpuFamily]]) -> list[Made]:
        """Remove the instances no claim records on these GPUs; those still in use stay
        (removed at a later tidy). What was removed."""
        removed: list[Made] = []
        with self._session() as nv:
            for uuid, family in gpus:
                removed += self._tidy(nv, uuid, family)
        return removed

    def _tidy(self, nv, gpu_uuid: str, family: GpuFamily) -> list[Made]:
        # Read inside the lock: every instance made under it was recorded before it was let go.
        recorded = self.recorded()
        removed = []
        for m in self._instances(nv, gpu_uuid, family):
            if m.uuid and m.uuid in recorded:
                continue
            if self._remove(nv, m):
                removed.append(m)
        return removed

    def _remove(self, nv, m: Made) -> bool:
        dev = nv.nvmlDeviceGetHandleByUUID(m.gpu_uuid)
        try:
            gi = nv.nvmlDeviceGetGpuInstanceById(dev, m.gpu_instance)
        except nv.NVMLError_NotFound:
            return True
        if self._destroy_gi(nv, gi):
            log.info("removed MIG %s at slot %d on GPU %s (%s)", m.profile, m.start, m.gpu_uuid, m.uuid or "no device")
            return True
        return False

    @staticmethod
    def _destroy_gi(nv, gi) -> bool:
        """Destroy a GPU instance and its compute instances; False while something uses them."""
        for idx in sorted(set(_CI_PROFILE.values())):
            try:
                info = nv.nvmlGpuInstanceGetComputeInstanceProfileInfo(gi, idx, _CI_ENGINE_SHARED)
            except nv.NVMLError:
                continue
            found = (nv.c_nvmlComputeInstance_t * max(1, info.instanceCount))()
            count = ctypes.c_uint(0)
            nv.nvmlGpuInstanceGetComputeInstances(gi, info.id, found, ctypes.byref(count))
            for i in range(count.value):
                try:
                    nv.nvmlComputeInstanceDestroy(found[i])
                except nv.NVMLError_InUse:
                    log.warning("a MIG instance podbay no longer holds is still in use; it is removed once "
                                "what runs on it ends")
                    return False
        try:
            nv.nvmlGpuInstanceDestroy(gi)
        except nv.NVMLError_InUse:
            return False
        return True
