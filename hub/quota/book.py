"""The quota book: who holds how many GPU units, workspaces and job GPUs, on every backend.

One allocation row per workspace or job that runs, with what it weighs against its team's
quota. Where podbay also places devices (local, docker: nobody else assigns them on one
machine), the same transaction records one claim row per device the placement picked; a
unique constraint on (node, device) makes a double claim impossible even between
processes. Where the engine places (Kubernetes' device plugin, Slurm's GRES) there are no
claim rows: the allocation carries the units the profile weighs.

The quota check, the placement and the record happen in one transaction that holds the
write lock (SQLite: BEGIN IMMEDIATE; PostgreSQL: a table lock), so two racing spawns
cannot both squeeze under a quota, nor both take one device.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
import threading
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Callable, Iterable

from sqlalchemy import (
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    delete,
    event,
    func,
    select,
    text,
    update,
)
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, sessionmaker

from ..config import ProfileKind, Quota
from .placement import Placement


class Base(DeclarativeBase):
    pass


class AllocationRow(Base):
    __tablename__ = "podbay_allocations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # "workspace:<user>/<server>" or "job:<id>": one live allocation per thing that runs.
    key: Mapped[str] = mapped_column(String(512), unique=True)
    kind: Mapped[str] = mapped_column(String(16))
    user: Mapped[str] = mapped_column(String(255), index=True)
    team: Mapped[str | None] = mapped_column(String(255), index=True, nullable=True)
    profile: Mapped[str] = mapped_column(String(64))
    units_num: Mapped[int] = mapped_column(Integer, default=0)
    units_den: Mapped[int] = mapped_column(Integer, default=1)
    gpus: Mapped[int] = mapped_column(Integer, default=0)
    created: Mapped[float] = mapped_column(Float, default=time.time)
    # What the backend needs to find it again (a pid, a container id), as JSON.
    ref: Mapped[str] = mapped_column(Text, default="{}")

    claims: Mapped[list["ClaimRow"]] = relationship(
        back_populates="allocation", cascade="all, delete-orphan", passive_deletes=True
    )


class MetaRow(Base):
    __tablename__ = "podbay_meta"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[int] = mapped_column(Integer)


class ClaimRow(Base):
    __tablename__ = "podbay_claims"
    __table_args__ = (UniqueConstraint("node", "device", name="one_claim_per_device"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    allocation_id: Mapped[int] = mapped_column(ForeignKey("podbay_allocations.id", ondelete="CASCADE"))
    node: Mapped[str] = mapped_column(String(255))
    device: Mapped[str] = mapped_column(String(255))
    visible_id: Mapped[str] = mapped_column(String(255))

    allocation: Mapped[AllocationRow] = relationship(back_populates="claims")


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

    @classmethod
    def from_row(cls, row: AllocationRow) -> "Allocation":
        claims = sorted(row.claims, key=lambda c: c.id)
        return cls(
            key=row.key, kind=row.kind, user=row.user, team=row.team, profile=row.profile,
            units=Fraction(row.units_num, row.units_den), gpus=row.gpus,
            devices=tuple(c.visible_id for c in claims),
            node=claims[0].node if claims else None,
            ref=json.loads(row.ref or "{}"), created=row.created,
        )


@dataclass
class Snapshot:
    """Everything readers ask about the ledger, as of one version of it. Forms, the catalog
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


# Seconds a writer waits for the database (SQLite's busy timeout) and for this process's
# other writers.
WRITE_WAIT = 30.0


