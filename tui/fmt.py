"""Numbers as people read them, the same in the CLI, the TUI and the web pages."""

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


__all__ = ["gpu_hours"]
