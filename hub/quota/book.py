"""The quota book: who holds how many GPU units, workspaces and job GPUs, on every backend.

One allocation row per workspace or job that runs, with what it weighs against its team's
quota. Where podbay also places devices (local, docker: nobody else assigns them on one
machine), the same transaction records one claim row per device the placement picked; a
unique constraint on (node, device) makes a double claim impossible even between
processes. Where the engine places (Kubernetes' device plugin, Slurm's GRES) there are no
claim rows: the allocation carries the units the profile weighs.

The quota check, the placement and the record happen in one transaction that holds the
write lock (SQLite: BEGIN IMMEDIATE; PostgreSQL: a table lock), so two racing spawns
cannot both squeeze under a quota, nor both take one device. (Two MIG instances made per
request that would overlap have different keys: the lock alone keeps them apart, as the
placement reads every claim under it.)

Long because: the claim, its release and what they record (the demand, the holdings, the
MIG instances made for a claim) share one transaction and one lock; split apart, each part
would reach into the others' sessions.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Callable, Iterable

from sqlalchemy import bindparam, delete, func, insert, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..config import ProfileKind, Quota
from .database import AllocationRow, ClaimRow, Database, DemandRow, HoldingRow, MetaRow
from .placement import Placement


@dataclass(frozen=True)
class Allocation:
    key: str
    kind: str
    user: str
    team: str | None
    profile: str
    units: Fraction
    gpus: int
    devices: tuple[str, ...]  # visible ids, in claim order
    node: str | None
    ref: dict
    created: float
    # The inventory's keys of the devices, in the same order.
    device_keys: tuple[str, ...] = ()
    # The row's id: with `created`, this claim and not a later one under the same key (a
    # restart; SQLite may give the new row the old one's id).
    row_id: int = 0

    def is_row(self, row: AllocationRow | None) -> bool:
        return row is not None and (row.id, row.key, row.created) == (self.row_id, self.key, self.created)

    @classmethod
    def from_row(cls, row: AllocationRow) -> "Allocation":
        claims = sorted(row.claims, key=lambda c: c.id)
        return cls(
            key=row.key, kind=row.kind, user=row.user, team=row.team, profile=row.profile,
            units=Fraction(row.units_num, row.units_den), gpus=row.gpus,
            devices=tuple(c.visible_id for c in claims),
            node=claims[0].node if claims else None,
            ref=json.loads(row.ref or "{}"), created=row.created,
            device_keys=tuple(c.device for c in claims), row_id=row.id,
        )


@dataclass
class Snapshot:
    """Everything readers ask about the quota book, as of one version of it. Forms, the catalog
    and capacity read this instead of querying per profile; it is rebuilt only when a claim
    or a release has bumped the version."""

    version: int
    taken: frozenset[tuple[str, str]]
    units: dict[tuple[str | None, str | None], Fraction]
    workspaces: dict[str, int]
    job_gpus: dict[tuple[str | None, str | None], int]
    memo: dict = field(default_factory=dict)

    @staticmethod
    def owner(team: str | None, user: str) -> tuple[str | None, str | None]:
        # Teams share a quota; a user in no team is counted alone.
        return (team, None) if team else (None, user)

    def units_of(self, team: str | None, user: str) -> Fraction:
        return self.units.get(self.owner(team, user), Fraction(0))

    def job_gpus_of(self, team: str | None, user: str) -> int:
        return self.job_gpus.get(self.owner(team, user), 0)


@dataclass(frozen=True)
class Demand:
    """What one workspace or job asks of the quota book."""

    profile_id: str
    # Per node, for jobs: `gpu-4` on each of `nodes` nodes.
    spec: ProfileKind
    pools: tuple[str, ...]
    # GPU units a workspace weighs where the engine places (from the capacity source);
    # where podbay places, the devices picked weigh it.
    units: Fraction = Fraction(0)
    # Whole GPUs a job holds, over all its nodes.
    gpus: int = 0


class ClaimGone(Exception):
    """The claim was released (or replaced by a later one under its key) meanwhile."""


class ClaimRefused(Exception):
    """A claim that cannot be granted; the message is meant for the user."""


class QuotaExceeded(ClaimRefused):
    pass


class NoCapacity(ClaimRefused):
    pass


def fmt_units(u: Fraction) -> str:
    """GPU units for people: 1, 0.5, 0.43 (3/7)."""
    if u.denominator == 1:
        return str(u.numerator)
    return f"{float(u):.2f}".rstrip("0").rstrip(".")


def _devices_json(devices: Iterable[tuple[str, str]]) -> str:
    """A holding's devices: [[node, visible id], …], what utilisation samples are matched by."""
    return json.dumps([[node, visible] for node, visible in devices])