def _sqlite_engine(url: str, immediate: bool = True):
    engine = create_engine(url, connect_args={"timeout": WRITE_WAIT, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn, _record):
        # Let SQLAlchemy's "begin" below decide how transactions start.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA foreign_keys=ON")
        # In WAL mode NORMAL syncs at checkpoints, not at every commit: a process crash loses
        # nothing, a power loss may lose the last commits but never corrupts. That loss is
        # harmless here: SQLite is for one machine, whose workspaces and jobs the power loss
        # ends too, and the hub reconciles the book with what runs when it starts. It saves
        # an fsync per claim (benchmarks/claim_latency.py: median 4.2 → 3.1 ms).
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    if immediate:
        @event.listens_for(engine, "begin")
        def _begin(conn):
            # Take the write lock up front: a reader that later writes would otherwise fail
            # with "database is locked" instead of waiting its turn.
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


class _BoundedLock:
    """A lock whose wait gives up with the ledger's own words after `timeout` seconds."""

    def __init__(self, timeout: float):
        self._lock, self._timeout = threading.Lock(), timeout

    def __enter__(self):
        if not self._lock.acquire(timeout=self._timeout):
            raise LedgerUnavailable(f"the ledger stayed busy for {self._timeout:.0f} s; try again shortly")
        return self

    def __exit__(self, *exc):
        self._lock.release()


class LedgerUnavailable(RuntimeError):
    """The ledger's database cannot be used; the message says what to do."""


def database_url(url: str) -> str:
    """PostgreSQL URLs as people write them (`postgresql://…`, `postgres://…`) name
    SQLAlchemy's default driver, psycopg2, which podbay does not install: use psycopg 3,
    which the `postgresql` extra does."""
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            return "postgresql+psycopg://" + url[len(plain):]
    return url


def _safe(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - a URL too broken to parse is shown as it was given
        return url.split("@")[-1]


class QuotaBook:
    def __init__(self, url: str):
        url = database_url(url)
        self.url = url
        sqlite = url.startswith("sqlite")
        try:
            self.engine = _sqlite_engine(url) if sqlite else create_engine(url, pool_pre_ping=True)
        except ModuleNotFoundError as e:
            raise LedgerUnavailable(
                f"the ledger database {_safe(url)} needs the Python module {e.name}, which is not "
                "installed: pip install 'podbay[postgresql]' for PostgreSQL") from None
        except Exception as e:  # noqa: BLE001 - sqlalchemy's URL and plugin errors vary
            raise LedgerUnavailable(f"the ledger database URL {_safe(url)} is not usable: {e}") from None
        # Reads (forms, catalog, capacity) need no write lock: with WAL they never wait for
        # a claim in progress, and never make one wait.
        self.read_engine = _sqlite_engine(url, immediate=False) if sqlite else self.engine
        try:
            self._migrate()
        except OperationalError as e:
            reason = str(e.orig).strip().splitlines()[0] if e.orig else str(e)
            raise LedgerUnavailable(
                f"the ledger database {_safe(url)} cannot be reached ({reason}). Start it, or point "
                "PODBAY_DB_URL (c.Podbay.db_url) at one that runs") from None
        self.write_session = sessionmaker(self.engine, expire_on_commit=False)
        self.read_session = sessionmaker(self.read_engine, expire_on_commit=False)
        self._snapshot: Snapshot | None = None
        self._snapshot_lock = threading.Lock()
        # Writers of this process wait here rather than at SQLite's lock, whose busy handler
        # sleeps up to 100 ms between tries: in a storm of spawns that sleep, not the work,
        # was the tail (benchmarks/spawn_storm.py). Other processes (the hub and the service)
        # still meet at the database's own lock. The wait counts against the same budget as
        # SQLite's busy timeout, so queued writers fail in 30 s, not 30 s each in turn.
        self._writers = _BoundedLock(WRITE_WAIT)

    def _migrate(self) -> None:
        """Bring the schema to the newest revision (alembic), under the write lock."""
        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(Path(__file__).parent.parent / "migrations"))
        with self.engine.begin() as conn:
            if self.engine.dialect.name == "postgresql":
                # Two processes starting at once must not both create the tables.
                conn.execute(text("SELECT pg_advisory_xact_lock(7466821)"))
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

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

    def _bump(self, s: Session) -> None:
        s.execute(update(MetaRow).where(MetaRow.key == "version").values(value=MetaRow.value + 1))

    def taken(self, session: Session | None = None) -> set[tuple[str, str]]:
        s = session or self.read_session()
        try:
            return {(node, dev) for node, dev in s.execute(select(ClaimRow.node, ClaimRow.device))}
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

    def units_in_use(self, team: str | None, user: str, session: Session | None = None) -> Fraction:
        """GPU units held by workspaces of a team (or of a user who is in no team)."""
        s = session or self.read_session()
        try:
            # Summed per denominator in SQL (there are only a few: 1, 7, 4, the replicas),
            # so a team holding a thousand claims costs a handful of Fractions, not a thousand.
            q = (select(AllocationRow.units_den, func.sum(AllocationRow.units_num))
                 .where(AllocationRow.kind == "workspace").group_by(AllocationRow.units_den))
            q = q.where(AllocationRow.team == team) if team else q.where(
                AllocationRow.team.is_(None), AllocationRow.user == user)
            return sum((Fraction(n, d) for d, n in s.execute(q)), Fraction(0))
        finally:
            if session is None:
                s.close()

    def workspaces_of(self, user: str, session: Session | None = None) -> int:
        s = session or self.read_session()
        try:
            return s.scalar(select(func.count()).select_from(AllocationRow).where(
                AllocationRow.kind == "workspace", AllocationRow.user == user)) or 0
        finally:
            if session is None:
                s.close()

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
        stale = None
        for _attempt in range(3):
            try:
                with self._writers, self.write_session() as s, s.begin():
                    if self.engine.dialect.name == "postgresql":
                        # SQLite's BEGIN IMMEDIATE, in PostgreSQL's words: one claimer at a time.
                        s.execute(text("LOCK TABLE podbay_allocations IN SHARE ROW EXCLUSIVE MODE"))
                    if replace:
                        # One statement; its claims go with it (ON DELETE CASCADE).
                        stale = s.scalar(delete(AllocationRow).where(AllocationRow.key == key)
                                         .returning(AllocationRow.id))
                    return self._claim_locked(s, key, kind, user, team, demand, quota, placement, ref,
                                              enforce_job_quota, check_key=not replace)
            except ClaimRefused:
                if stale is not None:
                    # What the dead holder had goes back even when the new claim is refused
                    # (the refusal rolled its release back). Nothing held: no second write.
                    self.release(key)
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
        is_user = AllocationRow.user == user
        is_owner = (AllocationRow.team == team) if team else (AllocationRow.team.is_(None) & is_user)
        rows = s.execute(
            select(AllocationRow.kind, is_user, is_owner, AllocationRow.units_den, func.sum(AllocationRow.units_num),
                   func.count(), func.sum(AllocationRow.gpus))
            .where(is_user | is_owner)
            .group_by(AllocationRow.kind, is_user, is_owner, AllocationRow.units_den))
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
        if check_key and s.scalar(select(AllocationRow.id).where(AllocationRow.key == key)):
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
            gpus = sum(1 for d in devices or [] if d.kind == "full")
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
        row = AllocationRow(
            key=key, kind=kind, user=user, team=team, profile=demand.profile_id,
            units_num=units.numerator, units_den=units.denominator,
            gpus=gpus, ref=json.dumps(ref or {}),
        )
        row.claims = [ClaimRow(node=d.node, device=d.key, visible_id=d.visible_id) for d in devices]
        s.add(row)
        self._bump(s)
        s.flush()
        return Allocation.from_row(row)

    def set_ref(self, key: str, ref: dict) -> None:
        with self._writers, self.write_session() as s, s.begin():
            row = s.scalar(select(AllocationRow).where(AllocationRow.key == key))
            if row is not None:
                row.ref = json.dumps(ref)

    def release(self, key: str) -> bool:
        with self._writers, self.write_session() as s, s.begin():
            row = s.scalar(select(AllocationRow).where(AllocationRow.key == key))
            if row is None:
                return False
            s.delete(row)
            self._bump(s)
            return True

    def reconcile(self, alive: Callable[[Allocation], bool], kinds: Iterable[str] = ("workspace",)) -> list[str]:
        """Release allocations whose workspace or job no longer runs; return their keys."""
        dead = [a.key for kind in kinds for a in self.allocations(kind) if not alive(a)]
        for key in dead:
            self.release(key)
        return dead

    def dispose(self) -> None:
        self.engine.dispose()
        self.read_engine.dispose()
