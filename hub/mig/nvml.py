"""MIG instances made per request, on the GPUs podbay owns (`mig_on_request`), through NVML.

The quota book is the truth. A claim on such a GPU names a profile and a start position
(inventory.on_request_key); after the claim commits, `MigMaker.make` creates the GPU
instance there and one compute instance spanning it, and the claim records the MIG device's
UUID as its visible id. An instance whose UUID no claim records is removed by `tidy`: the
workspace or job ended, a claim was taken back, someone made it by hand, or the process
that made it died before recording it. One that something still runs on cannot be removed:
it is recorded in the book as a leftover (QuotaBook.hold_leftover), so that its slots count
as taken, and removed by a later tidy (after each release, before each make, at the hub's
start). Making and tidying hold one lock per data directory (a file lock: the hub and the
service both make instances), and an instance is recorded before the lock is let go, so a
tidy never sees one of ours unrecorded.

NVML's rules, which this follows (nvml.h, the MIG User Guide):
- a GPU instance is made with a placement (start, size in memory slices); the driver refuses
  one that overlaps another (NVML_ERROR_INSUFFICIENT_RESOURCES);
- GPU instance ids are fixed by the placement and reused, the MIG device UUID is new each time
  an instance is made: only the UUID tells "ours" from "made again since";
- a compute instance in use cannot be destroyed (NVML_ERROR_IN_USE), nor a GPU instance with
  compute instances; monitoring clients (DCGM's host engine, an exporter profiling) count as
  users too;
- making or destroying instances needs root (or the MIG config capability):
  NVML_ERROR_NO_PERMISSION.
"""

from __future__ import annotations

import ctypes
import fcntl
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..gpu import GpuFamily, MigProfile, family_for
from ..inventory import Device, on_request_key

if TYPE_CHECKING:
    from ..quota.book import QuotaBook

log = logging.getLogger("podbay.mig")

# nvml.h's profile constants by slice count, the same for GPU instances
# (NVML_GPU_INSTANCE_PROFILE_<n>_SLICE) and compute instances (..._COMPUTE_INSTANCE_...); the
# GPU instance variants with all media engines (+me: _REV1) and twice the memory per slice
# (1g.20gb: _REV2) have their own.
_BY_SLICES = {1: 0x0, 2: 0x1, 3: 0x2, 4: 0x3, 7: 0x4, 8: 0x5, 6: 0x6}
_GI_MEDIA = {1: 0x7, 2: 0x8}
_GI_WIDE = {1: 0x9}
_CI_ENGINE_SHARED = 0x0


class MigError(Exception):
    """An instance could not be made."""


class MigSetupError(MigError):
    """This machine is not set up to make instances (root, MIG mode, driver, podbay.yaml):
    the operator's to fix, and said in the log."""


class MigSlotsHeld(MigError):
    """The start is held by an instance that outlived its claim (now recorded as a leftover)."""


def gi_profile_index(profile: MigProfile) -> int:
    """The NVML_GPU_INSTANCE_PROFILE_* constant of a profile (what
    nvmlDeviceGetGpuInstanceProfileInfo takes; its `.id` is the model's own profile id)."""
    if "+me" in profile.name:
        return _GI_MEDIA[profile.compute_slices]
    if profile.memory_slices > profile.compute_slices and profile.compute_slices in _GI_WIDE:
        return _GI_WIDE[profile.compute_slices]
    return _BY_SLICES[profile.compute_slices]


@dataclass(frozen=True)
class Made:
    """A MIG instance on a GPU: where it starts, its ids and its device's UUID."""

    gpu_uuid: str
    profile: str
    start: int
    gpu_instance: int
    compute_instance: int
    uuid: str
    # Memory slots it spans (its placement's size).
    size: int = 0

    @property
    def key(self) -> str:
        return on_request_key(self.gpu_uuid, self.profile, self.start)


