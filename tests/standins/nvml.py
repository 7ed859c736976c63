"""A stand-in for the NVIDIA driver's NVML library (libnvidia-ml.so.1), for machines without
a GPU: the real pynvml module runs against it, its ctypes structures, handles and return
codes included; only the C library underneath is this.

It keeps the driver's state in a JSON file (the driver's state is the machine's, shared by
every process: the hub and the service both make MIG instances) and follows the driver's
MIG rules as nvml.h and the MIG User Guide give them, with the geometry of real `nvidia-smi
mig -lgip/-lgipp` outputs (tests/fixtures/gpu/nvidia-smi-mig/), written out here on their own
rather than taken from podbay's tables, so that a wrong table in podbay shows:

- a GPU instance is made at a placement its profile allows (INVALID_ARGUMENT otherwise);
  one overlapping another's memory slots, beyond the compute slices or a second +me
  instance is refused with INSUFFICIENT_RESOURCES;
- GPU instance ids follow the placement (the memory-slot tree: 0 the whole GPU, 1-2 the
  halves, 3-6 the quarters, 7-13 the eighths), so they are reused; every compute instance
  made gets a new MIG device UUID;
- a compute instance something runs on (`busy`, set by a test) cannot be destroyed
  (IN_USE), nor a GPU instance that still has compute instances;
- without root (`root: false`) nothing is made or destroyed (NO_PERMISSION); a GPU without
  MIG mode makes nothing (NOT_SUPPORTED).
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import uuid as uuidlib
from contextlib import contextmanager
from pathlib import Path

SUCCESS, INVALID_ARGUMENT, NOT_SUPPORTED, NO_PERMISSION, NOT_FOUND, IN_USE, INSUFFICIENT_RESOURCES = 0, 2, 3, 4, 6, 19, 23

# NVML_GPU_INSTANCE_PROFILE_* → (profile id, compute slices, memory slices, starts, instances, +me)
SEVEN_SLICE = {
    0x0: (19, 1, 1, (0, 1, 2, 3, 4, 5, 6), 7, False),
    0x7: (20, 1, 1, (0, 1, 2, 3, 4, 5, 6), 1, True),
    0x9: (15, 1, 2, (0, 2, 4, 6), 4, False),
    0x1: (14, 2, 2, (0, 2, 4), 3, False),
    0x2: (9, 3, 4, (0, 4), 2, False),
    0x3: (5, 4, 4, (0,), 1, False),
    0x4: (0, 7, 8, (0,), 1, False),
}
FOUR_SLICE = {  # A30-24GB
    0x0: (14, 1, 1, (0, 1, 2, 3), 4, False),
    0x7: (21, 1, 1, (0, 1, 2, 3), 1, True),
    0x1: (5, 2, 2, (0, 2), 2, False),
    0x8: (6, 2, 2, (0, 2), 1, True),
    0x3: (0, 4, 4, (0,), 1, False),
}
GEOMETRY = {"seven": (SEVEN_SLICE, 7, 8), "four": (FOUR_SLICE, 4, 4)}

DEVICE, MIG_DEVICE, GPU_INSTANCE, COMPUTE_INSTANCE = 1, 2, 3, 4


def gpu(uuid: str, name: str = "NVIDIA H100 80GB HBM3", memory_mib: int = 81559, geometry: str = "seven",
        mig: bool = True) -> dict:
    return {"uuid": uuid, "name": name, "memory_mib": memory_mib, "geometry": geometry, "mig": mig,
            "instances": []}


def write_state(path: Path, gpus: list[dict], root: bool = True) -> Path:
    Path(path).write_text(json.dumps({"gpus": gpus, "root": root}))
    return Path(path)


def _handle(kind: int, g: int, gi: int = 0, ci: int = 0) -> int:
    return (kind << 24) | (g << 16) | (gi << 8) | ci


def _unhandle(ptr) -> tuple[int, int, int, int]:
    v = ctypes.cast(ptr, ctypes.c_void_p).value or 0
    return v >> 24, (v >> 16) & 0xFF, (v >> 8) & 0xFF, v & 0xFF


def _put_handle(ref, value: int) -> None:
    ctypes.c_void_p.from_buffer(ref._obj).value = value


def _obj(ref):
    return getattr(ref, "_obj", ref)


class FakeNvmlLib:
    """What pynvml finds as `nvmlLib`: the C entry points it calls, by name."""

    def __init__(self, state: Path):
        self.state_path = Path(state)

    @contextmanager
    def _state(self, write: bool = False):
        with open(self.state_path.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            state = json.loads(self.state_path.read_text())
            yield state
            if write:
                self.state_path.write_text(json.dumps(state))

    # --- the library and devices -------------------------------------------------------

    def nvmlInitWithFlags(self, flags):
        return SUCCESS if self.state_path.exists() else 9  # NVML_ERROR_DRIVER_NOT_LOADED

    def nvmlInit_v2(self):
        return self.nvmlInitWithFlags(0)

    def nvmlShutdown(self):
        return SUCCESS

    @staticmethod
    def nvmlErrorString(result):
        # A plain function: pynvml sets `restype` on it, as on a C function.
        return f"stand-in NVML error {result}".encode()

    def nvmlDeviceGetCount_v2(self, count_ref):
        with self._state() as s:
            _obj(count_ref).value = len(s["gpus"])
        return SUCCESS

    def nvmlDeviceGetHandleByIndex_v2(self, index, ref):
        with self._state() as s:
            i = index.value if hasattr(index, "value") else int(index)
            if i >= len(s["gpus"]):
                return INVALID_ARGUMENT
        _put_handle(ref, _handle(DEVICE, i))
        return SUCCESS

    def nvmlDeviceGetHandleByUUID(self, uuid, ref):
        want = uuid.value.decode() if hasattr(uuid, "value") else str(uuid)
        with self._state() as s:
            for i, g in enumerate(s["gpus"]):
                if g["uuid"] == want:
                    _put_handle(ref, _handle(DEVICE, i))
                    return SUCCESS
        return NOT_FOUND

    def _text(self, buf, text: str):
        buf.value = text.encode()
        return SUCCESS

    def nvmlDeviceGetName(self, handle, buf, size):
        kind, g, _gi, _ci = _unhandle(handle)
        with self._state() as s:
            return self._text(buf, s["gpus"][g]["name"])

    def nvmlDeviceGetUUID(self, handle, buf, size):
        kind, g, gi, ci = _unhandle(handle)
        with self._state() as s:
            if kind == DEVICE:
                return self._text(buf, s["gpus"][g]["uuid"])
            inst = self._gi(s, g, gi)
            c = next((c for c in (inst or {}).get("ci", []) if c["id"] == ci), None)
            return self._text(buf, c["uuid"]) if c else NOT_FOUND

    def nvmlDeviceGetMemoryInfo(self, handle, ref):
        kind, g, _gi, _ci = _unhandle(handle)
        with self._state() as s:
            mem = _obj(ref)
            mem.total = s["gpus"][g]["memory_mib"] * 1024 * 1024
            mem.free, mem.used = mem.total, 0
        return SUCCESS

    def nvmlDeviceGetMigMode(self, handle, current, pending):
        kind, g, _gi, _ci = _unhandle(handle)
        with self._state() as s:
            on = int(s["gpus"][g]["mig"])
        _obj(current).value = _obj(pending).value = on
        return SUCCESS

    def nvmlDeviceGetMaxMigDeviceCount(self, handle, ref):
        kind, g, _gi, _ci = _unhandle(handle)
        with self._state() as s:
            _obj(ref).value = GEOMETRY[s["gpus"][g]["geometry"]][1] if s["gpus"][g]["mig"] else 0
        return SUCCESS

    def _mig_devices(self, s, g) -> list[tuple[int, int]]:
        return sorted((inst["gi"], c["id"]) for inst in s["gpus"][g]["instances"] for c in inst["ci"])

    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle, index, ref):
        kind, g, _gi, _ci = _unhandle(handle)
        i = index.value if hasattr(index, "value") else int(index)
        with self._state() as s:
            found = self._mig_devices(s, g)
        if i >= len(found):
            return NOT_FOUND
        _put_handle(ref, _handle(MIG_DEVICE, g, *found[i]))
        return SUCCESS

    @staticmethod
    def _mig_id(handle, ref, which: int):
        """A MIG device handle's GPU (which=2) or compute (which=3) instance id."""
        parts = _unhandle(handle)
        if parts[0] != MIG_DEVICE:
            return INVALID_ARGUMENT
        _obj(ref).value = parts[which]
        return SUCCESS

    def nvmlDeviceGetGpuInstanceId(self, handle, ref):
        return self._mig_id(handle, ref, 2)

    def nvmlDeviceGetComputeInstanceId(self, handle, ref):
        return self._mig_id(handle, ref, 3)

    def nvmlDeviceGetAttributes_v2(self, handle, ref):
        kind, g, gi, ci = _unhandle(handle)
        with self._state() as s:
            inst = self._gi(s, g, gi)
            if kind != MIG_DEVICE or inst is None:
                return INVALID_ARGUMENT
            table, compute, slots = GEOMETRY[s["gpus"][g]["geometry"]]
            _pid, c, m, _starts, _n, _me = self._profile(s, g, inst["profile_index"])
            a = _obj(ref)
            a.gpuInstanceSliceCount, a.computeInstanceSliceCount = c, c
            a.multiprocessorCount = 132 * c // compute
            a.memorySizeMB = s["gpus"][g]["memory_mib"] * m // slots
        return SUCCESS

    # --- GPU instances -------------------------------------------------------------------

    def _profile(self, s, g, index):
        return GEOMETRY[s["gpus"][g]["geometry"]][0].get(index)

    def _index_of_id(self, s, g, profile_id):
        return next((i for i, p in GEOMETRY[s["gpus"][g]["geometry"]][0].items() if p[0] == profile_id), None)

    @staticmethod
    def _gi(s, g, gi):
        return next((i for i in s["gpus"][g]["instances"] if i["gi"] == gi), None)

    def nvmlDeviceGetGpuInstanceProfileInfoV(self, handle, index, ref):
        kind, g, _gi, _ci = _unhandle(handle)
        with self._state() as s:
            p = self._profile(s, g, index) if s["gpus"][g]["mig"] else None
            if p is None:
                return NOT_SUPPORTED
            _table, compute, slots = GEOMETRY[s["gpus"][g]["geometry"]]
            info = _obj(ref)
            info.id, info.sliceCount, info.instanceCount = p[0], p[1], p[4]
            info.memorySizeMB = s["gpus"][g]["memory_mib"] * p[2] // slots
        return SUCCESS

    def nvmlDeviceCreateGpuInstanceWithPlacement(self, handle, profile_id, placement, ref):
        kind, g, _gi, _ci = _unhandle(handle)
        with self._state(write=True) as s:
            gpu = s["gpus"][g]
            if not gpu["mig"]:
                return NOT_SUPPORTED
            if not s["root"]:
                return NO_PERMISSION
            index = self._index_of_id(s, g, profile_id)
            if index is None:
                return INVALID_ARGUMENT
            pid, compute, size, starts, _n, me = self._profile(s, g, index)
            place = _obj(placement)
            if place.start not in starts or place.size != size:
                return INVALID_ARGUMENT
            _table, total_compute, slots = GEOMETRY[gpu["geometry"]]
            taken = set()
            compute_used, me_used = 0, False
            for inst in gpu["instances"]:
                p = self._profile(s, g, inst["profile_index"])
                taken |= set(range(inst["start"], inst["start"] + inst["size"]))
                compute_used += p[1]
                me_used |= p[5]
            wanted = set(range(place.start, place.start + size))
            if wanted & taken or compute_used + compute > total_compute or (me and me_used):
                return INSUFFICIENT_RESOURCES
            gi = slots // size - 1 + place.start // size
            gpu["instances"].append({"gi": gi, "profile_index": index, "start": place.start, "size": size, "ci": []})
        _put_handle(ref, _handle(GPU_INSTANCE, g, gi))
        return SUCCESS

    def nvmlDeviceGetGpuInstances(self, handle, profile_id, array, count_ref):
        kind, g, _gi, _ci = _unhandle(handle)
        with self._state() as s:
            index = self._index_of_id(s, g, profile_id)
            if index is None:
                return INVALID_ARGUMENT
            found = [i["gi"] for i in s["gpus"][g]["instances"] if i["profile_index"] == index]
        for n, gi in enumerate(found):
            array[n] = ctypes.cast(ctypes.c_void_p(_handle(GPU_INSTANCE, g, gi)), type(array[0]))
        _obj(count_ref).value = len(found)
        return SUCCESS

    def nvmlDeviceGetGpuInstanceById(self, handle, gi, ref):
        kind, g, _gi, _ci = _unhandle(handle)
        with self._state() as s:
            if self._gi(s, g, gi) is None:
                return NOT_FOUND
        _put_handle(ref, _handle(GPU_INSTANCE, g, gi))
        return SUCCESS

    def nvmlGpuInstanceGetInfo(self, handle, ref):
        kind, g, gi, _ci = _unhandle(handle)
        with self._state() as s:
            inst = self._gi(s, g, gi)
            if inst is None:
                return NOT_FOUND
            info = _obj(ref)
            info.id = gi
            info.profileId = self._profile(s, g, inst["profile_index"])[0]
            info.placement.start, info.placement.size = inst["start"], inst["size"]
        return SUCCESS

    def nvmlGpuInstanceDestroy(self, handle):
        kind, g, gi, _ci = _unhandle(handle)
        with self._state(write=True) as s:
            if not s["root"]:
                return NO_PERMISSION
            inst = self._gi(s, g, gi)
            if inst is None:
                return NOT_FOUND
            if inst["ci"]:
                return IN_USE
            s["gpus"][g]["instances"].remove(inst)
        return SUCCESS

    # --- compute instances -----------------------------------------------------------------

    def nvmlGpuInstanceGetComputeInstanceProfileInfoV(self, handle, index, eng, ref):
        kind, g, gi, _ci = _unhandle(handle)
        with self._state() as s:
            inst = self._gi(s, g, gi)
            if inst is None:
                return NOT_FOUND
            gi_slices = self._profile(s, g, inst["profile_index"])[1]
        slices = {0x0: 1, 0x1: 2, 0x2: 3, 0x3: 4, 0x4: 7, 0x5: 8, 0x6: 6}.get(index)
        if slices is None or slices > gi_slices or eng != 0:
            return NOT_SUPPORTED
        info = _obj(ref)
        info.id, info.sliceCount, info.instanceCount = index, slices, gi_slices // slices
        return SUCCESS

    def nvmlGpuInstanceCreateComputeInstance(self, handle, profile_id, ref):
        kind, g, gi, _ci = _unhandle(handle)
        with self._state(write=True) as s:
            if not s["root"]:
                return NO_PERMISSION
            inst = self._gi(s, g, gi)
            if inst is None:
                return NOT_FOUND
            gi_slices = self._profile(s, g, inst["profile_index"])[1]
            slices = {0x0: 1, 0x1: 2, 0x2: 3, 0x3: 4, 0x4: 7, 0x5: 8, 0x6: 6}[profile_id]
            used = sum(c["slices"] for c in inst["ci"])
            if used + slices > gi_slices:
                return INSUFFICIENT_RESOURCES
            ci = next(n for n in range(8) if n not in {c["id"] for c in inst["ci"]})
            inst["ci"].append({"id": ci, "profile": profile_id, "slices": slices,
                               "uuid": f"MIG-{uuidlib.uuid4()}", "busy": False})
        _put_handle(ref, _handle(COMPUTE_INSTANCE, g, gi, ci))
        return SUCCESS

    def nvmlGpuInstanceGetComputeInstances(self, handle, profile_id, array, count_ref):
        kind, g, gi, _ci = _unhandle(handle)
        with self._state() as s:
            inst = self._gi(s, g, gi)
            if inst is None:
                return NOT_FOUND
            found = [c["id"] for c in inst["ci"] if c["profile"] == profile_id]
        if len(found) > len(array):
            return 7  # NVML_ERROR_INSUFFICIENT_SIZE
        for n, ci in enumerate(found):
            array[n] = ctypes.cast(ctypes.c_void_p(_handle(COMPUTE_INSTANCE, g, gi, ci)), type(array[0]))
        _obj(count_ref).value = len(found)
        return SUCCESS

    def nvmlComputeInstanceGetInfo_v2(self, handle, ref):
        kind, g, gi, ci = _unhandle(handle)
        with self._state() as s:
            inst = self._gi(s, g, gi)
            c = next((c for c in (inst or {}).get("ci", []) if c["id"] == ci), None)
            if c is None:
                return NOT_FOUND
            info = _obj(ref)
            info.id, info.profileId = ci, c["profile"]
        return SUCCESS

    def nvmlComputeInstanceDestroy(self, handle):
        kind, g, gi, ci = _unhandle(handle)
        with self._state(write=True) as s:
            if not s["root"]:
                return NO_PERMISSION
            inst = self._gi(s, g, gi)
            c = next((c for c in (inst or {}).get("ci", []) if c["id"] == ci), None)
            if c is None:
                return NOT_FOUND
            if c["busy"]:
                return IN_USE
            inst["ci"].remove(c)
        return SUCCESS


