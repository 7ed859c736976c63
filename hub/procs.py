"""Small facts about local processes."""

from __future__ import annotations

from pathlib import Path


def proc_start_time(pid: int) -> int | None:
    """The kernel's start time of a running process, to tell it from a later one with the
    same pid; None when no such process runs (zombies count as ended)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may contain spaces and parentheses: split after the last ")".
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])