# Statements on the tables (Core), made once: under the write lock they skip the ORM's bulk
# bookkeeping and the building of the statement at every call.
_ALLOCATIONS, _CLAIMS, _HOLDINGS = AllocationRow.__table__, ClaimRow.__table__, HoldingRow.__table__
_DEMAND, _META = DemandRow.__table__, MetaRow.__table__
_BUMP = update(_META).where(_META.c.key == "version").values(value=_META.c.value + 1)
_TAKEN = select(_CLAIMS.c.node, _CLAIMS.c.device)
_KEY_HELD = select(_ALLOCATIONS.c.id).where(_ALLOCATIONS.c.key == bindparam("key"))
_ASKED = select(_DEMAND.c.id).where(_DEMAND.c.key == bindparam("key")).limit(1)
_SET_REF = update(_ALLOCATIONS).where(_ALLOCATIONS.c.key == bindparam("of_key")).values(ref=bindparam("new_ref"))


def _held_statement(alone: bool):
    """What _held reads: one row per (kind, the user's?, the owner's?, denominator)."""
    a = _ALLOCATIONS.c
    is_user = a.user == bindparam("user")
    is_owner = (a.team.is_(None) & is_user) if alone else (a.team == bindparam("team"))
    return (select(a.kind, is_user, is_owner, a.units_den, func.sum(a.units_num), func.count(), func.sum(a.gpus))
            .where(is_user | is_owner).group_by(a.kind, is_user, is_owner, a.units_den))


_HELD_BY_TEAM, _HELD_ALONE = _held_statement(alone=False), _held_statement(alone=True)


