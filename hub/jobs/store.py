"""The job table: reads and writes, and their async forms for code on the service's loop."""

from __future__ import annotations

import asyncio
import json

from sqlalchemy import func, select

from ..quota import QuotaBook
from .model import PENDING, Job, JobRow


class JobStore:
    def __init__(self, book: QuotaBook):
        # Durable: a job the service answered 201 for is on disk, power loss or not.
        self._write = book.db.durable_write_session
        self._read = book.read_session

    def add(self, row: JobRow) -> Job:
        with self._write() as s, s.begin():
            s.add(row)
            s.flush()
            return Job.from_row(row)

    def get(self, job_id: int) -> Job | None:
        with self._read() as s:
            row = s.get(JobRow, job_id)
            return Job.from_row(row) if row else None

    def states(self, job_ids: list[int]) -> dict[int, str]:
        """The stored states, where `pending` is not folded into `queued`."""
        with self._read() as s:
            return dict(s.execute(select(JobRow.id, JobRow.state).where(JobRow.id.in_(job_ids))).all())

    def list(self, user: str | None = None, team: str | None = None, state: str | None = None,
             limit: int | None = 500, *, stored: bool = False) -> list[Job]:
        """Jobs, newest first. `state` is what users see (`queued` includes the engine's
        pending jobs), or, with `stored`, the state as stored."""
        with self._read() as s:
            # The table's columns, not ORM objects: a listing only reads them.
            q = select(*JobRow.__table__.columns)
            if user:
                q = q.where(JobRow.user == user)
            if team:
                q = q.where(JobRow.team == team)
            if state == "queued" and not stored:
                q = q.where(JobRow.state.in_(("queued", PENDING)))
            elif state:
                q = q.where(JobRow.state == state)
            q = q.order_by(JobRow.id.desc())
            return [Job.from_row(r) for r in s.execute(q.limit(limit) if limit else q)]

    def count_by_state(self) -> dict[str, int]:
        """Jobs per state as users see them (the engine's pending ones are queued)."""
        with self._read() as s:
            out: dict[str, int] = {}
            for state, n in s.execute(select(JobRow.state, func.count()).group_by(JobRow.state)):
                state = "queued" if state == PENDING else state
                out[state] = out.get(state, 0) + n
            return out

    def ref(self, job_id: int) -> dict:
        """What the backend finds the job by."""
        with self._read() as s:
            row = s.get(JobRow, job_id)
            return json.loads(row.ref) if row else {}

    def write(self, job_id: int, **values) -> None:
        with self._write() as s, s.begin():
            row = s.get(JobRow, job_id)
            for k, v in values.items():
                setattr(row, k, json.dumps(v) if k in ("ref", "devices") else v)

    # On the service's event loop, reads and writes go to threads: a write waiting for the
    # database's lock (SQLite's busy timeout is 30 s) stalls no other request.

    async def update(self, job_id: int, **values) -> None:
        await asyncio.to_thread(self.write, job_id, **values)

    async def in_state(self, state: str) -> list[Job]:
        """Jobs in a stored state, newest first."""
        return await asyncio.to_thread(lambda: self.list(None, None, state, None, stored=True))

    async def job(self, job_id: int) -> Job | None:
        return await asyncio.to_thread(self.get, job_id)

    async def job_ref(self, job_id: int) -> dict:
        return await asyncio.to_thread(self.ref, job_id)

    async def stored_states(self, job_ids: list[int]) -> dict[int, str]:
        return await asyncio.to_thread(self.states, job_ids)
