"""MIG instances made per request on the GPUs podbay owns (`mig_on_request`): `nvml` makes
and removes them through the NVIDIA driver, `slices` ties that to the quota book's claims."""

from .nvml import Made, MigError, MigMaker, MigSetupError, MigSlotsHeld, gi_profile_index
from .slices import OnRequestSlices

__all__ = ["Made", "MigError", "MigMaker", "MigSetupError", "MigSlotsHeld", "OnRequestSlices", "gi_profile_index"]
