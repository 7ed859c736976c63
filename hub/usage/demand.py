"""Reading the demand the quota book records (quota/database.py's DemandRow): refusals for
showback, and the requests as a trace for `podbay advise`."""

from __future__ import annotations

import re
import statistics
from collections import defaultdict

from sqlalchemy import and_, func, select

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
        if it still does), a refused one for the median hold of its profile's granted ones,
        retries folded into one request."""
        q = (select(DemandRow, HoldingRow.started, HoldingRow.ended)
             .outerjoin(HoldingRow, and_(HoldingRow.key == DemandRow.key, DemandRow.outcome == "granted",
                                         HoldingRow.started >= DemandRow.at - 1, HoldingRow.started <= DemandRow.at + 1))
             .where(DemandRow.at >= since, DemandRow.at < until)
             .order_by(DemandRow.at, DemandRow.id))
        with self.db.read_session() as s:
            rows = [(d.at, d.kind, d.user, d.team, d.profile, d.pool, d.outcome, started, ended)
                    for d, started, ended in s.execute(q)]
        held: dict[str, list[float]] = defaultdict(list)
        for at, _k, _u, _t, profile, _p, outcome, started, ended in rows:
            if outcome == "granted" and started is not None:
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
        out = []
        for row in kept:
            if row is None:
                continue
            at, kind, user, team, profile, pool, outcome, started, ended = row
            if outcome == "granted" and started is not None:
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
