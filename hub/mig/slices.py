"""The portal's side of MIG instances made per request: after a claim on an on-request GPU,
its instance is made and its MIG UUID recorded in the claim; after a release, and while an
instance that outlived its claim holds slots, the GPUs are tidied (nvml.py)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from ..config import ProfileKind
from ..gpu import family_for
from ..inventory import Inventory
from ..quota.book import Allocation, ClaimGone, ClaimRefused, NoCapacity, QuotaBook
from .nvml import MigError, MigMaker, MigSetupError, MigSlotsHeld

log = logging.getLogger("podbay.mig")


class OnRequestSlices:
    """The on-request GPUs of one deployment's inventory, with the book that says what holds
    them. `maker.nvml` is the driver's binding (a test gives the stand-in's)."""

    def __init__(self, inventory: Inventory, book: QuotaBook, data_dir: Path):
        self.inventory, self.book = inventory, book
        self.maker = MigMaker(Path(data_dir) / "mig.lock", book, {d.parent_uuid: d.node for d in inventory.on_request})
        keys = {d.key for d in inventory.on_request}
        # Only a release of such a device costs an NVML session (not every CPU workspace's).
        book.after_release.append(lambda _key, devices: self.tidy() if any(k in keys for k in devices) else None)

    def before_claim(self, spec: ProfileKind) -> None:
        """An instance that outlived its claim may have ended since it was seen: before a
        slice is placed, its slots are looked at again."""
        if spec.kind == "mig" and any(k.endswith("#leftover") for _, k in self.book.snapshot().taken):
            self.tidy()

    def make_for(self, allocation: Allocation, again: Callable[[], Allocation] | None = None) -> Allocation:
        """Make the MIG instances an allocation's on-request devices need and record their
        UUIDs. Where the start was held by an instance that outlived its claim (now recorded
        as a leftover), the claim is made `again` once, elsewhere. A failure takes the claim
        back (that claim: not a later one under the same key) and refuses the request."""
        todo = [d for k in allocation.device_keys
                if (d := self.inventory.by_key.get((allocation.node, k))) is not None and d.on_request]
        if not todo:
            return allocation
        recorded = []

        def record(made):
            recorded.append(self.book.record_made(allocation, {
                key: (m.uuid, {"gpu": m.gpu_uuid, "gpu_instance": m.gpu_instance, "profile": m.profile})
                for key, m in made.items()}))

        def take_back(**kw) -> bool:
            return self.book.release(allocation.key, only=allocation, **kw)

        gone = ClaimRefused(f"{allocation.key} was stopped or started again while its MIG instance was being made")
        try:
            self.maker.make(todo, record)
        except MigSlotsHeld as e:
            if again is not None:
                # Asked again at once: one request. Unless a restart took the key meanwhile
                # (then its claim is not this one to replace).
                if not take_back(forget=True):
                    raise gone from None
                return self.make_for(again())
            take_back(refused="capacity")
            raise NoCapacity(f"no {allocation.profile} could be made: {e}; it is removed once that ends") from e
        except MigSetupError as e:
            take_back(refused="capacity")
            # The operator's to fix: the whole of it in the log, the person told that much.
            log.error("could not make a %s MIG instance for %s: %s", allocation.profile, allocation.key, e)
            raise NoCapacity(f"no {allocation.profile} can be made on this server now (a set-up problem that "
                             "podbay's log shows the administrators); pick another profile") from e
        except MigError as e:
            take_back(refused="capacity")
            raise NoCapacity(f"no {allocation.profile} could be made: {e}") from e
        except ClaimGone:
            raise gone from None
        except BaseException:
            take_back()
            raise
        return recorded[0]

    def tidy(self) -> None:
        """Remove the MIG instances no claim holds on the on-request GPUs. Never raises: what
        cannot be removed now is at the next tidy."""
        gpus = {(d.parent_uuid, d.model, d.memory_mib) for d in self.inventory.on_request}
        try:
            self.maker.tidy([(uuid, family_for(model, mem)) for uuid, model, mem in sorted(gpus)])
        except Exception as e:  # noqa: BLE001 - a release has happened; say why nothing was removed
            log.warning("could not remove the MIG instances of ended workspaces and jobs: %s", e)
