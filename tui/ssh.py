"""SSH into workspaces through the hub: `podbay ssh`, `podbay ssh-proxy`, `podbay ssh-config`.

Nothing but the hub's own URL is reached. The workspace's sshd listens on its loopback and
is proxied by its Jupyter server as raw TCP over a WebSocket (hub/workspace/podbay_sshd.py);
`podbay ssh-proxy` is OpenSSH's ProxyCommand that carries the connection over that WebSocket
with the stored podbay login, so `ssh`, `scp`, `rsync` and VS Code's Remote-SSH work as
with any host. Before it connects, it asks the hub whether the workspace runs and the
token may reach it, so a refusal is one sentence rather than an SSH protocol error.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shlex
import sys
from pathlib import Path
from urllib.parse import urljoin, urlsplit, urlunsplit

import httpx

from .credentials import Credentials
from .hubapi import HubAPI, segment

HOST_PREFIX = "podbay."
BEGIN = "# >>> podbay >>>"
END = "# <<< podbay <<<"


class SshRefused(Exception):
    """Why the connection cannot be made, as a sentence for the person."""


def podbay_command() -> list[str]:
    """This podbay, as a command another program (ssh) can run: the console script beside
    this Python, or the module under this Python."""
    script = Path(sys.executable).parent / "podbay"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "podbay.hub.cli"]


def proxy_command(workspace: str) -> str:
    # ssh runs it through the shell, after expanding %-tokens: quote for the one, double % for the other.
    return " ".join(shlex.quote(a) for a in [*podbay_command(), "ssh-proxy", workspace]).replace("%", "%%")


def host_alias(workspace: str) -> str:
    return f"{HOST_PREFIX}{workspace}"


def known_host_name(hub_url: str, user: str, workspace: str) -> str:
    """The name a workspace's host key is kept under in known_hosts: one per portal, person and
    workspace, so two portals' workspaces of the same name never look like a changed key."""
    parts = urlsplit(hub_url)
    portal = (parts.netloc + parts.path.rstrip("/")).replace("/", "_").replace(":", "_")
    return f"podbay-{portal}-{user}-{workspace}"


def workspace_name(target: str) -> str:
    """`NAME` or `podbay.NAME` (as ssh names the host) → NAME. Only the person's own: the
    workspace's sshd takes only its owner's keys."""
    name = target[len(HOST_PREFIX):] if target.startswith(HOST_PREFIX) else target
    if not name or "/" in name:
        raise SshRefused("name one of your workspaces: podbay ssh NAME (podbay ws ls lists them)")
    return name


def websocket_url(hub_url: str, server_path: str) -> str:
    """The sshd WebSocket under a workspace's URL, as the hub gives it (its base URL and its
    way of escaping names included)."""
    # A path on the hub, or (with subdomain_host) a URL on the workspace's own origin.
    parts = urlsplit(urljoin(hub_url, server_path))
    scheme = {"https": "wss", "http": "ws"}[parts.scheme]
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + "/sshd/", "", ""))


def preflight(creds: Credentials, target: str, transport: httpx.AsyncBaseTransport | None = None
              ) -> tuple[str, str, str]:
    """(user, workspace, WebSocket URL) of a running workspace of the person's that this
    login may reach, or SshRefused saying why not."""
    return asyncio.run(_preflight(creds, target, transport))


async def _preflight(creds: Credentials, target: str, transport) -> tuple[str, str, str]:
    hub = HubAPI(f"{creds.url}/hub/api", token=creds.token, timeout=15, transport=transport)
    name = workspace_name(target)
    try:
        try:
            r = await hub.user()
            if r.status_code in (401, 403):
                raise SshRefused("your podbay login was not accepted (expired or revoked?): run `podbay login` again")
            me = _json(r, creds.url)
            user = me["name"]
            # The token's own model has the servers where it may read them (a login's does):
            # one request to the hub per connection, not two.
            servers = me.get("servers")
            if servers is None:
                r = await hub.user(user)
        except httpx.HTTPError as e:
            raise SshRefused(f"cannot reach the hub at {creds.url} ({type(e).__name__}): is it running?") from None
    finally:
        await hub.aclose()
    if servers is None:
        if r.status_code == 403:
            raise SshRefused("this podbay login cannot list your workspaces: run `podbay login` again")
        servers = _json(r, creds.url).get("servers")
    server = (servers or {}).get(name)
    if server is None:
        raise SshRefused(f"you have no workspace named {name}: podbay ws ls lists them")
    if not server.get("ready"):
        if server.get("pending") == "spawn":
            raise SshRefused(f"{name} is starting: try again when podbay ws ls shows it ready")
        if server.get("pending") == "stop":
            raise SshRefused(f"{name} is stopping: start it again with podbay ssh --start {name} once it stopped")
        raise SshRefused(f"{name} is stopped: start it with podbay ssh --start {name} (or podbay ws new {name})")
    scopes = {s.split("!")[0] for s in me.get("scopes") or []}
    if not scopes & {"access:servers", "inherit"}:
        raise SshRefused("this podbay login may not reach workspaces (it was made before podbay ssh): "
                         "run `podbay login` again")
    return user, name, websocket_url(creds.url, server.get("url") or f"/user/{segment(user)}/{segment(name)}/")


def _json(r: httpx.Response, url: str) -> dict:
    try:
        if r.status_code < 400:
            return r.json()
    except ValueError:
        pass
    raise SshRefused(f"the hub at {url} answered {r.status_code} (not JupyterHub's API): is it running?")


