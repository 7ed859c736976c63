"""Reading the demand the quota book records (quota/database.py's DemandRow): refusals for
showback, and the requests as a trace for `podbay advise`."""

from __future__ import annotations

import logging
import re
import statistics
from collections import defaultdict

from sqlalchemy import func, or_, select

from ..advice.trace import Request
from ..config import parse_profile_id
from ..quota import QuotaBook
from ..quota.database import DemandRow, HoldingRow

log = logging.getLogger(__name__)

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
        """The period's requests as a trace, ordered by arrival:

        - a granted request holds for as long as it did (until now if it still does); a job
          that waited arrives when it asked and holds for as long as it then ran;
        - a refused one holds for the median of its profile's holds;
        - a refused workspace asked again by the same person for the same profile within
          RETRY_WINDOW is that later request (people click again); jobs are never folded;
        - what was held when the period began arrives at its start, for what it still held,
          and what began in the period without a request recorded in it (a job asked before,
          history from before demand was recorded) arrives when it began: the period is as
          full as it was."""
        with self.db.read_session() as s:
            demand = list(s.execute(
                select(DemandRow.at, DemandRow.key, DemandRow.kind, DemandRow.user, DemandRow.team,
                       DemandRow.profile, DemandRow.pool, DemandRow.outcome)
                .where(DemandRow.at >= since, DemandRow.at < until).order_by(DemandRow.at, DemandRow.id)))
            holdings = list(s.execute(
                select(HoldingRow.id, HoldingRow.key, HoldingRow.user, HoldingRow.team, HoldingRow.profile,
                       HoldingRow.pool, HoldingRow.started, HoldingRow.ended)
                .where(HoldingRow.started < until, or_(HoldingRow.ended.is_(None), HoldingRow.ended > since))
                .order_by(HoldingRow.started)))
        by_key: dict[str, list] = defaultdict(list)
        for h in holdings:
            by_key[h.key].append(h)
        joined: set[int] = set()

        def holding_of(at: float, key: str, kind: str, outcome: str):
            # A granted request's holding began with it (the same transaction); a waiting
            # job's began when it was let run.
            for h in by_key.get(key, ()):
                if h.id not in joined and ((outcome == "granted" and abs(h.started - at) <= 1)
                                           or (kind == "job" and outcome != "granted" and h.started >= at - 1)):
                    joined.add(h.id)
                    return h
            return None

        rows = []
        for at, key, kind, user, team, profile, pool, outcome in demand:
            if pools is not None and pool not in pools:
                continue
            h = holding_of(at, key, kind, outcome)
            rows.append([at, kind, user, team, profile, outcome, h])
        held: dict[str, list[float]] = defaultdict(list)
        for h in holdings:
            held[h.profile].append((h.ended or now) - h.started)
        everyone = [d for ds in held.values() for d in ds]
        fallback = statistics.median(everyone) if everyone else DEFAULT_HOLD
        last_refusal: dict[tuple[str, str], list] = {}
        for row in rows:
            at, kind, user, _team, profile, outcome, h = row
            if kind != "workspace":
                continue
            earlier = last_refusal.pop((user, profile), None)
            if earlier is not None and at - earlier[0] <= RETRY_WINDOW:
                earlier[1] = None  # asked again: the earlier refusal was this request
            if outcome != "granted" and h is None:
                last_refusal[(user, profile)] = row
        out: list[Request] = []
        for at, kind, user, team, profile, outcome, h in rows:
            if kind is None:
                continue
            if h is not None:
                out += _requests(at, (h.ended or now) - h.started, user, team, profile)
            else:
                out += _requests(at, statistics.median(held[profile]) if held[profile] else fallback,
                                 user, team, profile)
        for h in holdings:
            if h.id in joined or (pools is not None and h.pool not in pools):
                continue
            start = max(h.started, since)
            out += _requests(start, (h.ended or now) - start, h.user, h.team, h.profile)
        out.sort(key=lambda r: r.arrival)
        return out


def _requests(at: float, duration: float, user: str, team: str | None, profile: str) -> list[Request]:
    """A recorded request as the trace's requests; a profile no trace can hold (a catalog
    edited since) is left out rather than failing the whole advice."""
    out = []
    for p in as_profiles(profile):
        try:
            parse_profile_id(p)
        except ValueError:
            log.warning("recorded demand for %s is no profile; left out of the replay", p)
            continue
        out.append(Request(at, max(0.0, duration), user, team, p))
    return out


def as_profiles(profile: str) -> list[str]:
    """A recorded request in the trace's profiles: a job's `gpu-0` asks for no GPU (`cpu`), a
    multi-node job's `gpu-4×2` for `gpu-4` on each of two nodes (`gpu-0×2`: no GPU)."""
    m = re.fullmatch(r"gpu-(\d+)(?:×(\d+))?", profile)
    if m and int(m[1]) == 0:
        return ["cpu"]
    if m and m[2]:
        return [f"gpu-{m[1]}"] * int(m[2])
    return [profile]
