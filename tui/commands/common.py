"""What every command shares: a table, JSON, running a command against the portal with the person's login."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any, Awaitable, Callable

from ..client import ClientError, PodbayClient
from ..credentials import NotLoggedIn, resolve


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)] if rows else [len(h) for h in header]
    lines = ["  ".join(str(h).upper().ljust(w) for h, w in zip(header, widths))]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def run(args, fn: Callable[[PodbayClient], Awaitable[int]]) -> int:
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


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=False))


def can_open_browser() -> bool:
    return bool(os.environ.get("BROWSER") or os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
                or sys.platform == "darwin")


def response_message(r) -> str:
    try:
        return r.json().get("message") or r.text
    except ValueError:
        return r.text[:200]
