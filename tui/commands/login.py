"""`podbay login` (a code approved in the browser, or a pasted token) and `podbay logout`."""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import sys
import webbrowser

from ..client import ClientError, PodbayClient
from ..credentials import forget, store

from .common import can_open_browser, response_message


SERVICE = "/services/podbay"


def pair(url: str) -> str | None:
    """Log in by approving a code in a browser (hub/service/pairing.py); the token, or None where
    the portal has no pairing (an older one: paste a token instead). SystemExit with the
    reason when it fails."""
    import socket

    from ..client import start_pairing, wait_for_pairing

    async def go():
        started = await start_pairing(url, socket.gethostname())
        if started is None:
            return None
        link = f"{url}{started['verification_path']}"
        print(f"To log in, open\n\n    {link}\n\nin a browser, log in, and enter the code "
              f"{started['user_code']}.", flush=True)
        if can_open_browser():
            webbrowser.open(link)
        return (await wait_for_pairing(url, started))["token"]

    try:
        return asyncio.run(go())
    except ClientError as e:
        raise SystemExit(f"podbay: {e}") from None


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
        if can_open_browser():
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

    from ..credentials import credentials_file

    try:
        stored = json.loads(credentials_file().read_text())
    except (OSError, ValueError):
        stored = None
    if stored and stored.get("url") and stored.get("token"):
        try:
            r = httpx.delete(f"{stored['url']}{SERVICE}/api/v1/session", timeout=15,
                             headers={"Authorization": f"token {stored['token']}"})
            if r.status_code not in (200, 401):
                print(f"podbay: the portal did not revoke the token ({r.status_code}: {response_message(r)}); "
                      "it is forgotten here", file=sys.stderr)
        except httpx.HTTPError as e:
            print(f"podbay: {stored['url']} does not answer ({type(e).__name__}): the token is forgotten here "
                  "but not revoked; it expires by itself", file=sys.stderr)
    print("Logged out." if forget() else "Not logged in.")
    return 0


