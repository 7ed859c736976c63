"""The `podbay` command: the client's commands (`login`, `logout`, `ws`, `job`, `ssh`, `keys`,
`secrets`, `usage`, `capacity`, `tui`, …), and those of whatever else is installed through the
`podbay.commands` entry points (the portal's `config`, `gpus`, `up`; an engine's `k8s`,
`images`). `pip install podbay` is the client alone; `pip install 'podbay[hub]'` adds the
portal.

Exit status: 0 success, 1 a refused or failed operation, 2 a usage error (argparse's).
Every listing takes `--json`, which prints exactly what podbay's service (or, for
workspaces, the client's Workspace records) returns.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import sys
import time
import webbrowser
from dataclasses import asdict
from importlib.metadata import entry_points
from typing import Any, Awaitable, Callable

from .client import ClientError, PodbayClient
from .credentials import NotLoggedIn, forget, resolve, store


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)] if rows else [len(h) for h in header]
    lines = ["  ".join(str(h).upper().ljust(w) for h, w in zip(header, widths))]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def _run(args, fn: Callable[[PodbayClient], Awaitable[int]]) -> int:
    try:
        creds = resolve(args.url, args.token)
    except NotLoggedIn as e:
        print(f"podbay: {e}", file=sys.stderr)
        return 1

    async def main():
        async with PodbayClient(creds.url, creds.token, service_url=creds.service_url) as client:
            return await fn(client)

    try:
        return asyncio.run(main())
    except ClientError as e:
        print(f"podbay: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=False))


def _can_open_browser() -> bool:
    return bool(os.environ.get("BROWSER") or os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
                or sys.platform == "darwin")


# --- login ------------------------------------------------------------------------------


SERVICE = "/services/podbay"


def pair(url: str) -> str | None:
    """Log in by approving a code in a browser (hub/pairing.py); the token, or None where
    the portal has no pairing (an older one: paste a token instead). SystemExit with the
    reason when it fails."""
    import socket

    from .client import start_pairing, wait_for_pairing

    async def go():
        started = await start_pairing(url, socket.gethostname())
        if started is None:
            return None
        link = f"{url}{started['verification_path']}"
        print(f"To log in, open\n\n    {link}\n\nin a browser, log in, and enter the code "
              f"{started['user_code']}.", flush=True)
        if _can_open_browser():
            webbrowser.open(link)
        return (await wait_for_pairing(url, started))["token"]

    try:
        return asyncio.run(go())
    except ClientError as e:
        raise SystemExit(f"podbay: {e}") from None


def _message(r) -> str:
    try:
        return r.json().get("message") or r.text
    except ValueError:
        return r.text[:200]


def cmd_login(args) -> int:
    url = (args.login_url or args.url or os.environ.get("PODBAY_URL") or "").rstrip("/")
    if not url:
        print("podbay: give the portal's address: podbay login https://podbay.example.org", file=sys.stderr)
        return 2
    token = args.token or os.environ.get("PODBAY_TOKEN")
    if not token and not args.paste:
        try:
            token = pair(url)
        except KeyboardInterrupt:
            print(file=sys.stderr)
            return 130
        except SystemExit as e:
            print(e, file=sys.stderr)
            return 1
    if not token:
        page = f"{url}/hub/token"
        print(f"Make a token on {page} and paste it here.")
        if _can_open_browser():
            webbrowser.open(page)
        try:
            token = getpass.getpass("Token: ").strip()
        except (EOFError, KeyboardInterrupt):
            print(file=sys.stderr)
            return 1
    if not token:
        print("podbay: no token given", file=sys.stderr)
        return 1

    async def check():
        async with PodbayClient(url, token) as client:
            return await client.whoami()

    try:
        who = asyncio.run(check())
    except ClientError as e:
        print(f"podbay: login failed: {e}", file=sys.stderr)
        return 1
    path = store(url, token)
    print(f"Logged in to {url} as {who['name']} (saved in {path}).")
    return 0


def cmd_logout(args) -> int:
    """Revoke the saved token at the hub (podbay's service does it), then forget it."""
    import httpx

    from .credentials import credentials_file

    try:
        stored = json.loads(credentials_file().read_text())
    except (OSError, ValueError):
        stored = None
    if stored and stored.get("url") and stored.get("token"):
        try:
            r = httpx.delete(f"{stored['url']}{SERVICE}/api/v1/session", timeout=15,
                             headers={"Authorization": f"token {stored['token']}"})
            if r.status_code not in (200, 401):
                print(f"podbay: the portal did not revoke the token ({r.status_code}: {_message(r)}); "
                      "it is forgotten here", file=sys.stderr)
        except httpx.HTTPError as e:
            print(f"podbay: {stored['url']} does not answer ({type(e).__name__}): the token is forgotten here "
                  "but not revoked; it expires by itself", file=sys.stderr)
    print("Logged out." if forget() else "Not logged in.")
    return 0


# --- workspaces ---------------------------------------------------------------------------


def cmd_ws_ls(args) -> int:
    async def go(c: PodbayClient) -> int:
        wss = await c.workspaces()
        if args.json:
            _print_json([asdict(w) for w in wss])
        else:
            print(_table([[w.name, w.state, w.image, w.profile, ",".join(w.volumes) or "-"] for w in wss],
                         ["name", "state", "image", "profile", "volumes"]))
            # Where people look: an idle GPU's warning before anything happens to it.
            await _print_notices(c, warnings_only=True, lead="\n")
        return 0
    return _run(args, go)


async def _print_notices(c: PodbayClient, warnings_only: bool = False, lead: str = "") -> int:
    try:
        notes = await c.notices()
    except ClientError:
        return 0  # an older portal without notices: the listing stands on its own
    notes = [n for n in notes if n["kind"] == "warning" or not warnings_only]
    for i, n in enumerate(notes):
        when = time.strftime("%a %H:%M", time.localtime(n["at"]))
        mark = "!" if n["kind"] == "warning" else ("x" if n.get("state") == "failed" else "-")
        print(f"{lead if i == 0 else ''}{mark} {when}  {n['message']}")
    return len(notes)


def cmd_notices(args) -> int:
    async def go(c: PodbayClient) -> int:
        if args.json:
            _print_json(await c.notices())
        elif not await _print_notices(c):
            print("No notices: none of your workspaces' GPUs is idle.")
        return 0
    return _run(args, go)


def cmd_ws_keep(args) -> int:
    async def go(c: PodbayClient) -> int:
        out = await c.keep(args.name, args.hours)
        print(f"{args.name} keeps its GPU until {time.strftime('%a %H:%M', time.localtime(out['keep_until']))}, "
              "idle or not.")
        return 0
    return _run(args, go)


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


def cmd_usage(args) -> int:
    since = _period(args.since, None)
    until = _period(args.until, None)

    async def go(c: PodbayClient) -> int:
        out = await c.usage(since=since, until=until, by=args.by, user=args.user, team=args.team)
        if args.json:
            _print_json(out)
            return 0

        def pct(v):
            return "-" if v is None else f"{v:.0f}%"

        rows = [[r["key"] or "-", f"{r['gpu_hours_held']:.1f}", f"{r['gpu_hours_used']:.1f}", pct(r["utilization"]),
                 r["holdings"]] for r in out["rows"]]
        t = out["total"]
        rows.append(["total", f"{t['gpu_hours_held']:.1f}", f"{t['gpu_hours_used']:.1f}", pct(t["utilization"]),
                     t["holdings"]])
        fmt = "%Y-%m-%d %H:%M"
        print(f"GPU usage {time.strftime(fmt, time.localtime(out['since']))} – "
              f"{time.strftime(fmt, time.localtime(out['until']))}, per {out['by']}")
        print(_table(rows, [out["by"], "GPU-h held", "GPU-h used", "util", "starts"]))
        if out["idle_jobs"]:
            print("\nJobs that never used their GPUs:")
            print(_table([[j["job_id"], j["user"], j["profile"], j["gpus"], f"{j['hours']:.1f}"]
                          for j in out["idle_jobs"]], ["job", "user", "profile", "gpus", "hours"]))
        return 0
    return _run(args, go)


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
                print(f"[{event.get('progress', 0):>3}%] {event.get('message', '')}", flush=True)
            if event.get("failed"):
                return 1
        ws = next((w for w in await c.workspaces() if w.name == args.name), None)
        print(f"{args.name} is ready: {c.lab_url(ws)}" if ws else f"{args.name}: started")
        return 0
    return _run(args, go)


def cmd_ws_stop(args) -> int:
    async def go(c: PodbayClient) -> int:
        await c.stop_workspace(args.name)
        print(f"{args.name}: stopped")
        return 0
    return _run(args, go)


def cmd_ws_rm(args) -> int:
    async def go(c: PodbayClient) -> int:
        await c.delete_workspace(args.name)
        print(f"{args.name}: deleted (your home directory is kept)")
        return 0
    return _run(args, go)


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
        if _can_open_browser():
            webbrowser.open(url)
        return 0
    return _run(args, go)


async def vscode_text(c: PodbayClient, ws, days: int = 30) -> str:
    """How to open a workspace in desktop VS Code, both ways, with a fresh token for the
    Jupyter extension (good for this workspace only)."""
    from .ssh import host_alias

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


# --- SSH ----------------------------------------------------------------------------------


def cmd_ssh_proxy(args) -> int:
    """OpenSSH's ProxyCommand: the connection over the hub's WebSocket, with the stored login."""
    from .ssh import SshRefused, bridge, preflight

    status_file = os.environ.get("PODBAY_SSH_PROXY_STATUS")
    try:
        creds = resolve(args.url, args.token)
        _user, _name, url = preflight(creds, args.workspace)
        return bridge(url, creds.token)
    except (NotLoggedIn, SshRefused) as e:
        print(f"podbay: {e}", file=sys.stderr, flush=True)
        if status_file:
            # `podbay ssh` reads it: the sentence was said, ssh's own words are not needed.
            with open(status_file, "w") as f:
                f.write("refused\n")
        return 1
    except KeyboardInterrupt:
        return 130


def cmd_ssh(args) -> int:
    import shutil
    import subprocess
    import tempfile

    from .ssh import host_alias, known_host_name, proxy_command

    program = shutil.which("ssh")
    if program is None:
        print("podbay: OpenSSH's client (ssh) is not installed: apt-get install openssh-client, "
              "or your system's equivalent", file=sys.stderr)
        return 1
    try:
        creds = resolve(args.url, args.token)
    except NotLoggedIn as e:
        print(f"podbay: {e}", file=sys.stderr)
        return 1
    name = args.name.removeprefix("podbay.")

    async def prepare(c: PodbayClient):
        ws = next((w for w in await c.workspaces() if w.name == name), None)
        if ws is None:
            raise SystemExit(f"podbay: you have no workspace named {name}: podbay ws new {name} makes one")
        if ws.state == "stopped" and args.start:
            options: dict[str, Any] = {"profile": ws.profile, "volumes": ws.volumes}
            if ws.image:
                options["image"] = ws.image
            await c.start_workspace(name, options)
        if ws.state == "starting" or (ws.state == "stopped" and args.start):
            async for event in c.progress(name):
                print(f"[{event.get('progress', 0):>3}%] {event.get('message', '')}", file=sys.stderr, flush=True)
                if event.get("failed"):
                    raise SystemExit(f"podbay: {name} did not start")
        elif ws.state == "stopping":
            raise SystemExit(f"podbay: {name} is stopping: run podbay ssh --start {name} once it stopped")
        elif ws.state != "ready":
            raise SystemExit(f"podbay: {name} is {ws.state}: start it with podbay ssh --start {name}")
        info = await c.ssh_info()
        if not info["keys"]:
            raise SystemExit("podbay: you have no SSH key registered with podbay, and workspaces take no "
                             "passwords: podbay keys add (your ~/.ssh/id_ed25519.pub)")
        return c.user, info["login"]

    try:
        user, login = asyncio.run(_with_client(creds, prepare))
    except SystemExit as e:
        print(e, file=sys.stderr)
        return 1
    except ClientError as e:
        print(f"podbay: {e}", file=sys.stderr)
        return 1
    command = list(args.command)
    with tempfile.TemporaryDirectory(prefix="podbay-ssh-") as tmp:
        status = os.path.join(tmp, "status")
        # The proxy uses this very login, whichever way it was given here.
        env = {**os.environ, "PODBAY_URL": creds.url, "PODBAY_TOKEN": creds.token, "PODBAY_SSH_PROXY_STATUS": status}
        # The person's own options first: ssh keeps the first value it is given.
        argv = [program]
        for option in args.option or []:
            argv += ["-o", option]
        argv += ["-o", f"ProxyCommand={proxy_command(name)}",
                 "-o", f"HostKeyAlias={known_host_name(creds.url, user, name)}",
                 "-o", "StrictHostKeyChecking=accept-new", "-o", "ServerAliveInterval=30", "-l", login]
        for spec in args.local_forward or []:
            argv += ["-L", spec]
        for identity in args.identity or []:
            argv += ["-i", identity]
        argv += [host_alias(name), *command]
        try:
            rc = subprocess.run(argv, env=env).returncode
        except KeyboardInterrupt:
            return 130
        if rc == 255:
            if not os.path.exists(status):
                print(f"podbay: ssh could not log in to {name}. If it said \"Permission denied (publickey)\", "
                      "the key it offered is not one you registered: podbay keys ls lists yours, "
                      "podbay keys add FILE.pub adds one", file=sys.stderr)
            return 1
        return rc


async def _with_client(creds, fn):
    async with PodbayClient(creds.url, creds.token, service_url=creds.service_url) as client:
        return await fn(client)


def cmd_ssh_config(args) -> int:
    from pathlib import Path

    from .ssh import config_block, write_config

    async def go(c: PodbayClient) -> int:
        names = [w.name for w in await c.workspaces()]
        info = await c.ssh_info()
        block = config_block(c.url, c.user, info["login"], names)
        if not args.write:
            print(block, end="")
            return 0
        path = Path(args.file).expanduser()
        changed = write_config(path, block)
        hosts = ", ".join(f"podbay.{n}" for n in names) or "none yet"
        print(f"{'Wrote' if changed else 'Already up to date:'} podbay's hosts in {path} ({hosts}; "
              "podbay.NAME for workspaces made later).")
        if not info["keys"]:
            print("You have no SSH key registered yet: podbay keys add", file=sys.stderr)
        return 0
    return _run(args, go)


# --- jobs ---------------------------------------------------------------------------------


def _job_rows(jobs: list[dict]) -> str:
    return _table([[j["id"], j["name"], j["user"], j["state"], _gpus(j),
                    "" if j["exit_code"] is None else j["exit_code"], j["message"]] for j in jobs],
                  ["id", "name", "user", "state", "gpus", "exit", "message"])


def _gpus(job: dict) -> str:
    """`2`, or `8×4` for a job across nodes (GPUs per node × nodes)."""
    nodes = job.get("nodes", 1)
    return f"{job.get('gpus_per_node', job['gpus'])}×{nodes}" if nodes > 1 else str(job["gpus"])


def cmd_job_submit(args) -> int:
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        print("podbay: give the command after --: podbay job submit --gpus 2 -- python train.py", file=sys.stderr)
        return 2
    env = {}
    for item in args.env or []:
        key, sep, value = item.partition("=")
        if not sep:
            print(f"podbay: --env takes KEY=VALUE, not {item!r}", file=sys.stderr)
            return 2
        env[key] = value
    body: dict[str, Any] = {"name": args.name or _default_job_name(command), "command": command,
                            "gpus_per_node": args.gpus, "nodes": args.nodes, "env": env}
    for key in ("image", "workdir", "from_workspace", "pool", "time_limit"):
        if getattr(args, key):
            body[key] = getattr(args, key)
    if args.volume is not None:
        body["volumes"] = args.volume

    async def go(c: PodbayClient) -> int:
        job = await c.submit_job(body)
        if args.json:
            _print_json(job)
        else:
            print(f"job {job['id']} ({job['name']}) {job['state']}: podbay job logs -f {job['id']}")
        return 0
    return _run(args, go)


def _default_job_name(command: list[str]) -> str:
    import re
    # `python train.py …` is named after the script; anything else after the program.
    script = next((a for a in command[1:2] if a.endswith(".py")), None)
    base = os.path.basename(script or command[0])
    name = re.sub(r"[^a-z0-9-]+", "-", base.lower().rsplit(".", 1)[0]).strip("-")
    return (name or "job")[:63]


def cmd_job_ls(args) -> int:
    async def go(c: PodbayClient) -> int:
        jobs = await c.jobs(user=args.user, team=args.team, state=args.state)
        if args.json:
            _print_json(jobs)
        else:
            print(_job_rows(jobs))
        return 0
    return _run(args, go)


def cmd_job_show(args) -> int:
    async def go(c: PodbayClient) -> int:
        job = await c.job(args.id)
        if args.json:
            _print_json(job)
        else:
            for key, value in job.items():
                print(f"{key:>15}: {value}")
        return 0
    return _run(args, go)


def cmd_job_logs(args) -> int:
    async def go(c: PodbayClient) -> int:
        if args.follow:
            async for chunk in c.follow_logs(args.id):
                sys.stdout.write(chunk)
                sys.stdout.flush()
        else:
            sys.stdout.write(await c.logs(args.id))
        return 0
    return _run(args, go)


def cmd_job_cancel(args) -> int:
    async def go(c: PodbayClient) -> int:
        job = await c.cancel_job(args.id)
        print(f"job {job['id']} ({job['name']}): {job['state']}")
        return 0
    return _run(args, go)


def cmd_secrets(args) -> int:
    """Your secrets: set (the value from a prompt or standard input, never the command
    line, where ps and shell history would show it), list (names only), remove."""
    value = None
    if args.secrets_command == "set":
        if sys.stdin.isatty():
            try:
                value = getpass.getpass(f"Value of {args.name} (not shown): ")
            except (EOFError, KeyboardInterrupt):
                print(file=sys.stderr)
                return 1
        else:
            value = sys.stdin.read().rstrip("\n")

    async def go(c: PodbayClient) -> int:
        if args.secrets_command == "ls":
            items = await c.secrets()
            if getattr(args, "json", False):
                _print_json(items)
            elif not items:
                print("No secrets. podbay secrets set NAME gives every workspace and job you start one.")
            else:
                import datetime

                print(_table([[s["name"], datetime.datetime.fromtimestamp(s["updated"]).strftime("%Y-%m-%d %H:%M")]
                              for s in items], ["name", "set"]))
            return 0
        if args.secrets_command == "set":
            await c.set_secret(args.name, value)
            print(f"{args.name} is set: workspaces and jobs you start from now on get it.")
            return 0
        await c.delete_secret(args.name)
        print(f"{args.name} is removed (running workspaces keep it until they stop).")
        return 0
    return _run(args, go)


def cmd_keys(args) -> int:
    """Your SSH public keys: add one (a .pub file, by default your ~/.ssh/id_ed25519.pub or
    id_rsa.pub), list them, remove one by fingerprint."""
    line = None
    if args.keys_command == "add":
        from pathlib import Path

        candidates = [Path(args.file).expanduser()] if args.file else [
            Path("~/.ssh/id_ed25519.pub").expanduser(), Path("~/.ssh/id_ecdsa.pub").expanduser(),
            Path("~/.ssh/id_rsa.pub").expanduser()]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            print(f"podbay: no public key at {', '.join(map(str, candidates))}: make one with "
                  "ssh-keygen -t ed25519, or name the .pub file", file=sys.stderr)
            return 1
        lines = path.read_text().strip().splitlines()
        line = lines[0] if lines else ""

    async def go(c: PodbayClient) -> int:
        if args.keys_command == "ls":
            items = await c.keys()
            if getattr(args, "json", False):
                _print_json(items)
            elif not items:
                print("No SSH keys. podbay keys add registers your ~/.ssh/id_ed25519.pub.")
            else:
                print(_table([[k["fingerprint"], k["type"], k["comment"]] for k in items],
                             ["fingerprint", "type", "comment"]))
            return 0
        if args.keys_command == "add":
            added = await c.add_key(line)
            print(f"Added {added['type']} key {added['fingerprint']} {added['comment']}".rstrip())
            return 0
        await c.delete_key(args.fingerprint)
        print(f"Removed {args.fingerprint}.")
        return 0
    return _run(args, go)


def cmd_capacity(args) -> int:
    async def go(c: PodbayClient) -> int:
        cap = await c.capacity()
        if args.json:
            _print_json(cap)
            return 0
        rows = [[p["pool"], name, r["used"], r["free"], r["total"]]
                for p in cap["pools"] for name, r in p["profiles"].items()]
        print(_table(rows, ["pool", "profile", "used", "free", "total"]))
        out = [[p["pool"], n["name"], n["state"], n["reason"] or "-", f"{n['gpus_used']}/{n['gpus']}"]
               for p in cap["pools"] for n in p.get("nodes") or [] if not n["usable"]]
        if out:
            print("\nNodes that take no jobs now:")
            print(_table(out, ["pool", "node", "state", "reason", "gpus used"]))
        return 0
    return _run(args, go)


def cmd_tui(args) -> int:
    from .app import PodbayApp

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


# --- wiring --------------------------------------------------------------------------------


def add_commands(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add the client commands to the `podbay` parser (`common` carries --url/--token)."""
    p = sub.add_parser("login", parents=[common], help="log in to a podbay portal: approve a code in a browser")
    p.add_argument("login_url", nargs="?", metavar="URL", help="the portal, e.g. https://podbay.example.org")
    p.add_argument("--paste", action="store_true", help="paste a token made at /hub/token instead")
    p.set_defaults(func=cmd_login)
    sub.add_parser("logout", parents=[common], help="forget the stored token").set_defaults(func=cmd_logout)

    ws = sub.add_parser("ws", help="workspaces").add_subparsers(dest="ws_command", required=True)
    p = ws.add_parser("ls", parents=[common], help="list your workspaces")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_ws_ls)
    p = ws.add_parser("new", parents=[common], help="start a workspace (and wait until it is ready)")
    p.add_argument("name")
    p.add_argument("--image")
    p.add_argument("--profile", default="cpu", help="cpu, mig-1g.10gb, shared-1/4, gpu-1, … (default: cpu)")
    p.add_argument("--volume", action="append", help="a volume to mount; repeat for more")
    p.add_argument("--no-wait", action="store_true")
    p.add_argument("--quiet", "-q", action="store_true")
    p.set_defaults(func=cmd_ws_new)
    p = ws.add_parser("keep", parents=[common], help="keep a workspace's GPU for some hours even while it is idle")
    p.add_argument("name")
    p.add_argument("--hours", type=float, default=2.0, help="how long (default 2; the portal sets the most)")
    p.set_defaults(func=cmd_ws_keep)
    p = sub.add_parser("notices", parents=[common], help="idle GPU warnings on your workspaces, and what was done")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_notices)
    p = sub.add_parser("usage", parents=[common], help="GPU-hours held and used, per user, team, profile or pool")
    p.add_argument("--since", help="a date (2026-11-01) or a time ago (7d); default 30 days ago")
    p.add_argument("--until", help="a date, or a time ago; default now")
    p.add_argument("--by", choices=["user", "team", "profile", "pool"], default="user")
    p.add_argument("--user", help="someone else's (admins)")
    p.add_argument("--team", help="a team's (its members, admins)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_usage)
    for name, fn, text in [("stop", cmd_ws_stop, "stop a workspace (its home is kept)"),
                           ("rm", cmd_ws_rm, "delete a stopped or running workspace"),
                           ("open", cmd_ws_open, "print (and open) a workspace's JupyterLab URL")]:
        p = ws.add_parser(name, parents=[common], help=text)
        p.add_argument("name")
        if name == "open":
            p.add_argument("--vscode", action="store_true",
                           help="print how to open it in desktop VS Code: a token for the Jupyter extension, "
                                "and the Remote-SSH link")
            p.add_argument("--days", type=int, default=30, help="how long that token lasts (1-90, default 30)")
        p.set_defaults(func=fn)

    p = sub.add_parser("ssh", parents=[common], help="a shell, or a command, in a workspace over SSH through the hub")
    p.add_argument("name", metavar="WORKSPACE")
    p.add_argument("--start", action="store_true", help="start it first if it is stopped")
    p.add_argument("-L", dest="local_forward", action="append", metavar="[ADDR:]PORT:HOST:HOSTPORT",
                   help="forward a local port into the workspace (as ssh -L); repeat for more")
    p.add_argument("-i", dest="identity", action="append", metavar="FILE", help="the private key to use (as ssh -i)")
    p.add_argument("-o", dest="option", action="append", metavar="OPTION", help="an ssh option (as ssh -o)")
    # Not REMAINDER: options after the name (podbay ssh dev --start) stay options.
    p.add_argument("command", nargs="*", help="-- then the command line (default: a shell)")
    p.set_defaults(func=cmd_ssh)
    p = sub.add_parser("ssh-proxy", parents=[common],
                       help="ssh's ProxyCommand: the connection over the hub, with your podbay login")
    p.add_argument("workspace", metavar="WORKSPACE", help="NAME or podbay.NAME")
    p.set_defaults(func=cmd_ssh_proxy)
    p = sub.add_parser("ssh-config", parents=[common],
                       help="Host entries for ssh, scp, rsync and VS Code Remote-SSH (podbay.NAME)")
    p.add_argument("--write", action="store_true", help="write them into ~/.ssh/config, in a block podbay owns")
    p.add_argument("--file", default="~/.ssh/config", help="the file --write writes (default: %(default)s)")
    p.set_defaults(func=cmd_ssh_config)

    keys = sub.add_parser("keys", help="your SSH public keys, for SSH into workspaces").add_subparsers(
        dest="keys_command", required=True)
    p = keys.add_parser("ls", parents=[common], help="list them")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_keys)
    p = keys.add_parser("add", parents=[common], help="register a public key (default ~/.ssh/id_ed25519.pub)")
    p.add_argument("file", nargs="?", help="a .pub file")
    p.set_defaults(func=cmd_keys)
    p = keys.add_parser("rm", parents=[common], help="remove one, by its fingerprint (SHA256:…)")
    p.add_argument("fingerprint")
    p.set_defaults(func=cmd_keys)

    sec = sub.add_parser("secrets", help="your secrets for workspaces and jobs (WANDB_API_KEY, …)").add_subparsers(
        dest="secrets_command", required=True)
    p = sec.add_parser("ls", parents=[common], help="their names (never their values)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_secrets)
    p = sec.add_parser("set", parents=[common], help="set one; the value from a prompt or standard input")
    p.add_argument("name", help="an environment variable name, e.g. WANDB_API_KEY")
    p.set_defaults(func=cmd_secrets)
    p = sec.add_parser("rm", parents=[common], help="remove one")
    p.add_argument("name")
    p.set_defaults(func=cmd_secrets)

    job = sub.add_parser("job", help="training jobs").add_subparsers(dest="job_command", required=True)
    p = job.add_parser("submit", parents=[common], help="move a training run to the training pool")
    p.add_argument("--name")
    p.add_argument("--from-workspace", metavar="NAME", help="take image, volumes and working directory from it")
    p.add_argument("--gpus", type=int, default=1, help="whole GPUs on each node (default: %(default)s)")
    p.add_argument("--nodes", type=int, default=1, help="nodes the job spans (default: %(default)s)")
    p.add_argument("--time", dest="time_limit", metavar="LIMIT",
                   help="how long it may run (Slurm's format: 90, 12:00:00, 2-00:00:00; slurm pools only)")
    p.add_argument("--pool", help="the pool to run in (default: training)")
    p.add_argument("--image")
    p.add_argument("--workdir")
    p.add_argument("--volume", action="append")
    p.add_argument("--env", action="append", metavar="KEY=VALUE")
    p.add_argument("--json", action="store_true")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command")
    p.set_defaults(func=cmd_job_submit)
    p = job.add_parser("ls", parents=[common], help="list jobs")
    p.add_argument("--user")
    p.add_argument("--team")
    p.add_argument("--state")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_job_ls)
    p = job.add_parser("show", parents=[common], help="one job")
    p.add_argument("id", type=int)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_job_show)
    p = job.add_parser("logs", parents=[common], help="a job's output")
    p.add_argument("id", type=int)
    p.add_argument("-f", "--follow", action="store_true", help="stream until the job ends")
    p.set_defaults(func=cmd_job_logs)
    p = job.add_parser("cancel", parents=[common], help="cancel a job")
    p.add_argument("id", type=int)
    p.set_defaults(func=cmd_job_cancel)

    p = sub.add_parser("capacity", parents=[common], help="what is free, per pool and profile")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_capacity)
    p = sub.add_parser("tui", parents=[common], help="the terminal UI")
    p.add_argument("--first-paint", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_tui)


# Commands whose words after `--` are a command line for elsewhere, taken whole: argparse
# cannot put them in a positional after options that follow the other positionals
# (`podbay ssh dev --start -- nvidia-smi`).
PASS_THROUGH = {"ssh"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="podbay", description="Self-service GPU workspaces on JupyterHub.")
    sub = p.add_subparsers(dest="command", required=True)
    # The portal's and the engines' commands, where installed. One that cannot load (a broken
    # or half-installed package) costs its own commands only, never `login` or `ssh-proxy`.
    for ep in sorted(entry_points(group="podbay.commands"), key=lambda ep: ep.name):
        try:
            ep.load()(sub)
        except Exception as e:  # noqa: BLE001 - whatever the other package raised
            print(f"podbay: the {ep.name} commands are unavailable ({type(e).__name__}: {e}); "
                  "reinstall podbay", file=sys.stderr)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", help="the portal (default: PODBAY_URL, the workspace's hub, or `podbay login`)")
    common.add_argument("--token", help="an API token (default: PODBAY_TOKEN, or `podbay login`)")
    add_commands(sub, common)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    rest: list[str] | None = None
    if argv and argv[0] in PASS_THROUGH and "--" in argv:
        cut = argv.index("--")
        argv, rest = argv[:cut], argv[cut + 1:]
    args = build_parser().parse_args(argv)
    if rest is not None:
        args.command = [*args.command, *rest]
    try:
        return args.func(args)
    except ModuleNotFoundError as e:
        # The portal's commands on a client-only install (`pip install podbay`).
        if not args.func.__module__.startswith("podbay.hub") or (e.name or "").startswith("podbay"):
            raise
        print(f"podbay {args.command}: this runs the portal, which needs {e.name} and the rest of the hub: "
              "pip install 'podbay[hub]'", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
