"""Holdings and their utilisation in podbay's database: what the idle rules, showback and
/metrics read.

A holding is one start of a workspace or job (the quota book writes it with the claim and
ends it with the release). Utilisation is kept per holding per hour (`podbay_usage_hours`):
one row per held thing per hour, whatever the sampling interval, for `usage.retention_days`.

Long because: the idle rules' rounds and showback read and write the same two tables, and
their SQL stays together so that one change to them is made in one place.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from fractions import Fraction

from sqlalchemy import (Column, Float, Integer, MetaData, Table, and_, bindparam, case, delete, func, or_, select,
                        update)

from ..quota.book import QuotaBook
from ..quota.database import CounterRow, DemandRow, HoldingRow, IdleActionRow, UsageHourRow


@dataclass
class Holding:
    id: int
    key: str
    kind: str
    user: str
    team: str | None
    profile: str
    pool: str | None
    units: Fraction
    gpus: int
    devices: list[tuple[str, str]]
    ref: dict
    started: float
    ended: float | None
    samples: int = 0
    util_sum: float = 0.0
    util_max: float | None = None
    last_sample: float | None = None
    idle_since: float | None = None
    warned_at: float | None = None
    keep_until: float | None = None
    acted: str | None = None

    @classmethod
    def from_row(cls, row: HoldingRow) -> "Holding":
        return cls(id=row.id, key=row.key, kind=row.kind, user=row.user, team=row.team, profile=row.profile,
                   pool=row.pool, units=Fraction(row.units_num, row.units_den), gpus=row.gpus,
                   devices=[tuple(d) for d in json.loads(row.devices or "[]")], ref=json.loads(row.ref or "{}"),
                   started=row.started, ended=row.ended, samples=row.samples, util_sum=row.util_sum,
                   util_max=row.util_max, last_sample=row.last_sample, idle_since=row.idle_since,
                   warned_at=row.warned_at, keep_until=row.keep_until, acted=row.acted)

    @property
    def server(self) -> str | None:
        """The workspace's name (JupyterHub's server name), for workspace holdings."""
        if self.kind != "workspace":
            return None
        return self.key.split(":", 1)[1].split("/", 1)[1]

    @property
    def holds_gpu(self) -> bool:
        return self.units > 0 or self.gpus > 0


# The idle clock's columns: what a round may change on a holding.
CLOCK = ("last_sample", "idle_since", "warned_at", "acted")

# Showback over SQLite reads a month of hourly rows twice a request (the measured sums per
# holding, the hourly chart): most of its time (benchmarks/usage_policy.py). Both depend on
# the hours of the period only, not on the moment asked, so each reading connection keeps
# its last answers and SQLite says whether anything was written since: PRAGMA data_version
# changes on a connection whenever any other connection, of any process, has committed (the
# reading connections never write the book). The measured sums are kept in a temporary
# table of the connection's own, so the showback query adds them up exactly as before.
_MEASURED = Table("podbay_measured", MetaData(), Column("holding_id", Integer, primary_key=True),
                  Column("s", Float), Column("n", Integer), schema="temp")
_MEASURED_DDL = "CREATE TEMP TABLE IF NOT EXISTS podbay_measured (holding_id INTEGER PRIMARY KEY, s REAL, n INTEGER)"


@dataclass
class Round:
    """What one sampling round writes, in one transaction."""

    now: float
    # holding id → (mean, max) utilisation measured now
    measured: dict[int, tuple[float, float]] = field(default_factory=dict)
    # holding id → idle clock columns to set
    clock: dict[int, dict] = field(default_factory=dict)
    # IdleActionRow values to record (an action about to be carried out)
    actions: list[dict] = field(default_factory=list)


class UsageStore:
    def __init__(self, book: QuotaBook):
        self.book = book
        self.db = book.db

    def _greatest_least(self):
        """SQL's larger and smaller of two values: SQLite's two-argument max/min are
        PostgreSQL's greatest/least (whose max/min are aggregates)."""
        if self.db.engine.dialect.name == "sqlite":
            return func.max, func.min
        return func.greatest, func.least

    # --- the sampler's side --------------------------------------------------------------

    def open_holdings(self, kind: str | None = None) -> list[Holding]:
        with self.db.read_session() as s:
            q = select(HoldingRow).where(HoldingRow.ended.is_(None))
            if kind:
                q = q.where(HoldingRow.kind == kind)
            return [Holding.from_row(r) for r in s.scalars(q.order_by(HoldingRow.id))]

    def write_round(self, rnd: Round) -> list[tuple[int, dict]]:
        """Record a round's samples, idle clocks and actions; return the actions recorded,
        with their ids.

        One statement per kind of change, run for all holdings at once (executemany): a
        round of 2,000 devices is three statements, not 4,000 (benchmarks/usage_policy.py)."""
        hour = int(rnd.now // 3600)
        recorded: list[tuple[int, dict]] = []
        table = HoldingRow.__table__
        with self.db.writers, self.db.write_session() as s, s.begin():
            conn = s.connection()
            if rnd.measured:
                conn.execute(_upsert_hours(self.db.engine.dialect.name, [
                    {"holding_id": hid, "hour": hour, "samples": 1, "util_sum": mean}
                    for hid, (mean, _peak) in rnd.measured.items()]))
                greatest, _least = self._greatest_least()
                conn.execute(
                    update(table).where(table.c.id == bindparam("hid")).values(
                        samples=table.c.samples + 1, util_sum=table.c.util_sum + bindparam("mean"),
                        util_max=greatest(func.coalesce(table.c.util_max, bindparam("peak")), bindparam("peak"))),
                    [{"hid": hid, "mean": mean, "peak": peak} for hid, (mean, peak) in rnd.measured.items()])
            # Clock changes by the columns they set (most rounds: last_sample alone).
            groups: dict[tuple, list[dict]] = {}
            for hid, values in rnd.clock.items():
                groups.setdefault(tuple(sorted(values)), []).append(
                    {"hid": hid, **{f"v_{k}": v for k, v in values.items()}})
            for cols, params in groups.items():
                conn.execute(update(table).where(table.c.id == bindparam("hid"))
                             .values(**{c: bindparam(f"v_{c}") for c in cols}), params)
            for values in rnd.actions:
                if values["state"] == "started":
                    # The action is taken only if nothing came between the decision and
                    # now: a keep, an end, another action.
                    hid = values["holding_id"]
                    took = conn.execute(update(table).where(
                        table.c.id == hid, table.c.acted.is_(None), table.c.ended.is_(None),
                        or_(table.c.keep_until.is_(None), table.c.keep_until <= rnd.now))
                        .values(acted=values["action"])).rowcount
                    if took != 1:
                        continue
                row = IdleActionRow(**values)
                s.add(row)
                s.flush()
                recorded.append((row.id, values))
        return recorded

    def retry_later(self, holding_id: int, now: float) -> None:
        """An action that could not be carried out (the workspace still runs): a new notice
        now, and the rule's next try after its warn_before."""
        with self.db.writers, self.db.write_session() as s, s.begin():
            s.execute(update(HoldingRow).where(HoldingRow.id == holding_id, HoldingRow.ended.is_(None))
                      .values(acted=None, warned_at=now))

    def finish_action(self, action_id: int, state: str, message: str) -> None:
        with self.db.writers, self.db.write_session() as s, s.begin():
            s.execute(update(IdleActionRow).where(IdleActionRow.id == action_id)
                      .values(state=state, message=message[:2000]))

    def set_action(self, action_id: int, state: str, options: dict) -> None:
        with self.db.writers, self.db.write_session() as s, s.begin():
            s.execute(update(IdleActionRow).where(IdleActionRow.id == action_id)
                      .values(state=state, options=json.dumps(options)))

    def unfinished_actions(self) -> list[IdleActionRow]:
        with self.db.read_session() as s:
            return list(s.scalars(select(IdleActionRow).where(IdleActionRow.state.in_(("started", "restarting")))
                                  .order_by(IdleActionRow.id)))

    def open_holding_id(self, key: str) -> int | None:
        """The holding of what runs under `key` now, if anything does."""
        with self.db.read_session() as s:
            return s.scalar(select(HoldingRow.id).where(HoldingRow.key == key, HoldingRow.ended.is_(None)))

    def prune(self, now: float, retention_days: int) -> int:
        """Drop what is older than the retention: ended holdings (their hours go with them),
        hours of long holdings, idle actions and recorded demand. What they added to /metrics' counters is kept in
        podbay_counters first, in the same transaction. Returns the rows removed."""
        cutoff = now - retention_days * 86400
        old_holding = and_(HoldingRow.ended.is_not(None), HoldingRow.ended < cutoff)
        with self.db.writers, self.db.write_session() as s, s.begin():
            add: dict[str, float] = {}
            for team, kind, held, used in s.execute(self._totals_query(now).where(old_holding)):
                add[f"held|{team or ''}|{kind}"] = float(held or 0)
                add[f"used|{team or ''}|{kind}"] = float(used or 0)
            for action, n in s.execute(select(IdleActionRow.action, func.count())
                                       .where(IdleActionRow.at < cutoff).group_by(IdleActionRow.action)):
                add[f"actions|{action}"] = float(n)
            for key, value in add.items():
                if value:
                    row = s.get(CounterRow, key)
                    if row is None:
                        s.add(CounterRow(key=key, value=value))
                    else:
                        row.value += value
            hours = s.execute(delete(UsageHourRow).where(UsageHourRow.hour < int(cutoff // 3600))).rowcount
            held = s.execute(delete(HoldingRow).where(old_holding)).rowcount
            acts = s.execute(delete(IdleActionRow).where(IdleActionRow.at < cutoff)).rowcount
            asked = s.execute(delete(DemandRow).where(DemandRow.at < cutoff)).rowcount
        return (hours or 0) + (held or 0) + (acts or 0) + (asked or 0)

    def counters(self, kind: str) -> dict[tuple[str, ...], float]:
        with self.db.read_session() as s:
            return {tuple(k.split("|")[1:]): v for k, v in
                    s.execute(select(CounterRow.key, CounterRow.value).where(CounterRow.key.like(f"{kind}|%")))}

    # --- what people see -----------------------------------------------------------------

    def open_holding(self, key: str) -> Holding | None:
        with self.db.read_session() as s:
            row = s.scalar(select(HoldingRow).where(HoldingRow.key == key, HoldingRow.ended.is_(None)))
            return Holding.from_row(row) if row else None

    def keep(self, user: str, server: str, until: float) -> Holding | None:
        """Keep the GPU until `until`. None: nothing runs under that name; a holding whose
        `acted` is set: too late, the rule's action is under way."""
        key = f"workspace:{user}/{server}"
        with self.db.writers, self.db.write_session() as s, s.begin():
            row = s.scalar(select(HoldingRow).where(HoldingRow.key == key, HoldingRow.ended.is_(None)))
            if row is None or row.acted:
                return Holding.from_row(row) if row else None
            # The notice is answered: a new one comes if it is still idle when the keep ends.
            row.keep_until, row.warned_at = until, None
            s.flush()
            return Holding.from_row(row)

    def notices(self, user: str, now: float, days: float = 7) -> tuple[list[Holding], list[IdleActionRow]]:
        """The person's warned workspaces and the actions taken on theirs lately."""
        with self.db.read_session() as s:
            warned = [Holding.from_row(r) for r in s.scalars(
                select(HoldingRow).where(HoldingRow.user == user, HoldingRow.ended.is_(None),
                                         HoldingRow.warned_at.is_not(None), HoldingRow.acted.is_(None)))]
            acts = list(s.scalars(select(IdleActionRow).where(IdleActionRow.user == user,
                                                              IdleActionRow.state != "skipped",
                                                              IdleActionRow.at >= now - days * 86400)
                                  .order_by(IdleActionRow.at.desc()).limit(20)))
        return warned, acts

    def action_counts(self) -> dict[str, float]:
        """Idle actions taken, per action, ever (pruned ones counted in podbay_counters)."""
        out = {k[0]: v for k, v in self.counters("actions").items()}
        with self.db.read_session() as s:
            for action, n in s.execute(select(IdleActionRow.action, func.count()).where(
                    IdleActionRow.state != "skipped").group_by(IdleActionRow.action)):
                out[action] = out.get(action, 0.0) + n
        return out

    def _data_version(self, conn) -> int | None:
        """What changes whenever the book was written by another connection (SQLite); None
        where nothing is kept between requests (PostgreSQL)."""
        if conn.dialect.name != "sqlite":
            return None
        return conn.exec_driver_sql("PRAGMA data_version").scalar()

    @staticmethod
    def _measured_query(h0: int, h1: int):
        return (select(UsageHourRow.holding_id, func.sum(UsageHourRow.util_sum).label("s"),
                       func.sum(UsageHourRow.samples).label("n"))
                .where(UsageHourRow.hour >= h0, UsageHourRow.hour <= h1)
                .group_by(UsageHourRow.holding_id))

    def _measured_kept(self, conn, h0: int, h1: int) -> int | None:
        """The connection's temp.podbay_measured holding the sums of hours h0..h1 as the book
        is now; the data version they are filed under, None where not kept (PostgreSQL)."""
        version = self._data_version(conn)
        if version is None:
            return None
        if conn.info.get("podbay_measured") != (version, h0, h1):
            conn.info.pop("podbay_measured", None)
            conn.exec_driver_sql(_MEASURED_DDL)
            conn.execute(_MEASURED.delete())
            conn.execute(_MEASURED.insert().from_select(["holding_id", "s", "n"], self._measured_query(h0, h1)))
            # Filed under the version read before the sums: a commit in between makes the
            # next request's version differ, and it sums again.
            conn.info["podbay_measured"] = (version, h0, h1)
        return version

    def usage(self, since: float, until: float, by: str, user: str | None = None,
              team: str | None = None) -> list[dict]:
        """Held and used GPU-hours between `since` and `until`, per `by` (user, team, profile,
        pool). Held: GPU units × hours held within the period. Used: held × the mean
        utilisation measured within the period (holdings never measured count as held only)."""
        column = {"user": HoldingRow.user, "team": HoldingRow.team, "profile": HoldingRow.profile,
                  "pool": HoldingRow.pool}[by]
        now = time.time()
        end = func.coalesce(HoldingRow.ended, min(now, until))
        greatest, least = self._greatest_least()
        lo, hi = greatest(HoldingRow.started, since), least(end, until)
        weight = _weight()
        h0, h1 = int(since // 3600), int(until // 3600)

        def query(measured):
            # A period partly or wholly in the future holds nothing there.
            span = greatest(hi - lo, 0.0)
            held_h = span / 3600.0 * weight
            mean = measured.c.s / func.nullif(measured.c.n, 0)
            q = (select(column.label("key"), func.sum(held_h), func.sum(held_h * func.coalesce(mean, 0) / 100.0),
                        func.sum(case((measured.c.n > 0, held_h), else_=0.0)), func.count(HoldingRow.id))
                 .select_from(HoldingRow).outerjoin(measured, measured.c.holding_id == HoldingRow.id)
                 .where(HoldingRow.started < until, or_(HoldingRow.ended.is_(None), HoldingRow.ended > since),
                        or_(HoldingRow.units_num > 0, HoldingRow.gpus > 0))
                 .group_by(column).order_by(column))
            if user is not None:
                q = q.where(HoldingRow.user == user)
            if team is not None:
                q = q.where(HoldingRow.team == team)
            return q

        with self.db.read_session() as s:
            conn = s.connection()
            version = self._measured_kept(conn, h0, h1)
            rows = None
            if version is not None:
                rows = conn.execute(query(_MEASURED)).all()
                # Nothing committed from before the sums to after the holdings were read: as
                # one statement would have seen it. Otherwise (a round came between) read it so.
                if self._data_version(conn) != version:
                    rows = None
            if rows is None:
                rows = conn.execute(query(self._measured_query(h0, h1).subquery())).all()
        out = []
        for key, held, used, held_measured, n in rows:
            held, used, held_measured = float(held or 0), float(used or 0), float(held_measured or 0)
            out.append({by: key, "gpu_hours_held": held, "gpu_hours_used": used,
                        # Utilisation while held, over the hours it was measured.
                        "utilization": (used / held_measured * 100) if held_measured else None,
                        "gpu_hours_measured": held_measured, "holdings": int(n)})
        return out

    def hourly(self, since: float, until: float, user: str | None = None, team: str | None = None) -> list[dict]:
        """Per hour: mean utilisation of the GPUs measured (for charts)."""
        h0, h1 = int(since // 3600), int(until // 3600)
        q = (select(UsageHourRow.hour, func.sum(UsageHourRow.util_sum), func.sum(UsageHourRow.samples))
             .join(HoldingRow, HoldingRow.id == UsageHourRow.holding_id)
             .where(UsageHourRow.hour >= h0, UsageHourRow.hour <= h1)
             .group_by(UsageHourRow.hour).order_by(UsageHourRow.hour))
        if user is not None:
            q = q.where(HoldingRow.user == user)
        if team is not None:
            q = q.where(HoldingRow.team == team)
        with self.db.read_session() as s:
            conn = s.connection()
            version = self._data_version(conn)
            kept = conn.info.get("podbay_hourly")
            if version is not None and (kept is None or kept[0] != version):
                kept = conn.info["podbay_hourly"] = (version, {})
            key = (h0, h1, user, team)
            rows = kept[1].get(key) if version is not None else None
            if rows is None:
                rows = conn.execute(q).all()
                if version is not None and len(kept[1]) < 64:
                    # Under the version read before the query (see _measured_kept).
                    kept[1][key] = rows
        return [{"hour": h * 3600, "utilization": (u / n) if n else None} for h, u, n in rows]

    def idle_jobs(self, since: float, until: float, user: str | None = None) -> list[Holding]:
        """Jobs that ended in the period, were measured, and never used their GPUs."""
        q = select(HoldingRow).where(HoldingRow.kind == "job", HoldingRow.ended.is_not(None),
                                     and_(HoldingRow.ended >= since, HoldingRow.ended <= until),
                                     HoldingRow.samples > 0, HoldingRow.util_max <= 0)
        if user is not None:
            q = q.where(HoldingRow.user == user)
        with self.db.read_session() as s:
            return [Holding.from_row(r) for r in s.scalars(q.order_by(HoldingRow.ended))]

    @staticmethod
    def _totals_query(now: float):
        end = func.coalesce(HoldingRow.ended, now)
        held = (end - HoldingRow.started) / 3600.0 * _weight()
        mean = HoldingRow.util_sum / func.nullif(HoldingRow.samples, 0)
        return (select(HoldingRow.team, HoldingRow.kind, func.sum(held), func.sum(held * func.coalesce(mean, 0) / 100.0))
                .where(or_(HoldingRow.units_num > 0, HoldingRow.gpus > 0)).group_by(HoldingRow.team, HoldingRow.kind))

    def totals(self) -> list[tuple[str | None, str, float, float]]:
        """(team, kind, held GPU-hours, used GPU-hours) ever: what is kept, and what pruning
        took out (podbay_counters). /metrics' counters."""
        out: dict[tuple[str, str], list[float]] = {}
        for (team, kind), v in self.counters("held").items():
            out.setdefault((team, kind), [0.0, 0.0])[0] += v
        for (team, kind), v in self.counters("used").items():
            out.setdefault((team, kind), [0.0, 0.0])[1] += v
        with self.db.read_session() as s:
            for team, kind, h, u in s.execute(self._totals_query(time.time())):
                row = out.setdefault((team or "", kind), [0.0, 0.0])
                row[0] += float(h or 0)
                row[1] += float(u or 0)
        return [(t or None, k, h, u) for (t, k), (h, u) in sorted(out.items())]


def _weight():
    """GPU units a holding weighs: a job's whole GPUs (where the engine places, its units are
    not recorded), a workspace's units (a MIG slice weighs its share of a GPU)."""
    return case((HoldingRow.kind == "job", HoldingRow.gpus * 1.0),
                else_=HoldingRow.units_num * 1.0 / HoldingRow.units_den)


def _upsert_hours(dialect: str, rows: list[dict]):
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    stmt = insert(UsageHourRow).values(rows)
    return stmt.on_conflict_do_update(
        index_elements=[UsageHourRow.holding_id, UsageHourRow.hour],
        set_={"samples": UsageHourRow.samples + stmt.excluded.samples,
              "util_sum": UsageHourRow.util_sum + stmt.excluded.util_sum})


__all__ = ["CLOCK", "Holding", "Round", "UsageStore"]
