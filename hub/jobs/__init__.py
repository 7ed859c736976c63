"""Training jobs: the model (model.py), the table (store.py), the scheduler that starts,
follows and ends them (scheduler.py), and the manager the REST service talks to
(manager.py)."""

from ..environment import RESERVED_ENV
from .manager import JobManager
from .model import ACTIVE, JOB_POOL, PENDING, STATES, TERMINAL, Job, JobRequest, JobRow
from .scheduler import Scheduler
from .store import JobStore

__all__ = ["ACTIVE", "JOB_POOL", "PENDING", "RESERVED_ENV", "STATES", "TERMINAL", "Job", "JobManager",
           "JobRequest", "JobRow", "JobStore", "Scheduler"]