class QuotaBook:
    def __init__(self, url: str):
        self.db = Database(url)
        self.url, self.engine = self.db.url, self.db.engine
        self.write_session, self.read_session = self.db.write_session, self.db.read_session
        self._writers = self.db.writers
        self._snapshot: Snapshot | None = None
        self._snapshot_lock = threading.Lock()
        # Keys with a claim under way in this process: a release of one waits for it to end,
        # so that a stop during a start's claim gives back what that claim took.
        self._claiming: dict[str, int] = {}
        self._claims_done = threading.Condition()
        # Called with the key and its device keys after each release has committed (the
        # portal removes MIG instances made for it).
        self.after_release: list[Callable[[str], None]] = []

    # --- reading -----------------------------------------------------------------

    def version(self) -> int:
        with self.read_session() as s:
            return s.scalar(select(MetaRow.value).where(MetaRow.key == "version")) or 0

    def snapshot(self) -> Snapshot:
        """The current state for readers: one small query when nothing changed."""
        version = self.version()
        with self._snapshot_lock:
            snap = self._snapshot
            if snap is not None and snap.version == version:
                return snap
            with self.read_session() as s:
                # Read the version again inside the same read, so the snapshot is never newer
                # than the version it is filed under.
                version = s.scalar(select(MetaRow.value).where(MetaRow.key == "version")) or 0
                taken = frozenset((n, d) for n, d in s.execute(select(ClaimRow.node, ClaimRow.device)))
                units: dict = {}
                workspaces: dict[str, int] = {}
                job_gpus: dict = {}
                rows = s.execute(select(AllocationRow.kind, AllocationRow.user, AllocationRow.team,
                                        AllocationRow.units_num, AllocationRow.units_den, AllocationRow.gpus))
                for kind, user, team, num, den, gpus in rows:
                    owner = Snapshot.owner(team, user)
                    if kind == "workspace":
                        units[owner] = units.get(owner, Fraction(0)) + Fraction(num, den)
                        workspaces[user] = workspaces.get(user, 0) + 1
                    else:
                        job_gpus[owner] = job_gpus.get(owner, 0) + gpus
            self._snapshot = Snapshot(version, taken, units, workspaces, job_gpus)
            return self._snapshot

    @staticmethod
    def _bump(s: Session) -> None:
        # On the table, not the ORM class: no ORM bulk-update bookkeeping under the write lock.
        s.execute(_BUMP)

    def taken(self, session: Session | None = None) -> set[tuple[str, str]]:
        s = session or self.read_session()
        try:
            return {(node, dev) for node, dev in s.execute(_TAKEN)}
        finally:
            if session is None:
                s.close()

    def allocations(self, kind: str | None = None, user: str | None = None) -> list[Allocation]:
        with self.read_session() as s:
            q = select(AllocationRow)
            if kind:
                q = q.where(AllocationRow.kind == kind)
            if user:
                q = q.where(AllocationRow.user == user)
            return [Allocation.from_row(r) for r in s.scalars(q.order_by(AllocationRow.id))]

    def get(self, key: str) -> Allocation | None:
        with self.read_session() as s:
            row = s.scalar(select(AllocationRow).where(AllocationRow.key == key))
            return Allocation.from_row(row) if row else None

    # --- writing -----------------------------------------------------------------

    def claim(self, *, key: str, kind: str, user: str, team: str | None, demand: Demand, quota: Quota,
              placement: Placement | None = None, ref: dict | None = None, replace: bool = False,
              enforce_job_quota: bool = True) -> Allocation:
        """Check the quota, place devices (with a `placement`) and record it all in one
        transaction; raise ClaimRefused if it cannot be granted.

        With `replace`, what `key` still holds is released in the same transaction first (a
        workspace that died without being stopped): one write, not two, per start. Without
        `enforce_job_quota` a job is recorded whatever its team already runs: an engine with
        its own queue (Kueue, Slurm) holds the job until its own quota lets it run."""
        with self._claims_done:
            self._claiming[key] = self._claiming.get(key, 0) + 1
        try:
            return self._claim(key, kind, user, team, demand, quota, placement, ref, replace, enforce_job_quota)
        finally:
            with self._claims_done:
                self._claiming[key] -= 1
                if not self._claiming[key]:
                    del self._claiming[key]
                self._claims_done.notify_all()

    def _claim(self, key, kind, user, team, demand: Demand, quota: Quota, placement: Placement | None, ref,
               replace: bool, enforce_job_quota: bool) -> Allocation:
        stale = None
        for _attempt in range(3):
            recorded: ClaimRefused | None = None
            try:
                with self._writers, self.write_session() as s, s.begin():
                    if self.engine.dialect.name == "postgresql":
                        # SQLite's BEGIN IMMEDIATE, in PostgreSQL's words: one claimer at a time.
                        s.execute(text("LOCK TABLE podbay_allocations IN SHARE ROW EXCLUSIVE MODE"))
                    if replace:
                        # One statement; its claims go with it (ON DELETE CASCADE).
                        stale = s.scalar(delete(_ALLOCATIONS).where(_ALLOCATIONS.c.key == key)
                                         .returning(_ALLOCATIONS.c.id))
                        if stale is not None:
                            self._end_holding(s, key)
                    try:
                        return self._claim_locked(s, key, kind, user, team, demand, quota, placement, ref,
                                                  enforce_job_quota, check_key=not replace)
                    except (QuotaExceeded, NoCapacity) as e:
                        if stale is not None:
                            raise
                        # A refusal writes nothing but its record: that record is this
                        # transaction's, not a second turn at the write lock (a storm of starts
                        # is mostly refusals, benchmarks/spawn_storm.py).
                        self._record(s, key, kind, user, team, demand.profile_id,
                                     demand.pools[0] if demand.pools else None,
                                     "quota" if isinstance(e, QuotaExceeded) else "capacity")
                        recorded = e
                raise recorded
            except ClaimRefused as e:
                if e is recorded:
                    raise
                if stale is not None:
                    # What the dead holder had goes back even when the new claim is refused
                    # (the refusal rolled its release back). Nothing held: no second write.
                    self._release(key)
                if isinstance(e, (QuotaExceeded, NoCapacity)):
                    self._record_refusal(key, kind, user, team, demand,
                                         "quota" if isinstance(e, QuotaExceeded) else "capacity")
                raise
            except IntegrityError as e:
                # Only reachable on a backend without the lock above: someone else
                # claimed the same device between our read and our insert. Pick again.
                if "one_claim_per_device" not in str(e) and "podbay_claims" not in str(e):
                    raise
        raise NoCapacity(f"the devices for {demand.profile_id} were taken by others while claiming; try again")

    def _held(self, s: Session, user: str, team: str | None) -> tuple[int, Fraction, int]:
        """(the user's workspaces, the owner's workspace units, the owner's job GPUs) in one
        query: a claim holds the write lock, and each statement it makes is a turn it waits
        for the GIL in a busy hub (benchmarks/spawn_storm.py)."""
        rows = s.execute(_HELD_BY_TEAM if team else _HELD_ALONE, {"user": user, "team": team})
        workspaces, units, job_gpus = 0, Fraction(0), 0
        for kind, mine, owners, den, num, n, gpus in rows:
            if kind == "workspace":
                workspaces += n if mine else 0
                units += Fraction(num, den) if owners else 0
            elif owners:
                job_gpus += gpus or 0
        return workspaces, units, job_gpus

    def _claim_locked(self, s: Session, key, kind, user, team, demand: Demand, quota: Quota,
                      placement: Placement | None, ref, enforce_job_quota: bool, check_key: bool = True):
        if check_key and s.scalar(_KEY_HELD, {"key": key}):
            raise ClaimRefused(f"{key} already holds devices; stop it first")
        who = f"team {team}" if team else "you (you are in no team)"
        n, used, used_gpus = self._held(s, user, team)
        if kind == "workspace":
            if n >= quota.workspaces_per_user:
                raise QuotaExceeded(
                    f"you already run {n} workspace{'s' if n != 1 else ''}, the most your quota allows "
                    f"({quota.workspaces_per_user}); stop one first"
                )
        if kind == "job" and demand.gpus and enforce_job_quota:
            if used_gpus + demand.gpus > quota.job_gpus:
                raise QuotaExceeded(
                    f"{who} already run{'s' if team else ''} jobs on {used_gpus} of "
                    f"{quota.job_gpus} job GPUs; this job needs {demand.gpus}"
                )
        if placement is not None:
            devices = placement.pick(demand.spec, list(demand.pools), self.taken(s))
            units = sum((d.weight for d in devices or []), Fraction(0))
            # A job's GPUs are what it asked for in all (over its nodes); a workspace's, the
            # whole GPUs picked.
            gpus = demand.gpus or sum(1 for d in devices or [] if d.kind == "full")
        else:
            devices, units, gpus = [], demand.units, demand.gpus
        if kind == "workspace" and units:
            if used + units > quota.units:
                raise QuotaExceeded(
                    f"{demand.profile_id} needs {fmt_units(units)} GPU units, but {who} already "
                    f"use{'s' if team else ''} {fmt_units(used)} of {fmt_units(quota.units)}; "
                    "stop a GPU workspace or pick a smaller profile"
                )
        if devices is None:
            raise NoCapacity(
                f"no {demand.profile_id} is free in pool {', '.join(demand.pools)} right now; "
                "pick another profile or try again when one is released"
            )
        # The rows, written on the tables (Core): the ORM's unit of work, under the write lock,
        # cost more than the statements themselves.
        ref_json, created = json.dumps(ref or {}), time.time()
        row_id = s.execute(insert(_ALLOCATIONS).returning(_ALLOCATIONS.c.id), {
            "key": key, "kind": kind, "user": user, "team": team, "profile": demand.profile_id,
            "units_num": units.numerator, "units_den": units.denominator, "gpus": gpus, "ref": ref_json,
            "created": created}).scalar_one()
        if devices:
            s.execute(insert(_CLAIMS), [{"allocation_id": row_id, "node": d.node, "device": d.key,
                                         "visible_id": d.visible_id} for d in devices])
        pool = devices[0].pool if devices else (demand.pools[0] if demand.pools else None)
        # The history (showback, the idle clock), in the same transaction as the claim.
        s.execute(insert(_HOLDINGS), {
            "key": key, "kind": kind, "user": user, "team": team, "profile": demand.profile_id, "pool": pool,
            "units_num": units.numerator, "units_den": units.denominator, "gpus": gpus,
            "devices": _devices_json((d.node, d.visible_id) for d in devices), "ref": ref_json,
            "started": created})
        self._record(s, key, kind, user, team, demand.profile_id, pool, "granted")
        self._bump(s)
        # As Allocation.from_row would read it back.
        return Allocation(key=key, kind=kind, user=user, team=team, profile=demand.profile_id, units=units,
                          gpus=gpus, devices=tuple(d.visible_id for d in devices),
                          node=devices[0].node if devices else None, ref=json.loads(ref_json), created=created,
                          device_keys=tuple(d.key for d in devices), row_id=row_id)

    # --- demand ----------------------------------------------------------------------

    @staticmethod
    def _record(s: Session, key: str, kind: str, user: str, team: str | None, profile: str, pool: str | None,
                outcome: str) -> None:
        """One request and what it got. A job asks again each time the queue is looked at while
        it waits: only its first ask is its demand."""
        if kind == "job" and s.scalar(_ASKED, {"key": key}) is not None:
            return
        s.execute(insert(_DEMAND), {"at": time.time(), "key": key, "kind": kind, "user": user, "team": team,
                                    "profile": profile, "pool": pool, "outcome": outcome})

    def _record_refusal(self, key: str, kind: str, user: str, team: str | None, demand: Demand,
                        outcome: str) -> None:
        if kind == "job":
            # A waiting job is asked about at every turn of the queue: look before taking the
            # write lock, which claims need, for the one record it keeps.
            with self.read_session() as s:
                if s.scalar(select(DemandRow.id).where(DemandRow.key == key).limit(1)) is not None:
                    return
        with self._writers, self.write_session() as s, s.begin():
            self._record(s, key, kind, user, team, demand.profile_id,
                         demand.pools[0] if demand.pools else None, outcome)

    def set_ref(self, key: str, ref: dict) -> None:
        params = {"of_key": key, "new_ref": json.dumps(ref)}
        # One statement under the write lock (each spawn makes one, beside the claims).
        with self._writers, self.write_session() as s, s.begin():
            s.execute(_SET_REF, params)

    def record_made(self, allocation: Allocation, made: dict[str, tuple[str, dict]]) -> Allocation:
        """Record what was made for this allocation's claims (MIG instances made per request):
        device key → (its visible id, the ref's "made" facts: parent GPU, instance id,
        profile), in the claims, the open holding (utilisation is matched by them) and both
        refs. ClaimGone: that claim is no more (released, or replaced by a restart)."""
        with self._writers, self.write_session() as s, s.begin():
            row = s.get(AllocationRow, allocation.row_id)
            if not allocation.is_row(row) or not set(made) <= {c.device for c in row.claims}:
                raise ClaimGone(allocation.key)
            for c in row.claims:
                if c.device in made:
                    c.visible_id = made[c.device][0]
            facts = {vid: info for vid, info in made.values()}
            ref = {**json.loads(row.ref or "{}"), "made": facts}
            row.ref = json.dumps(ref)
            holding = s.scalar(select(HoldingRow).where(HoldingRow.key == allocation.key, HoldingRow.ended.is_(None)))
            if holding is not None:
                holding.devices = _devices_json((c.node, c.visible_id) for c in sorted(row.claims, key=lambda c: c.id))
                holding.ref = json.dumps({**json.loads(holding.ref or "{}"), "made": facts})
            self._bump(s)
            s.flush()
            return Allocation.from_row(row)

    def visible_ids(self) -> dict[str, str]:
        """Every visible id the claims hold → the key of its allocation (what a MIG tidy keeps)."""
        with self.read_session() as s:
            return dict(s.execute(select(ClaimRow.visible_id, AllocationRow.key)
                                  .join(AllocationRow, AllocationRow.id == ClaimRow.allocation_id)).all())

    def hold_leftover(self, node: str, device: str, visible_id: str, profile: str) -> None:
        """Record a MIG instance that outlived its claim (something still runs on it) as held
        by nobody (`leftover:` key, device `<key>#leftover`): its slots are taken for the
        placement and the capacity views, in no one's quota, usage or demand, until a tidy
        removes it."""
        key = f"leftover:{device}"
        with self._writers, self.write_session() as s, s.begin():
            if s.scalar(select(AllocationRow.id).where(AllocationRow.key == key)):
                return
            row = AllocationRow(key=key, kind="leftover", user="", team=None, profile=profile, gpus=0,
                                units_num=0, units_den=1, ref="{}")
            row.claims = [ClaimRow(node=node, device=f"{device}#leftover", visible_id=visible_id)]
            s.add(row)
            self._bump(s)

    def requests_per_profile(self, since: float) -> dict[str, int]:
        """Requests since then per profile, whatever they got (what people ask for)."""
        with self.read_session() as s:
            return dict(s.execute(select(DemandRow.profile, func.count()).where(DemandRow.at >= since)
                                  .group_by(DemandRow.profile)).all())

    def release(self, key: str, refused: str | None = None, *, only: Allocation | None = None,
                forget: bool = False, notify: bool = True) -> bool:
        """Give back what `key` holds (with `only`: if that claim is still the one it holds). With `refused` ("capacity"), the claim just made is taken back because the
        engine has no room after all: its request is recorded as refused, not granted; with
        `forget`, its request is struck (it is asked again at once). `notify`: call
        `after_release`. A claim of the same key under way in this process (a stop while
        the start claims) ends first: what it took is then given back."""
        with self._claims_done:
            self._claims_done.wait_for(lambda: key not in self._claiming)
        return self._release(key, refused, only=only, forget=forget, notify=notify)

    def _release(self, key: str, refused: str | None = None, *, only: Allocation | None = None,
                 forget: bool = False, notify: bool = True) -> bool:
        # Look first, without the write lock: a release of nothing (a start that was refused,
        # a second stop) is then a read, not a turn at the lock the claims wait for. What is
        # found is looked at again under the lock; one that was not there cannot be this
        # release's to give back (a later claim under the key is not `only`; no claim of the
        # key is under way here, and one elsewhere that commits after this read came after it).
        with self.read_session() as s:
            found = s.execute(select(AllocationRow.id, AllocationRow.created)
                              .where(AllocationRow.key == key)).first()
        if found is None or (only is not None and (found.id, found.created) != (only.row_id, only.created)):
            return False
        with self._writers, self.write_session() as s, s.begin():
            row = s.scalar(select(AllocationRow).where(AllocationRow.key == key))
            if row is None or (only is not None and not only.is_row(row)):
                return False
            devices = [c.device for c in row.claims]
            if forget:
                # The request this claim recorded as granted (a job that waited recorded its
                # request when it asked: that one stays).
                s.execute(delete(DemandRow).where(DemandRow.key == key, DemandRow.outcome == "granted",
                                                  DemandRow.at >= row.created - 1))
            elif refused:
                last = s.scalar(select(func.max(DemandRow.id)).where(DemandRow.key == key))
                if last is not None:
                    s.execute(update(DemandRow).where(DemandRow.id == last, DemandRow.outcome == "granted")
                              .values(outcome=refused))
            s.delete(row)
            self._end_holding(s, key)
            self._bump(s)
        if notify:
            for hook in self.after_release:
                hook(key, devices)
        return True

    @staticmethod
    def _end_holding(s: Session, key: str) -> None:
        s.execute(update(_HOLDINGS).where(_HOLDINGS.c.key == key, _HOLDINGS.c.ended.is_(None))
                  .values(ended=time.time()))

    def reconcile(self, alive: Callable[[Allocation], bool], kinds: Iterable[str] = ("workspace",)) -> list[str]:
        """Release allocations whose workspace or job no longer runs; return their keys."""
        dead = [a.key for kind in kinds for a in self.allocations(kind) if not alive(a)]
        for key in dead:
            self.release(key)
        return dead

    def dispose(self) -> None:
        self.db.dispose()
