"""SSH and VS Code through the hub (`ssh`, `ssh-proxy`, `ssh-config`), SSH keys and secrets."""

from __future__ import annotations

import asyncio
import getpass
import os
import sys
from typing import Any

from ..client import ClientError, PodbayClient
from ..credentials import NotLoggedIn, resolve

from .common import print_json, print_table, run


def cmd_ssh_proxy(args) -> int:
    """OpenSSH's ProxyCommand: the connection over the hub's WebSocket, with the stored login."""
    from ..ssh import SshRefused, bridge, preflight

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

    from ..ssh import host_alias, known_host_name, proxy_command

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
            if ws.image and not ws.image_default:
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

    from ..ssh import config_block, write_config

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
    return run(args, go)


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
                print_json(items)
            elif not items:
                print("No SSH keys. podbay keys add registers your ~/.ssh/id_ed25519.pub.")
            else:
                print_table([[k["fingerprint"], k["type"], k["comment"]] for k in items],
                             ["fingerprint", "type", "comment"])
            return 0
        if args.keys_command == "add":
            added = await c.add_key(line)
            print(f"Added {added['type']} key {added['fingerprint']} {added['comment']}".rstrip())
            return 0
        await c.delete_key(args.fingerprint)
        print(f"Removed {args.fingerprint}.")
        return 0
    return run(args, go)


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
                print_json(items)
            elif not items:
                print("No secrets. podbay secrets set NAME gives every workspace and job you start one.")
            else:
                import datetime

                print_table([[s["name"], datetime.datetime.fromtimestamp(s["updated"]).strftime("%Y-%m-%d %H:%M")]
                              for s in items], ["name", "set"])
            return 0
        if args.secrets_command == "set":
            await c.set_secret(args.name, value)
            print(f"{args.name} is set: workspaces and jobs you start from now on get it.")
            return 0
        await c.delete_secret(args.name)
        print(f"{args.name} is removed (running workspaces keep it until they stop).")
        return 0
    return run(args, go)