def bridge(url: str, token: str, infd: int = 0, outfd: int = 1) -> int:
    """Carry bytes between standard input/output and the workspace's sshd until either side
    closes. SSH's own encryption rides inside; the WebSocket adds nothing to compress."""
    return asyncio.run(_bridge(url, token, infd, outfd))


async def _bridge(url: str, token: str, infd: int, outfd: int) -> int:
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed, InvalidStatus

    try:
        # No WebSocket pings: SSH keeps the connection alive itself (ServerAliveInterval), and
        # a ping's answer can wait behind a long upload. HTTPS_PROXY is honoured.
        ws = await connect(url, additional_headers={"Authorization": f"token {token}"}, compression=None,
                           max_size=None, open_timeout=30, ping_interval=None, user_agent_header="podbay-ssh-proxy")
    except InvalidStatus as e:
        status = e.response.status_code
        if status in (401, 403):
            raise SshRefused(f"the workspace refused this login ({status}): it belongs to someone else, or the "
                             "login is too old: run `podbay login` again") from None
        raise SshRefused(f"the workspace's SSH server is not reachable ({status}): its image may have no "
                         "sshd (ask your platform team), or it is stopping") from None
    except (OSError, TimeoutError) as e:
        raise SshRefused(f"cannot reach the workspace ({type(e).__name__}): {e}") from None

    loop = asyncio.get_running_loop()
    out_transport, out_protocol = await loop.connect_write_pipe(
        asyncio.streams.FlowControlMixin, open(outfd, "wb", buffering=0, closefd=False))
    writer = asyncio.StreamWriter(out_transport, out_protocol, None, loop)
    received = False
    # What ssh writes is read into one buffer, again and again: a read pipe transport makes a
    # fresh 256 KiB object per read (new pages, then shrunk) and a StreamReader copies it
    # twice more, a quarter of this process's CPU in a large scp. Each read is sent as one
    # frame of what ssh had written (up to 256 KiB): nothing waits to fill a frame.
    os.set_blocking(infd, False)
    buffer = memoryview(bytearray(1 << 18))

    async def readable():
        ready = loop.create_future()
        loop.add_reader(infd, lambda: ready.done() or ready.set_result(None))
        try:
            await ready
        finally:
            loop.remove_reader(infd)

    async def upstream():
        try:
            while True:
                try:
                    n = os.readv(infd, [buffer])
                except BlockingIOError:
                    await readable()
                    continue
                if not n:
                    break
                # A client masks what it sends: the frame is a copy, made before send returns,
                # so the buffer is free for the next read.
                await ws.send(buffer[:n])
        except (ConnectionClosed, OSError):
            pass
        await ws.close()

    async def downstream():
        nonlocal received
        try:
            async for message in ws:
                received = True
                writer.write(message if isinstance(message, bytes) else message.encode())
                await writer.drain()
        except (ConnectionClosed, OSError):
            pass

    up = asyncio.create_task(upstream())
    await downstream()
    up.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await up
    await ws.close()
    with contextlib.suppress(OSError):
        await writer.drain()  # what sshd said last reaches ssh
    writer.close()
    if not received:
        # sshd greets first: nothing at all means it did not start (the workspace's log says why).
        raise SshRefused("the workspace's SSH server closed the connection without a word: it may not be "
                         "installed where the workspace runs (openssh-server; and libnss-wrapper for the local "
                         "backend). The workspace's log says why; tell your platform team")
    return 0


# --- ~/.ssh/config ----------------------------------------------------------------------


def config_block(hub_url: str, user: str, login: str, workspaces: list[str]) -> str:
    """podbay's block for ~/.ssh/config: one Host per workspace, which VS Code's Remote-SSH
    lists. It ends with `Host *`, so that options at the top of the person's own file, which
    follows, still apply to every host as before."""
    lines = [BEGIN,
             f"# Written by `podbay ssh-config --write` for {user} at {hub_url}; it replaces what is",
             "# between these two lines each time (run it again for new workspaces). Your own",
             "# entries belong outside them."]
    for name in sorted(workspaces):
        lines += [f"Host {host_alias(name)}",
                  f"    User {login}",
                  f"    ProxyCommand {proxy_command(name)}",
                  f"    HostKeyAlias {known_host_name(hub_url, user, name)}",
                  "    StrictHostKeyChecking accept-new",
                  "    ServerAliveInterval 30"]
    lines += ["Host *", END]
    return "\n".join(lines) + "\n"


def merge_config(text: str, block: str) -> str:
    """`text` with podbay's block replaced, or put first where there is none: ssh takes the
    first value it finds for an option, so a `Host *` of the person's own further down
    cannot override podbay's ProxyCommand. Everything outside the block is kept as it is."""
    pattern = re.compile(rf"^{re.escape(BEGIN)}[ \t]*\r?\n.*?^{re.escape(END)}[ \t]*(\r?\n)?", re.S | re.M)
    if pattern.search(text):
        return pattern.sub(lambda _m: block, text, count=1)
    return block + ("\n" + text if text else "")


def write_config(path: Path, block: str) -> bool:
    """Write the block into an ssh config file; False where nothing changed. A link (a
    dotfiles manager's) is followed: its target is written, the link stays."""
    path = path.resolve()
    old = ""
    if path.exists():
        with open(path, newline="") as f:  # line ends as they are (CRLF stays CRLF)
            old = f.read()
    new = merge_config(old, block)
    if new == old:
        return False
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.podbay-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", newline="") as f:
        f.write(new)
    if path.exists():
        os.chmod(tmp, path.stat().st_mode & 0o777)
    os.replace(tmp, path)
    return True
