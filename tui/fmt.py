"""Numbers and standings as people read them, the same in the CLI, the TUI and the web pages."""

from __future__ import annotations


def gpu_hours(hours: float) -> str:
    """GPU-hours: a short test run is "2 min", not "0.0" beside a chart that shows it."""
    if hours <= 0:
        return "0"
    minutes = hours * 60
    if minutes < 59.5:
        return "<1 min" if minutes < 0.5 else f"{minutes:.0f} min"
    if hours < 100:
        return f"{hours:.1f}"
    return f"{hours:,.0f}"


def quota_lines(me: dict) -> list[str]:
    """The caller's standing in words: team, GPU units, workspaces, and job GPUs as whoever
    enforces them says (podbay's quota, or the training pool's engine, e.g. Slurm)."""
    q, u = me["quota"], me["usage"]
    teams = ", ".join(me["teams"]) or "none"
    left = max(q["gpu_units"] - u["gpu_units"], 0)
    return [f"user {me['name']}{' (admin)' if me['admin'] else ''}, team {me['team'] or 'none'} (member of: {teams})",
            f"GPU units    {u['gpu_units']:g} of {q['gpu_units']:g} in use, {left:g} left",
            f"workspaces   {u['workspaces']} of {q['workspaces_per_user']}",
            f"job GPUs     {job_gpus(me)}"]


def job_gpus(me: dict) -> str:
    """The team's job GPUs, from whoever enforces them: the training pool's engine where it
    does (a Slurm account's GrpTRES), else podbay's quota."""
    limit = me.get("job_limit")
    if not limit:
        return f"{me['usage']['job_gpus']} of {me['quota']['job_gpus']} in use"
    used = "" if limit["gpus_in_use"] is None else f"{limit['gpus_in_use']} in use, "
    gpus = "no limit" if limit["gpus"] is None else f"limit {limit['gpus']}"
    return f"{used}{gpus} (set by {limit['source']} for account {limit['account']})"


__all__ = ["gpu_hours", "job_gpus", "quota_lines"]
