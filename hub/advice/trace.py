"""A demand trace: the requests people made, in one CSV shape, whatever they came from.

    arrival,duration,user,team,profile
    0,3600,alice,vision,mig-1g.10gb
    120,600,bob,,gpu-2

- `arrival`: seconds (any origin; only differences count) or an ISO 8601 time (UTC
  where it has no offset);
- `duration`: seconds the request held, or would have held, what it got;
- `user`, `team`: who asked (team may be empty);
- `profile`: a profile id of the podbay.yaml the trace is replayed against, or a profile kind
  itself (`cpu`, `mig-<profile>`, `shared-1/<N>`, `gpu-<N>`).

podbay's own recorded demand (`quota/demand.py`) is written in this shape, and so are
traces derived from public cluster traces (benchmarks/derive_trace.py).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from ..config import parse_profile_id

COLUMNS = ("arrival", "duration", "user", "team", "profile")


@dataclass(frozen=True)
class Request:
    arrival: float
    duration: float
    user: str
    team: str | None
    profile: str


class TraceError(ValueError):
    """A trace that cannot be read; the message names the line and what to fix."""


def _seconds(value: str, line: int, column: str) -> float:
    try:
        number = float(value)
    except ValueError:
        pass
    else:
        if math.isfinite(number):
            return number
    if column == "arrival":
        try:
            at = datetime.fromisoformat(value.replace("Z", "+00:00"))
            # A time without an offset is UTC, whatever this machine's zone.
            return (at if at.tzinfo else at.replace(tzinfo=timezone.utc)).timestamp()
        except ValueError:
            pass
    raise TraceError(f"line {line}: {column} {value!r} is not a number of seconds"
                     + (" or an ISO 8601 time" if column == "arrival" else ""))


def read_trace(source: str | Path | io.TextIOBase) -> list[Request]:
    """The requests of a trace file, ordered by arrival; TraceError says what is wrong where."""
    if isinstance(source, (str, Path)):
        with open(source, newline="") as f:
            return read_trace(f)
    reader = csv.DictReader(source)
    missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise TraceError(f"the trace has no {', '.join(missing)} column{'s' if len(missing) > 1 else ''}: "
                         f"its first line must name {','.join(COLUMNS)}")
    out = []
    for row in reader:
        line = reader.line_num
        arrival = _seconds((row["arrival"] or "").strip(), line, "arrival")
        duration = _seconds((row["duration"] or "").strip(), line, "duration")
        if duration < 0:
            raise TraceError(f"line {line}: duration {duration} is negative")
        profile = (row["profile"] or "").strip()
        if not profile:
            raise TraceError(f"line {line}: no profile")
        try:
            parse_profile_id(profile)
        except ValueError as e:
            raise TraceError(f"line {line}: {e}") from None
        out.append(Request(arrival, duration, (row["user"] or "").strip(), (row["team"] or "").strip() or None,
                           profile))
    out.sort(key=lambda r: r.arrival)
    return out


def _num(x: float) -> str:
    # Whole seconds as integers; never an exponent, which would drop a Unix time's digits.
    return str(int(x)) if x == int(x) else f"{x:.3f}"


def write_trace(requests: Iterable[Request], target: io.TextIOBase) -> None:
    w = csv.writer(target, lineterminator="\n")
    w.writerow(COLUMNS)
    for r in requests:
        w.writerow([_num(r.arrival), _num(r.duration), r.user, r.team or "", r.profile])
