"""Workspaces (`podbay ws …`), idle notices, keeping a GPU, usage, capacity and the TUI."""

from __future__ import annotations

import os
import sys
import time
import webbrowser
from dataclasses import asdict
from typing import Any

from ..client import ClientError, PodbayClient
from ..credentials import NotLoggedIn, resolve

from ..fmt import gpu_hours, quota_lines
from .common import can_open_browser, print_json, print_table, run, visible


def cmd_ws_ls(args) -> int:
    async def go(c: PodbayClient) -> int:
        wss = await c.workspaces()
        if args.json:
            print_json([asdict(w) for w in wss])
        else:
            print_table([[w.name, w.state, w.image + (" (default)" if w.image_default else ""), w.profile,
                          ",".join(w.volumes) or "-"] for w in wss],
                         ["name", "state", "image", "profile", "volumes"])
            # Where people look: an idle GPU's warning before anything happens to it.
            await _print_notices(c, warnings_only=True, lead="\n")
        return 0
    return run(args, go)


async def _print_notices(c: PodbayClient, warnings_only: bool = False, lead: str = "") -> int:
    try:
        notes = await c.notices()
    except ClientError:
        return 0  # an older portal without notices: the listing stands on its own
    notes = [n for n in notes if n["kind"] == "warning" or not warnings_only]
    for i, n in enumerate(notes):
        when = time.strftime("%a %H:%M", time.localtime(n["at"]))
        mark = "!" if n["kind"] == "warning" else ("x" if n.get("state") == "failed" else "-")
        print(f"{lead if i == 0 else ''}{mark} {when}  {visible(n['message'])}")
    return len(notes)


def cmd_notices(args) -> int:
    async def go(c: PodbayClient) -> int:
        if args.json:
            print_json(await c.notices())
        elif not await _print_notices(c):
            print("No notices: none of your workspaces' GPUs is idle.")
        return 0
    return run(args, go)


def cmd_ws_keep(args) -> int:
    async def go(c: PodbayClient) -> int:
        out = await c.keep(args.name, args.hours)
        print(f"{args.name} keeps its GPU until {time.strftime('%a %H:%M', time.localtime(out['keep_until']))}, "
              "idle or not.")
        return 0
    return run(args, go)


def _period(text: str | None, default: float | None) -> float | None:
    """Unix time from `2026-11-01`, `2026-11-01T08:00`, or `7d`/`12h` ago."""
    if text is None:
        return default
    import re
    from datetime import datetime

    if m := re.fullmatch(r"(\d+(?:\.\d+)?)([mhdw])", text.strip()):
        return time.time() - float(m[1]) * {"m": 60, "h": 3600, "d": 86400, "w": 604800}[m[2]]
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise SystemExit(f"podbay: {text!r} is neither a date (2026-11-01, 2026-11-01T08:00) nor a time ago (7d, 12h)")


def refusal_lines(demand: list[dict]) -> list[str]:
    """"refused for capacity: 37 requests for mig-3g.40gb (pool dev)", most first. A job is
    not refused: it waits in the queue."""
    out = []
    for d in demand:
        if d["outcome"] == "granted":
            continue
        verb = "waited" if d["kind"] == "job" else "refused"
        what = "workspace" if d["kind"] == "workspace" else "job"
        n = d["requests"]
        out.append(f"{verb} for {d['outcome']}: {n} {what} request{'s' if n != 1 else ''} for {d['profile']}"
                   + (f" (pool {d['pool']})" if d["pool"] else ""))
    return out


def cmd_usage(args) -> int:
    since = _period(args.since, None)
    until = _period(args.until, None)

    async def go(c: PodbayClient) -> int:
        out = await c.usage(since=since, until=until, by=args.by, user=args.user, team=args.team)
        if args.json:
            print_json(out)
            return 0

        def pct(v):
            return "-" if v is None else f"{v:.0f}%"

        rows = [[r["key"] or "-", gpu_hours(r["gpu_hours_held"]), gpu_hours(r["gpu_hours_used"]), pct(r["utilization"]),
                 r["holdings"]] for r in out["rows"]]
        t = out["total"]
        rows.append(["total", gpu_hours(t["gpu_hours_held"]), gpu_hours(t["gpu_hours_used"]), pct(t["utilization"]),
                     t["holdings"]])
        fmt = "%Y-%m-%d %H:%M"
        print(f"GPU usage {time.strftime(fmt, time.localtime(out['since']))} – "
              f"{time.strftime(fmt, time.localtime(out['until']))}, per {out['by']}")
        print_table(rows, [out["by"], "GPU-h held", "GPU-h used", "util", "starts"])
        lines = refusal_lines(out.get("demand", []))
        if lines:
            print("\nRequests not granted:")
            for line in lines:
                print(f"  {line}")
        if out["idle_jobs"]:
            print("\nJobs that never used their GPUs:")
            print_table([[j["job_id"], j["user"], j["profile"], j["gpus"], gpu_hours(j["hours"])]
                          for j in out["idle_jobs"]], ["job", "user", "profile", "gpus", "hours"])
        return 0
    return run(args, go)