class MigMaker:
    """Makes and removes the MIG instances of the on-request GPUs of one machine.

    `book` says what is recorded and keeps the leftovers; `node_of` names each GPU's node (by
    UUID); `nvml` is the pynvml module (a test gives the same module bound to a stand-in)."""

    def __init__(self, lock_path: Path, book: "QuotaBook", node_of: Mapping[str, str], nvml=None):
        self.lock_path = Path(lock_path)
        self.book = book
        self.node_of = dict(node_of)
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
                raise MigSetupError(f"NVML is not available ({e}): podbay makes the MIG instances of mig_on_request "
                                    "GPUs through the NVIDIA driver on this machine") from e
            try:
                yield nv
            finally:
                try:
                    nv.nvmlShutdown()
                except nv.NVMLError as e:  # what was made is made: not a reason to undo it
                    log.warning("NVML shutdown: %s", e)

    # --- reading -------------------------------------------------------------------------

    def instances(self, gpu_uuid: str, family: GpuFamily) -> list[Made]:
        with self._session() as nv:
            return self._instances(nv, gpu_uuid, family)

    @staticmethod
    def _device(nv, gpu_uuid: str):
        try:
            return nv.nvmlDeviceGetHandleByUUID(gpu_uuid)
        except nv.NVMLError_NotFound:
            raise MigSetupError(f"GPU {gpu_uuid} is not on this machine: check its uuid in podbay.yaml "
                                "(podbay gpus lists this machine's)") from None

    def _instances(self, nv, gpu_uuid: str, family: GpuFamily) -> list[Made]:
        """Every GPU instance on the GPU, of every profile the driver has (one made by hand
        in a profile podbay does not offer included, named by its NVML profile id)."""
        dev = self._device(nv, gpu_uuid)
        uuids = self._mig_uuids(nv, dev)
        names = {gi_profile_index(p): p.name for p in family.profiles.values()}
        # A profile podbay does not offer (+gfx, -me) goes by the one of its size, so that the
        # slots of a leftover of it count as taken.
        by_size = {(p.memory_slices, p.compute_slices): p.name for p in family.profiles.values() if "+me" not in p.name}
        out = []
        for index in range(nv.NVML_GPU_INSTANCE_PROFILE_COUNT):
            info = self._profile_info(nv, dev, index)
            if info is None or not info.instanceCount:
                continue
            found = (nv.c_nvmlGpuInstance_t * info.instanceCount)()
            count = ctypes.c_uint(0)
            nv.nvmlDeviceGetGpuInstances(dev, info.id, found, ctypes.byref(count))
            for i in range(count.value):
                gi = nv.nvmlGpuInstanceGetInfo(found[i])
                ci, uuid = min(((c, u) for (g, c), u in uuids.items() if g == gi.id), default=(-1, ""))
                size = int(gi.placement.size)
                name = names.get(index) or by_size.get((size, int(info.sliceCount))) or next(
                    (n for (m, _c), n in sorted(by_size.items()) if m == size), f"gi-profile-{info.id}")
                out.append(Made(gpu_uuid, name, int(gi.placement.start), int(gi.id), ci, uuid, size))
        return out

    @staticmethod
    def _profile_info(nv, dev, index: int):
        try:
            return nv.nvmlDeviceGetGpuInstanceProfileInfo(dev, index)
        except (nv.NVMLError_NotSupported, nv.NVMLError_InvalidArgument):
            return None  # a profile this GPU or driver does not offer (1g.20gb before R525)

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
        """Make the instances of these claimed on-request devices (their GPUs tidied first, so
        that the starts of ended claims are free) and `record` them (device key → what was
        made) before anyone else may look. On a failure, what this call made is removed
        again."""
        devices = list(devices)
        made: dict[str, Made] = {}
        with self._session() as nv:
            try:
                for uuid, family in {d.parent_uuid: family_for(d.model, d.memory_mib) for d in devices}.items():
                    self._tidy(nv, uuid, family)
                for d in devices:
                    made[d.key] = self._make(nv, d, family_for(d.model, d.memory_mib))
                record(made)
            except BaseException as e:
                for m in made.values():
                    self._remove(nv, m)
                if isinstance(e, nv.NVMLError):
                    raise MigSetupError(f"the NVIDIA driver refused: {e}") from e
                raise
        return made

    def _make(self, nv, d: Device, family: GpuFamily) -> Made:
        profile = family.profiles[d.mig_profile]
        dev = self._device(nv, d.parent_uuid)
        if nv.nvmlDeviceGetMigMode(dev)[0] != nv.NVML_DEVICE_MIG_ENABLE:
            raise MigSetupError(f"GPU {d.gpu_index} on {d.node} is not in MIG mode: enable it "
                                f"(nvidia-smi -i {d.gpu_index} -mig 1) or set mig_on_request: false")
        info = self._profile_info(nv, dev, gi_profile_index(profile))
        if info is None or info.sliceCount != profile.compute_slices:
            raise MigSetupError(f"the driver of GPU {d.gpu_index} on {d.node} ({d.model}) does not offer MIG profile "
                                f"{profile.name}: update the driver or leave the profile out of this pool")
        placement = nv.c_nvmlGpuInstancePlacement_t(d.mig_start, profile.memory_slices)
        try:
            gi = nv.nvmlDeviceCreateGpuInstanceWithPlacement(dev, info.id, ctypes.byref(placement))
        except nv.NVMLError_InsufficientResources as e:
            raise MigSlotsHeld(f"MIG slots {d.mig_start}–{d.mig_start + profile.memory_slices - 1} of GPU "
                               f"{d.gpu_index} on {d.node} are held by an instance that is still in use ({e})") from e
        except nv.NVMLError_NoPermission as e:
            raise MigSetupError("making MIG instances needs root (or the MIG config capability, "
                                "/proc/driver/nvidia/capabilities/mig/config): run the hub and the service "
                                "as root, or declare this GPU's instances under mig: instead") from e
        try:
            ci_info = nv.nvmlGpuInstanceGetComputeInstanceProfileInfo(
                gi, _BY_SLICES[profile.compute_slices], _CI_ENGINE_SHARED)
            ci = nv.nvmlGpuInstanceCreateComputeInstance(gi, ci_info.id)
            gi_id = int(nv.nvmlGpuInstanceGetInfo(gi).id)
            ci_id = int(nv.nvmlComputeInstanceGetInfo(ci).id)
            uuid = self._mig_uuids(nv, dev).get((gi_id, ci_id))
            if not uuid:
                raise MigSetupError(f"the driver made MIG instance {gi_id}/{ci_id} on GPU {d.gpu_index} but lists "
                                    "no MIG device for it")
        except BaseException:
            self._destroy_gi(nv, gi)
            raise
        made = Made(d.parent_uuid, profile.name, d.mig_start, gi_id, ci_id, uuid, profile.memory_slices)
        log.info("made MIG %s at slot %d on GPU %s (%s): %s", profile.name, d.mig_start, d.parent_uuid,
                 d.node, uuid)
        return made

    def tidy(self, gpus: Iterable[tuple[str, GpuFamily]]) -> list[Made]:
        """Remove the instances no claim records on these GPUs; those still in use are
        recorded as leftovers (removed at a later tidy). What was removed. A GPU that cannot
        be tidied is logged and the others are."""
        removed: list[Made] = []
        with self._session() as nv:
            for uuid, family in gpus:
                try:
                    removed += self._tidy(nv, uuid, family)
                except (MigError, nv.NVMLError) as e:
                    log.warning("could not tidy the MIG instances of GPU %s: %s", uuid, e)
        return removed

    def _tidy(self, nv, gpu_uuid: str, family: GpuFamily) -> list[Made]:
        # Read inside the lock: every instance made under it was recorded before it was let go.
        recorded = self.book.visible_ids()
        removed = []
        found = self._instances(nv, gpu_uuid, family)
        for m in found:
            owner = recorded.get(m.uuid) if m.uuid else None
            if owner is not None and not owner.startswith("leftover:"):
                continue
            if self._remove(nv, m):
                removed.append(m)
                if owner is not None:
                    self.book.release(owner, notify=False)
            elif owner is None:
                log.warning("MIG %s at slot %d on GPU %s is held by no workspace or job but still in use: its "
                            "slots stay taken until what runs on it ends", m.profile, m.start, gpu_uuid)
                self.book.hold_leftover(self.node_of.get(gpu_uuid, ""), m.key, m.uuid or m.key,
                                        f"mig-{m.profile}")
        # Leftovers something else removed meanwhile (one without a MIG device goes by its key).
        here = {m.uuid or m.key for m in found}
        for uuid, owner in recorded.items():
            if owner.startswith(f"leftover:{gpu_uuid}/") and uuid not in here:
                self.book.release(owner, notify=False)
        return removed

    def _remove(self, nv, m: Made) -> bool:
        dev = self._device(nv, m.gpu_uuid)
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
        """Destroy a GPU instance and its compute instances (of every profile); False while
        something uses them."""
        for index in range(nv.NVML_COMPUTE_INSTANCE_PROFILE_COUNT):
            try:
                info = nv.nvmlGpuInstanceGetComputeInstanceProfileInfo(gi, index, _CI_ENGINE_SHARED)
            except nv.NVMLError:
                continue
            found = (nv.c_nvmlComputeInstance_t * max(1, info.instanceCount))()
            count = ctypes.c_uint(0)
            nv.nvmlGpuInstanceGetComputeInstances(gi, info.id, found, ctypes.byref(count))
            for i in range(count.value):
                try:
                    nv.nvmlComputeInstanceDestroy(found[i])
                except nv.NVMLError_InUse:
                    return False
        try:
            nv.nvmlGpuInstanceDestroy(gi)
        except nv.NVMLError_InUse:
            return False
        return True
