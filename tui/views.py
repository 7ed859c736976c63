"""The four tables of the TUI. Each view knows how to load its rows and how to draw them;
the app decides when (only the visible view refreshes)."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any

from rich.text import Text
from textual.widgets import DataTable

from .client import PodbayClient, Workspace
from .fmt import gpu_hours

# Big tables stay fast: show a page of the newest rows (filter to reach the others).
MAX_ROWS = 200


def age(iso: str | None, now: datetime | None = None) -> str:
    if not iso:
        return "-"
    try:
        then = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    except ValueError:
        return "-"
    secs = int(((now or datetime.now(timezone.utc)) - then).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size:
            return f"{secs // size}{unit}"
    return f"{max(secs, 0)}s"


def matches(row: list[str], pattern: str) -> bool:
    """k9s filters: a regex (case-insensitive), `!` in front inverts it."""
    if not pattern:
        return True
    invert = pattern.startswith("!")
    pattern = pattern[1:] if invert else pattern
    try:
        found = any(re.search(pattern, cell, re.IGNORECASE) for cell in row)
    except re.error:
        found = any(pattern.lower() in cell.lower() for cell in row)
    return found != invert


def bar(used: int, total: int, width: int = 20) -> Text:
    filled = round(width * used / total) if total else 0
    t = Text()
    t.append("█" * filled, style="red" if used == total and total else "yellow")
    t.append("░" * (width - filled), style="green")
    return t


STATE_STYLE = {"ready": "green", "running": "green", "succeeded": "green", "starting": "yellow",
               "queued": "yellow", "stopping": "yellow", "stopped": "dim", "failed": "red", "cancelled": "dim"}


class View(DataTable):
    """A table with a key per row, a filter, and the data it was last drawn from."""

    title = ""
    headers: tuple[str, ...] = ()

    def __init__(self, clock=lambda: datetime.now(timezone.utc), **kw):
        super().__init__(cursor_type="row", zebra_stripes=True, **kw)
        self.clock = clock
        self.data: list[Any] = []
        self.filter = ""

    def on_mount(self) -> None:
        self.add_columns(*self.headers)

    async def load(self, client: PodbayClient) -> list[Any]:
        raise NotImplementedError

    def cells(self, item: Any) -> list[Any]:
        raise NotImplementedError

    def key_of(self, item: Any) -> str:
        raise NotImplementedError

    def show(self, data: list[Any]) -> None:
        """Redraw from data, keeping the cursor on the same row when it is still there."""
        drawn = (self.filter, data)
        if drawn == getattr(self, "_drawn", None):
            return  # a quiet refresh that changed nothing costs nothing
        self._drawn = drawn
        self.data = data
        selected = self.selected_key()
        self.clear()
        shown = 0
        for item in data:
            cells = self.cells(item)
            if not matches([c.plain if isinstance(c, Text) else str(c) for c in cells], self.filter):
                continue
            self.add_row(*cells, key=self.key_of(item))
            shown += 1
            if shown >= MAX_ROWS:
                break
        if selected is not None:
            try:
                self.move_cursor(row=self.get_row_index(selected))
            except Exception:
                pass

    def selected_key(self) -> str | None:
        if not self.row_count:
            return None
        try:
            return self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value
        except Exception:
            return None

    def selected(self) -> Any | None:
        key = self.selected_key()
        return next((item for item in self.data if self.key_of(item) == key), None)


class WorkspacesView(View):
    title = "Workspaces"
    headers = ("NAME", "IMAGE", "PROFILE", "VOLUMES", "STATE", "AGE")

    async def load(self, client: PodbayClient) -> list[Workspace]:
        return await client.workspaces()

    def key_of(self, ws: Workspace) -> str:
        return ws.name

    def cells(self, ws: Workspace) -> list[Any]:
        image = Text(ws.image or "-")
        if ws.image_default:
            image.append(" (default)", style="dim")
        return [ws.name, image, ws.profile, ",".join(ws.volumes) or "-",
                Text(ws.state, style=STATE_STYLE.get(ws.state, "")), age(ws.started, self.clock())]


class JobsView(View):
    title = "Jobs"
    headers = ("ID", "NAME", "USER", "STATE", "GPUS", "EXIT", "AGE", "MESSAGE")

    async def load(self, client: PodbayClient) -> list[dict]:
        return await client.jobs(limit=MAX_ROWS)

    def key_of(self, job: dict) -> str:
        return str(job["id"])

    def cells(self, job: dict) -> list[Any]:
        created = datetime.fromtimestamp(job["created"], timezone.utc).isoformat()
        return [str(job["id"]), job["name"], job["user"], Text(job["state"], style=STATE_STYLE.get(job["state"], "")),
                str(job["gpus"]), "" if job["exit_code"] is None else str(job["exit_code"]), age(created, self.clock()),
                job["message"]]


class CapacityView(View):
    title = "Capacity"
    headers = ("POOL", "PROFILE", "USED", "FREE", "TOTAL", "")

    async def load(self, client: PodbayClient) -> list[tuple[str, str, dict]]:
        cap = await client.capacity()
        return [(p["pool"], name, row) for p in cap["pools"] for name, row in p["profiles"].items()]

    def key_of(self, item) -> str:
        return f"{item[0]}/{item[1]}"

    def cells(self, item) -> list[Any]:
        pool, name, row = item
        return [pool, name, str(row["used"]), str(row["free"]), str(row["total"]), bar(row["used"], row["total"])]


class VolumesView(View):
    title = "Volumes"
    headers = ("NAME", "MOUNTED AT", "ACCESS", "DESCRIPTION")

    async def load(self, client: PodbayClient) -> list[dict]:
        return await client.volumes()

    def key_of(self, vol: dict) -> str:
        return vol["name"]

    def cells(self, vol: dict) -> list[Any]:
        return [vol["name"], vol["mount_path"], "read-only" if vol["read_only"] else "read-write",
                vol["description"]]


class SecretsView(View):
    """Your secrets: names and when they were set, never the values."""

    title = "Secrets"
    headers = ("NAME", "SET")

    async def load(self, client: PodbayClient) -> list[dict]:
        return await client.secrets()

    def key_of(self, secret: dict) -> str:
        return secret["name"]

    def cells(self, secret: dict) -> list[Any]:
        when = datetime.fromtimestamp(secret["updated"], timezone.utc)
        return [secret["name"], age(when.isoformat(), self.clock())]


class UsageView(View):
    """GPU-hours held and used over the last 30 days: yours (admins: per user)."""

    title = "Usage (30 days)"
    headers = ("WHO", "GPU-H HELD", "GPU-H USED", "UTIL", "STARTS", "")

    async def load(self, client: PodbayClient) -> list[dict]:
        out = await client.usage(by="user")
        return [*out["rows"], {**out["total"], "key": "total"}] if out["rows"] else []

    def key_of(self, row: dict) -> str:
        return str(row["key"])

    def cells(self, row: dict) -> list[Any]:
        util = row["utilization"]
        return [str(row["key"] or "-"), gpu_hours(row["gpu_hours_held"]), gpu_hours(row["gpu_hours_used"]),
                "-" if util is None else f"{util:.0f}%", str(row["holdings"]),
                bar(round(util or 0), 100) if util is not None else ""]