def cmd_ws_new(args) -> int:
    options: dict[str, Any] = {"profile": args.profile, "volumes": args.volume or []}
    if args.image:
        options["image"] = args.image

    async def go(c: PodbayClient) -> int:
        await c.start_workspace(args.name, options)
        if args.no_wait:
            print(f"{args.name}: starting")
            return 0
        async for event in c.progress(args.name):
            if not args.quiet:
                print(f"[{event.get('progress', 0):>3}%] {visible(str(event.get('message', '')))}", flush=True)
            if event.get("failed"):
                return 1
        ws = next((w for w in await c.workspaces() if w.name == args.name), None)
        print(f"{args.name} is ready: {c.lab_url(ws)}" if ws else f"{args.name}: started")
        return 0
    return run(args, go)


def cmd_ws_stop(args) -> int:
    async def go(c: PodbayClient) -> int:
        await c.stop_workspace(args.name)
        print(f"{args.name}: stopped")
        return 0
    return run(args, go)


def cmd_ws_rm(args) -> int:
    async def go(c: PodbayClient) -> int:
        await c.delete_workspace(args.name)
        print(f"{args.name}: deleted (your home directory is kept)")
        return 0
    return run(args, go)


def cmd_ws_open(args) -> int:
    async def go(c: PodbayClient) -> int:
        ws = next((w for w in await c.workspaces() if w.name == args.name), None)
        if ws is None:
            print(f"podbay: you have no workspace named {args.name!r}", file=sys.stderr)
            return 1
        if ws.state != "ready":
            print(f"podbay: {args.name} is {ws.state}; start it with: podbay ws new {args.name}", file=sys.stderr)
            return 1
        if args.vscode:
            print(await vscode_text(c, ws, args.days))
            return 0
        url = c.lab_url(ws)
        print(url)
        if can_open_browser():
            webbrowser.open(url)
        return 0
    return run(args, go)


async def vscode_text(c: PodbayClient, ws, days: int = 30) -> str:
    """How to open a workspace in desktop VS Code, both ways, with a fresh token for the
    Jupyter extension (good for this workspace only)."""
    from ..ssh import host_alias

    info = await c.ssh_info()  # first: a token made and then not shown would be lost
    made = await c.jupyter_token(ws.name, days)
    server = c.server_url(ws)
    until = f"until {made['expires_at'][:10]}" if made.get("expires_at") else "until you revoke it"
    return "\n".join([
        "Jupyter extension (notebooks on this workspace's kernels): Select Kernel → Existing JupyterHub Server",
        f"    URL       {server}",
        f"    username  {c.user}",
        f"    token     {made['token']}",
        f"  (the token reaches {ws.name} only, {until}; revoke it at {c.url}/hub/token)",
        "  or Existing Jupyter Server, as one URL:",
        f"    {server}?token={made['token']}",
        "",
        "Remote-SSH (the whole editor, terminal and debugger in the workspace), once `podbay ssh-config --write` ran:",
        f"    vscode://vscode-remote/ssh-remote+{host_alias(ws.name)}{info['home']}",
        f"    or Remote-SSH: Connect to Host… → {host_alias(ws.name)}",
    ])


def cmd_capacity(args) -> int:
    async def go(c: PodbayClient) -> int:
        if args.gpus:
            from rich.console import Console

            from ..picture import picture

            gpus = await c.gpus()
            if args.json:
                print_json(gpus)
            else:
                Console(highlight=False).print(picture(gpus, (await c.whoami())["name"]), end="", soft_wrap=True)
            return 0
        cap = await c.capacity()
        if args.json:
            print_json(cap)
            return 0
        rows = [[p["pool"], name, r["used"], r["free"], r["total"]]
                for p in cap["pools"] for name, r in p["profiles"].items()]
        print_table(rows, ["pool", "profile", "used", "free", "total"])
        out = [[p["pool"], n["name"], n["state"], n["reason"] or "-", f"{n['gpus_used']}/{n['gpus']}"]
               for p in cap["pools"] for n in p.get("nodes") or [] if not n["usable"]]
        if out:
            print("\nNodes that take no jobs now:")
            print_table(out, ["pool", "node", "state", "reason", "gpus used"])
        return 0
    return run(args, go)


def cmd_quota(args) -> int:
    async def go(c: PodbayClient) -> int:
        me = await c.me()
        if args.json:
            print_json(me)
            return 0
        for line in quota_lines(me):
            print(line)
        return 0
    return run(args, go)


def cmd_tui(args) -> int:
    from ..app import PodbayApp

    try:
        creds = resolve(args.url, args.token)
    except NotLoggedIn as e:
        url = args.url or os.environ.get("PODBAY_URL")
        if not url or args.first_paint:
            print(f"podbay: {e}", file=sys.stderr)
            return 1
        # A portal named but no login: the TUI opens on its login screen.
        PodbayApp(url.rstrip("/"), None).run()
        return 0

    if args.first_paint:
        # For benchmarks/tui_latency.py: start, paint the Workspaces view once, exit.
        PodbayApp(creds.url, creds.token, exit_after_first_paint=True,
                  service_url=creds.service_url).run(headless=True)
        return 0
    PodbayApp(creds.url, creds.token, service_url=creds.service_url).run()
    return 0