SITE = Path(__file__).resolve().parent / "nvml_site"


def process_env(state: Path) -> dict[str, str]:
    """The environment that makes a test hub's process (and the Python processes it starts
    with its environment) talk to the stand-in driver in `state` (nvml_site/sitecustomize.py)."""
    import os

    path = os.pathsep.join(p for p in (str(SITE), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path, "PODBAY_TEST_NVML_STATE": str(state)}


def install(state: Path):
    """Bind the real pynvml module to the stand-in library for this process; returns it."""
    import pynvml

    pynvml.nvmlLib = FakeNvmlLib(state)
    pynvml._nvmlGetFunctionPointer_cache.clear()
    return pynvml


def uninstall() -> None:
    """Unbind pynvml again (a later test in the process finds no driver, as on this machine)."""
    import pynvml

    pynvml.nvmlLib = None
    pynvml._nvmlGetFunctionPointer_cache.clear()


def stray_instance(gpu_state: dict, start: int = 0) -> dict:
    """A 1-slice instance already on a GPU's state (made by someone, or by a process that
    died before recording it), for `gpu(...)`'s dict."""
    gpu_state["instances"].append({"gi": 7 + start, "profile_index": 0x0, "start": start, "size": 1,
                                   "ci": [{"id": 0, "profile": 0x0, "slices": 1, "uuid": f"MIG-{uuidlib.uuid4()}",
                                           "busy": False}]})
    return gpu_state


def mark_busy(state: Path, mig_uuid: str, busy: bool = True) -> None:
    """Something runs on (or stopped running on) a MIG device: its compute instance is in use."""
    lib = FakeNvmlLib(state)
    with lib._state(write=True) as s:
        for g in s["gpus"]:
            for inst in g["instances"]:
                for c in inst["ci"]:
                    if c["uuid"] == mig_uuid:
                        c["busy"] = busy
                        return
    raise KeyError(mig_uuid)


def instances(state: Path) -> list[dict]:
    """Every GPU instance the driver has now: GPU UUID, profile id, start, GI id, MIG UUIDs."""
    s = json.loads(Path(state).read_text())
    out = []
    for g in s["gpus"]:
        table = GEOMETRY[g["geometry"]][0]
        for inst in g["instances"]:
            out.append({"gpu": g["uuid"], "profile_id": table[inst["profile_index"]][0], "start": inst["start"],
                        "gi": inst["gi"], "uuids": [c["uuid"] for c in inst["ci"]]})
    return out
