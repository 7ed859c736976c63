"""Where the quota book (and the job table beside it) is kept: the tables, the engines
(SQLite under the data directory, PostgreSQL in production), the write lock and the
migrations (alembic, in ../migrations)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from sqlalchemy import (
    Float,
    Index,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    text,
)
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, sessionmaker


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


class HoldingRow(Base):
    """Who held what, from when to when: one row per workspace or job start, kept after it
    ends (showback), with the idle clock of the GPU it holds. Written in the same
    transactions as the allocation it mirrors, so the history cannot miss a claim."""

    __tablename__ = "podbay_holdings"
    __table_args__ = (Index("holdings_open", "ended", "kind"), Index("holdings_period", "started", "ended"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(512), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    user: Mapped[str] = mapped_column(String(255), index=True)
    team: Mapped[str | None] = mapped_column(String(255), nullable=True)
    profile: Mapped[str] = mapped_column(String(64))
    pool: Mapped[str | None] = mapped_column(String(64), nullable=True)
    units_num: Mapped[int] = mapped_column(Integer, default=0)
    units_den: Mapped[int] = mapped_column(Integer, default=1)
    gpus: Mapped[int] = mapped_column(Integer, default=0)
    # [[node, visible id], …]: what utilisation samples are matched against.
    devices: Mapped[str] = mapped_column(Text, default="[]")
    ref: Mapped[str] = mapped_column(Text, default="{}")
    started: Mapped[float] = mapped_column(Float)
    ended: Mapped[float | None] = mapped_column(Float, nullable=True)
    # Utilisation over the whole holding (percent): samples, their sum and the highest.
    samples: Mapped[int] = mapped_column(Integer, default=0)
    util_sum: Mapped[float] = mapped_column(Float, default=0.0)
    util_max: Mapped[float | None] = mapped_column(Float, nullable=True)
    # The idle clock: the last sample's time, since when every sample was idle, when the
    # person was warned, until when they asked to keep the GPU, and the action taken.
    last_sample: Mapped[float | None] = mapped_column(Float, nullable=True)
    idle_since: Mapped[float | None] = mapped_column(Float, nullable=True)
    warned_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    keep_until: Mapped[float | None] = mapped_column(Float, nullable=True)
    acted: Mapped[str | None] = mapped_column(String(16), nullable=True)


class DemandRow(Base):
    """One request to run something on GPUs and what it got: granted, or refused for capacity
    or for quota (a job: it waited). Every backend's claims write it, the granted ones in the
    claim's own transaction; showback counts it and `podbay advise` replays it. Kept for
    `usage.retention_days`, like the holdings."""

    __tablename__ = "podbay_demand"
    __table_args__ = (Index("demand_period", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[float] = mapped_column(Float)
    # The allocation key it asked under ("workspace:<user>/<server>", "job:<id>"): a job's
    # retries while it waits are one request, and a granted request's holding says how long.
    key: Mapped[str] = mapped_column(String(512), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    user: Mapped[str] = mapped_column(String(255))
    team: Mapped[str | None] = mapped_column(String(255), nullable=True)
    profile: Mapped[str] = mapped_column(String(64))
    pool: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # granted | capacity | quota
    outcome: Mapped[str] = mapped_column(String(16))


class UsageHourRow(Base):
    """Utilisation of one holding in one hour: the compact time series showback and the
    charts read. One row per holding per hour it was measured."""

    __tablename__ = "podbay_usage_hours"

    holding_id: Mapped[int] = mapped_column(ForeignKey("podbay_holdings.id", ondelete="CASCADE"),
                                            primary_key=True)
    hour: Mapped[int] = mapped_column(Integer, primary_key=True)  # unix time // 3600
    samples: Mapped[int] = mapped_column(Integer, default=0)
    util_sum: Mapped[float] = mapped_column(Float, default=0.0)


class CounterRow(Base):
    """What pruning took out of the history, so that /metrics' counters never go down:
    `held|<team>|<kind>`, `used|<team>|<kind>` (GPU-hours), `actions|<action>`."""

    __tablename__ = "podbay_counters"

    key: Mapped[str] = mapped_column(String(512), primary_key=True)
    value: Mapped[float] = mapped_column(Float, default=0.0)


class IdleActionRow(Base):
    """An idle rule's action on a workspace: recorded before it is carried out, so that a
    restart of the service finishes it rather than repeating or forgetting it."""

    __tablename__ = "podbay_idle_actions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    holding_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    user: Mapped[str] = mapped_column(String(255), index=True)
    server: Mapped[str] = mapped_column(String(255))
    action: Mapped[str] = mapped_column(String(16))
    profile: Mapped[str] = mapped_column(String(64))
    at: Mapped[float] = mapped_column(Float, index=True)
    # started → (release-gpu: restarting, once stopped) → done | failed | skipped
    state: Mapped[str] = mapped_column(String(16), default="started")
    message: Mapped[str] = mapped_column(Text, default="")
    # release-gpu: the workspace's options, kept before it is stopped (JSON)
    options: Mapped[str] = mapped_column(Text, default="{}")


# Seconds a writer waits for the database (SQLite's busy timeout) and for this process's
# other writers.
WRITE_WAIT = 30.0


def _sqlite_engine(url: str, immediate: bool = True, durable: bool = False):
    engine = create_engine(url, connect_args={"timeout": WRITE_WAIT, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn, _record):
        # Let SQLAlchemy's "begin" below decide how transactions start.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA foreign_keys=ON")
        # Claims and releases: in WAL mode NORMAL syncs at checkpoints, not at every commit.
        # A process crash loses nothing; a power loss may lose the last commits, never
        # corrupts. That loss is harmless for the book: SQLite is for one machine, whose
        # workspaces and jobs the power loss ends too, and the hub reconciles the book with
        # what runs when it starts. It saves an fsync per claim (benchmarks/claim_latency.py:
        # median 4.2 → 3.1 ms). What users were told is stored (a job submitted: 201) is
        # written `durable`, synced at every commit.
        cur.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
        cur.close()

    if immediate:
        @event.listens_for(engine, "begin")
        def _begin(conn):
            # Take the write lock up front: a reader that later writes would otherwise fail
            # with "database is locked" instead of waiting its turn.
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


class _BoundedLock:
    """A lock whose wait gives up in the quota book's own words after `timeout` seconds."""

    def __init__(self, timeout: float):
        self._lock, self._timeout = threading.Lock(), timeout

    def __enter__(self):
        if not self._lock.acquire(timeout=self._timeout):
            raise LedgerUnavailable(f"the quota book's database stayed busy for {self._timeout:.0f} s; try again shortly")
        return self

    def __exit__(self, *exc):
        self._lock.release()


