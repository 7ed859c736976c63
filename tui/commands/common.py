"""What every command shares: a table, JSON, running a command against the portal with the person's login."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import unicodedata
from typing import Any, Awaitable, Callable

from ..client import ClientError, PodbayClient
from ..credentials import NotLoggedIn, resolve


def visible(text: str) -> str:
    """`text` with control and format characters shown escaped (\\x1b), for a terminal."""
    return "".join((f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")
                   if unicodedata.category(c) in ("Cc", "Cf") else c for c in text)


def print_table(rows: list[list[object]], header: list[str]) -> None:
    """Columns as rich lays them out (wide characters counted as the terminal shows them, a
    header in bold on a terminal); piped, plain text that is never cut to a width. Cells are
    text, not markup: a job named "[red]x" prints as it is, and control characters in what
    someone else wrote (a job's message, a key's comment) are shown escaped (\\x1b), never
    sent to the terminal (rich itself drops only a few of them, not ESC)."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    out = Console(highlight=False)
    if not out.is_terminal:
        out = Console(highlight=False, width=100_000, color_system=None)
    t = Table(box=None, pad_edge=False, show_edge=False, header_style="bold", show_header=True)
    for h in header:
        t.add_column(str(h).upper(), no_wrap=not out.is_terminal, overflow="fold")
    for r in rows:
        t.add_row(*(Text(visible(str(c))) for c in r))
    with out.capture() as captured:
        out.print(t)
    # Lines end where their text does (rich pads the last column), as `cut` and `awk` expect.
    print("\n".join(line.rstrip() for line in captured.get().splitlines()))


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
