"""Quota, placement and capacity: three things, apart.

- `book`: the quota book, who holds how many GPU units, workspaces and job GPUs (every backend),
  kept in `database` (its tables, engines and migrations);
- `placement`: which devices, only where nobody else assigns them (local, docker);
- `capacity`: what is free, one source per backend, for the form, the API and the TUI.
"""

from .book import Allocation, ClaimRefused, Demand, NoCapacity, QuotaBook, QuotaExceeded, Snapshot, fmt_units
from .database import LedgerUnavailable, database_url

__all__ = ["Allocation", "ClaimRefused", "Demand", "LedgerUnavailable", "NoCapacity", "QuotaBook",
           "QuotaExceeded", "Snapshot", "database_url", "fmt_units"]
