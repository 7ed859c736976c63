"""Quota, placement and capacity: three things (DESIGN.md).

- `book`: the quota book, who holds how many GPU units, workspaces and job GPUs (every backend);
- `placement`: which devices, only where nobody else assigns them (local, docker);
- `capacity`: what is free, one source per backend, for the form, the API and the TUI.
"""

from .book import (
    Allocation,
    ClaimRefused,
    Demand,
    LedgerUnavailable,
    NoCapacity,
    QuotaBook,
    QuotaExceeded,
    Snapshot,
    database_url,
    fmt_units,
)

__all__ = ["Allocation", "ClaimRefused", "Demand", "LedgerUnavailable", "NoCapacity", "QuotaBook",
           "QuotaExceeded", "Snapshot", "database_url", "fmt_units"]