class LedgerUnavailable(RuntimeError):
    """The quota book's database cannot be used; the message says what to do."""


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


class Database:
    def __init__(self, url: str):
        url = database_url(url)
        self.url = url
        sqlite = url.startswith("sqlite")
        try:
            self.engine = _sqlite_engine(url) if sqlite else create_engine(url, pool_pre_ping=True)
        except ModuleNotFoundError as e:
            raise LedgerUnavailable(
                f"the quota book's database {_safe(url)} needs the Python module {e.name}, which is not "
                "installed: pip install 'podbay[postgresql]' for PostgreSQL") from None
        except Exception as e:  # noqa: BLE001 - sqlalchemy's URL and plugin errors vary
            raise LedgerUnavailable(f"the quota book's database URL {_safe(url)} is not usable: {e}") from None
        # Reads (forms, catalog, capacity) need no write lock: with WAL they never wait for
        # a claim in progress, and never make one wait.
        self.read_engine = _sqlite_engine(url, immediate=False) if sqlite else self.engine
        try:
            self.migrate()
        except OperationalError as e:
            reason = str(e.orig).strip().splitlines()[0] if e.orig else str(e)
            raise LedgerUnavailable(
                f"the quota book's database {_safe(url)} cannot be reached ({reason}). Start it, or point "
                "PODBAY_DB_URL (c.Podbay.db_url) at one that runs") from None
        self.write_session = sessionmaker(self.engine, expire_on_commit=False)
        self.durable_engine = _sqlite_engine(url, durable=True) if sqlite else self.engine
        # Writes that must outlive a power loss once answered (the job table).
        self.durable_write_session = sessionmaker(self.durable_engine, expire_on_commit=False)
        self.read_session = sessionmaker(self.read_engine, expire_on_commit=False)
        # Writers of this process wait here rather than at SQLite's lock, whose busy handler
        # sleeps up to 100 ms between tries: in a storm of spawns that sleep, not the work,
        # was the tail (benchmarks/spawn_storm.py). Other processes (the hub and the service)
        # still meet at the database's own lock. The wait counts against the same budget as
        # SQLite's busy timeout, so queued writers fail in 30 s, not 30 s each in turn.
        self.writers = _BoundedLock(WRITE_WAIT)

    def migrate(self) -> None:
        """Bring the schema to the newest revision (alembic), under the write lock."""
        move_schema(self.engine)

    def dispose(self) -> None:
        for engine in {self.engine, self.read_engine, self.durable_engine}:
            engine.dispose()


def move_schema(engine, revision: str = "head", downgrade: bool = False) -> None:
    """Bring the quota book's schema to `revision` (alembic): up, as every start does, or down
    before going back to an older podbay (docs/howto/production.md)."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent.parent / "migrations"))
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            # Two processes starting at once must not both create the tables.
            conn.execute(text("SELECT pg_advisory_xact_lock(7466821)"))
        cfg.attributes["connection"] = conn
        (command.downgrade if downgrade else command.upgrade)(cfg, revision)
