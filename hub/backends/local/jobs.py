"""Jobs as local process groups, on devices from the same quota book as workspaces."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from ...launch import launcher
from ...procs import proc_start_time
from ...training import BackendStatus, JobSpec, TrainingBackend, offset_of, read_from, read_int


class LocalBackend(TrainingBackend):
    name = "local"

    def __init__(self, jobs_dir: Path, kill_grace: float = 10.0):
        self.jobs_dir = Path(jobs_dir)
        self.kill_grace = kill_grace

    def job_dir(self, job_id: int) -> Path:
        return self.jobs_dir / str(job_id)

    async def submit(self, job: JobSpec) -> dict:
        d = self.job_dir(job.id)
        d.mkdir(parents=True, exist_ok=True)
        for stale in ("exit_code", "supervisor.pid"):
            (d / stale).unlink(missing_ok=True)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            **job.env,
        }
        command = list(job.command)
        if job.volumes:
            command = launcher(job.volumes, quiet=True) + command
        proc = subprocess.Popen(
            [sys.executable, "-m", "podbay.hub.jobrun", "--dir", str(d), "--", *command],
            cwd=job.workdir, env=env, start_new_session=True,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        # Not waited on here: the supervisor records the exit code itself. A daemon thread
        # reaps it so no zombie lingers; not the loop's executor, whose shutdown would wait
        # for every running job before the service could stop.
        threading.Thread(target=proc.wait, name=f"reap-job-{job.id}", daemon=True).start()
        return {"pid": proc.pid, "start_time": proc_start_time(proc.pid), "dir": str(d)}

    def _dir(self, ref: dict) -> Path:
        # A job claimed but interrupted before its start was recorded has only its id.
        return Path(ref["dir"]) if "dir" in ref else self.job_dir(ref["job_id"])

    async def status(self, ref: dict) -> BackendStatus:
        d = self._dir(ref)
        code = read_int(d / "exit_code")
        if code is not None:
            return BackendStatus("exited", code)
        pid = ref.get("pid") or read_int(d / "supervisor.pid")
        if pid and proc_start_time(pid) is not None and (
                ref.get("start_time") is None or proc_start_time(pid) == ref["start_time"]):
            return BackendStatus("running")
        # The supervisor may have written the code between the two reads.
        code = read_int(d / "exit_code")
        if code is not None:
            return BackendStatus("exited", code)
        return BackendStatus("lost", message="the job's process ended without recording an exit code")

    async def cancel(self, ref: dict) -> None:
        pid = ref.get("pid") or read_int(self._dir(ref) / "supervisor.pid")
        if not pid or (await self.status(ref)).state != "running":
            return
        for sig, wait in ((signal.SIGTERM, self.kill_grace), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                return
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                if (await self.status(ref)).state != "running":
                    return
                await asyncio.sleep(0.1)

    async def read_logs(self, ref: dict, cursor: str | None = None) -> tuple[bytes, str | None]:
        offset = offset_of(cursor)
        data = await asyncio.to_thread(read_from, self._dir(ref) / "output.log", offset)
        return data, str(offset + len(data))
