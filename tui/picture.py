"""Who holds which GPU or slice, drawn for a terminal: the capacity page's picture
(`GET capacity/gpus`), for the TUI's :gpu view and `podbay capacity --gpus`."""

from __future__ import annotations

from rich.text import Text

STYLE = {"free": "green", "mine": "bold blue", "held": "yellow"}


def holder_text(holder: dict | None) -> str:
    if holder is None:
        return "free"
    if holder.get("kind") == "leftover":
        return "in use (a MIG slice being freed)"
    if not holder.get("user"):
        return holder["what"]
    profile = f" ({holder['profile']})" if holder.get("profile") else ""
    return f"{holder['user']}  {holder['what']}{profile}"


def picture(gpus: dict, me: str | None = None) -> Text:
    """Pools → nodes → GPUs, a line per device with its holder; the caller's own in blue."""
    out = Text()
    for pool in gpus["pools"]:
        out.append(f"pool {pool['name']}\n", style="bold")
        if not pool["nodes"]:
            out.append("  no nodes\n", style="dim")
        for node in pool["nodes"]:
            out.append(f"  {node['name']}", style="bold")
            if node.get("state"):
                out.append(f"  {node['state']}" + (f": {node['reason']}" if node.get("reason") else ""), style="dim")
            out.append("\n")
            for gpu in node["gpus"]:
                head = f"    GPU {gpu['index']}"
                if gpu["model"]:
                    head += f"  {gpu['model']}"
                out.append(head)
                if gpu["free_units"]:
                    out.append(f"  · {gpu['free_units']} free", style="dim")
                if gpu.get("on_request"):
                    out.append("  · MIG slices made as asked for", style="dim")
                out.append("\n")
                width = max((len(d["label"]) for d in gpu["devices"]), default=0)
                for d in gpu["devices"]:
                    h = d["holder"]
                    state = "free" if h is None else ("mine" if me and h.get("user") == me else "held")
                    out.append(f"      {d['label']:<{width}}  ")
                    out.append(holder_text(h) + "\n", style=STYLE[state])
    return out


__all__ = ["holder_text", "picture"]
