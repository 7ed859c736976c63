"""Reading the demand the quota book records (quota/database.py's DemandRow): refusals for
showback, and the requests as a trace for `podbay advise`."""

from __future__ import annotations

import re
import statistics
from collections import defaultdict

from sqlalchemy import func, or_, select

from ..advice.trace import Request
from ..quota import QuotaBook
from ..quota.database import DemandRow, HoldingRow

# A refused request asked again by the same person for the same profile within this long is
# one demand, not two: people click again.
RETRY_WINDOW = 600.0
# What a refused request would have held, when nothing of its profile was ever granted.
DEFAULT_HOLD = 3600.0


class DemandLog:
    def __init__(self, book: QuotaBook):
        self.db = book.db

    def counts(self, since: float, until: float, user: str | None = None,
               team: str | None = None) -> list[dict]:
        """Requests per (kind, profile, pool, outcome) in the period, most first."""
        q = (select(DemandRow.kind, DemandRow.profile, DemandRow.pool, DemandRow.outcome, func.count())
             .where(DemandRow.at >= since, DemandRow.at < until)
             .group_by(DemandRow.kind, DemandRow.profile, DemandRow.pool, DemandRow.outcome))
        if user is not None:
            q = q.where(DemandRow.user == user)
        if team is not None:
            q = q.where(DemandRow.team == team)
        with self.db.read_session() as s:
            rows = [dict(kind=k, profile=p, pool=pool, outcome=o, requests=n) for k, p, pool, o, n in s.execute(q)]
        return sorted(rows, key=lambda r: (-r["requests"], r["kind"], r["profile"], r["outcome"]))

    def requests(self, since: float, until: float, now: float, pools: set[str] | None = None) -> list[Request]:
        """The period's requests as a trace: a granted one for as long as it held (until now
        if it still does), a job that waited for as long as it then ran, a refused one for
        the median hold of its profile's granted ones, retries folded into one request. What
        was already held when the period began comes first, at its start, for what it still
        held: the period starts as full as it was."""
        with self.db.read_session() as s:
            demand = list(s.execute(
                select(DemandRow.at, DemandRow.key, DemandRow.kind, DemandRow.user, DemandRow.team,
                       DemandRow.profile, DemandRow.pool, DemandRow.outcome)
                .where(DemandRow.at >= since, DemandRow.at < until).order_by(DemandRow.at, DemandRow.id)))
            keys = {d.key for d in demand}
            holdings: dict[str, list[tuple[float, float | None]]] = defaultdict(list)
            for key, started, ended in s.execute(select(HoldingRow.key, HoldingRow.started, HoldingRow.ended)
                                                 .where(HoldingRow.started >= since - 1, HoldingRow.started < until)
                                                 .order_by(HoldingRow.started)):
                if key in keys:
                    holdings[key].append((started, ended))
            already = list(s.execute(
                select(HoldingRow.user, HoldingRow.team, HoldingRow.profile, HoldingRow.pool, HoldingRow.ended)
                .where(HoldingRow.started < since, or_(HoldingRow.ended.is_(None), HoldingRow.ended > since))))

        def holding_of(at: float, key: str, kind: str, outcome: str) -> tuple[float, float | None] | None:
            # A granted request's holding began with it (the same transaction); a waiting
            # job's began when it was let run.
            for started, ended in holdings.get(key, ()):
                if (outcome == "granted" and abs(started - at) <= 1) or (kind == "job" and started >= at - 1):
                    return started, ended
            return None

        rows = []
        for at, key, kind, user, team, profile, pool, outcome in demand:
            got = holding_of(at, key, kind, outcome)
            rows.append((at, kind, user, team, profile, pool, outcome, *(got or (None, None))))
        held: dict[str, list[float]] = defaultdict(list)
        for at, _k, _u, _t, profile, _p, outcome, started, ended in rows:
            if started is not None:
                held[profile].append((ended or now) - started)
        everyone = [d for ds in held.values() for d in ds]
        fallback = statistics.median(everyone) if everyone else DEFAULT_HOLD
        kept: list[tuple] = []
        last_refusal: dict[tuple[str, str], int] = {}
        for row in rows:
            at, kind, user, team, profile, pool, outcome, started, ended = row
            if pools is not None and pool not in pools:
                continue
            who = (user, profile)
            i = last_refusal.pop(who, None)
            if i is not None and at - kept[i][0] <= RETRY_WINDOW:
                kept[i] = None  # asked again: the earlier refusal was this request
            if outcome != "granted":
                last_refusal[who] = len(kept)
            kept.append(row)
        out = [Request(since, (ended or now) - since, user, team, p)
               for user, team, profile, pool, ended in already if pools is None or pool in pools
               for p in as_profiles(profile)]
        for row in kept:
            if row is None:
                continue
            at, kind, user, team, profile, pool, outcome, started, ended = row
            if started is not None:
                duration = (ended or now) - started
            else:
                duration = statistics.median(held[profile]) if held[profile] else fallback
            out += [Request(at, duration, user, team, p) for p in as_profiles(profile)]
        return out


def as_profiles(profile: str) -> list[str]:
    """A recorded request in the trace's profiles: a job's `gpu-0` asks for no GPU (`cpu`), a
    multi-node job's `gpu-4×2` for `gpu-4` on each of two nodes."""
    if profile == "gpu-0":
        return ["cpu"]
    m = re.fullmatch(r"(gpu-\d+)×(\d+)", profile)
    return [m[1]] * int(m[2]) if m else [profile]
