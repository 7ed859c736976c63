"""Snapshots of each TUI view at 120×40 with fixed data and a fixed clock. The client is
replaced here only to pin the data; the real one is exercised in tests/integration."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from podbay.tui.app import PodbayApp
from podbay.tui.client import PodbayClient, Workspace

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=timezone.utc)
T0 = NOW.timestamp()


class FixedClient(PodbayClient):
    def __init__(self):
        super().__init__("http://podbay.example.org", "fixed", user="alice")

    async def whoami(self):
        return {"name": "alice"}

    async def workspaces(self):
        return [
            Workspace("resnet", "ready", "pytorch", "mig-1g.10gb", ["imagenet"], "2026-11-22T09:00:00Z", None,
                      "/user/alice/resnet/", None),
            Workspace("notes", "stopped", "pytorch", "cpu", [], None, None, None, None, image_default=True),
            Workspace("llm-ft", "starting", "pytorch", "gpu-2", ["scratch"], "2026-11-22T11:59:30Z", None, None, "spawn"),
        ]

    async def jobs(self, **_):
        def job(i, name, state, gpus, code, msg, ago):
            return {"id": i, "name": name, "user": "alice", "team": "vision", "image": "pytorch",
                    "command": ["python", "train.py"], "workdir": "/home/alice", "volumes": [], "env": {},
                    "gpus": gpus, "pool": "training", "from_workspace": "resnet", "state": state,
                    "exit_code": code, "message": msg, "devices": [], "created": T0 - ago,
                    "started": None, "finished": None}
        return [job(3, "resnet-train", "queued", 8, None, "waiting for 8 free GPUs in pool training", 60),
                job(2, "resnet-train", "running", 2, None, "running", 1800),
                job(1, "smoke", "failed", 1, 3, "exited with code 3", 7200)]

    async def capacity(self):
        return {"pools": [
            {"pool": "dev", "devices": {}, "profiles": {
                "mig-1g.10gb": {"total": 9, "used": 4, "free": 5}, "mig-3g.40gb": {"total": 1, "used": 1, "free": 0},
                "shared-1/4": {"total": 8, "used": 2, "free": 6}, "gpu-1": {"total": 4, "used": 1, "free": 3}}},
            {"pool": "training", "devices": {}, "profiles": {"gpu-8": {"total": 1, "used": 0, "free": 1}}}]}

    async def volumes(self):
        return [{"name": "imagenet", "description": "ImageNet-1k", "mount_path": "~/data/imagenet", "read_only": True},
                {"name": "scratch", "description": "Shared scratch", "mount_path": "~/data/scratch", "read_only": False}]


def fixed_app() -> PodbayApp:
    return PodbayApp("http://podbay.example.org", "fixed", client=FixedClient(), refresh_interval=3600,
                     clock=lambda: NOW)


@pytest.mark.parametrize("command", ["ws", "jobs", "gpu", "vol"])
def test_view_snapshot(snap_compare, command):
    async def settled(pilot):
        # Every load started (the view's, the top bar's) has ended and its result is drawn:
        # no guess at how long that takes on a slow machine.
        await pilot.app.workers.wait_for_complete()
        await pilot.pause()

    async def go_to(pilot):
        await settled(pilot)
        if command != "ws":
            await pilot.press(":", *command, "enter")
            await settled(pilot)
        assert pilot.app.current == command
    assert snap_compare(fixed_app(), terminal_size=(120, 40), run_before=go_to)
