"""End to end in a real terminal (tmux): log in, create a workspace in the TUI, wait for
it, move a job to the training pool, read its logs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import require

pytestmark = pytest.mark.hub
PODBAY = str(Path(sys.executable).parent / "podbay")


class Tmux:
    def __init__(self, socket: str):
        self.base = ["tmux", "-L", socket]

    def __call__(self, *args: str) -> str:
        return subprocess.run([*self.base, *args], capture_output=True, text=True, check=True).stdout

    def keys(self, *keys: str) -> None:
        self("send-keys", "-t", "e2e", *keys)

    def screen(self) -> str:
        return self("capture-pane", "-t", "e2e", "-p")

    def wait_for(self, text: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            screen = self.screen()
            if text in screen:
                return screen
            time.sleep(0.25)
        raise AssertionError(f"{text!r} never appeared; the screen was:\n{self.screen()}")


def test_login_workspace_job_and_logs_in_a_real_terminal(hub, tmp_path):
    require(shutil.which("tmux") is not None, "tmux is not installed")
    tmux = Tmux(f"podbay-test-{os.getpid()}")
    env = f"XDG_CONFIG_HOME={tmp_path} TERM=xterm-256color"
    tmux("new-session", "-d", "-s", "e2e", "-x", "120", "-y", "40", "bash --norc --noprofile")
    try:
        tmux.keys(f"export {env}; {PODBAY} login {hub.url}", "Enter")
        tmux.wait_for("Token:")
        tmux.keys(hub.token("alice"), "Enter")
        tmux.wait_for("Logged in to")

        tmux.keys(f"{PODBAY} tui", "Enter")
        tmux.wait_for("user: alice")
        tmux.keys("n")
        tmux.wait_for("New workspace")
        tmux.keys("e2e")
        tmux.keys("C-s")
        tmux.wait_for("e2e is ready", timeout=90)
        tmux.wait_for(" e2e ")

        tmux.keys("t")
        tmux.wait_for("Move a training run from e2e")
        tmux.keys("sh -c 'echo hello-from-e2e'", "Enter")
        tmux.wait_for("(e2e-train) queued")  # the notification, not the form field
        # At a person's pace: the prompt opens, then the word is typed.
        tmux.keys(":")
        tmux.wait_for(":ws :jobs :gpu :vol")
        tmux.keys("jobs")
        time.sleep(0.3)
        tmux.keys("Enter")
        tmux.wait_for("succeeded", timeout=60)
        tmux.keys("l")
        screen = tmux.wait_for("hello-from-e2e")
        assert "Logs of job" in screen
        tmux.keys("Escape")
        # A terminal cannot tell Escape-then-q from Alt-q when they come together.
        tmux.wait_for("user: alice")
        tmux.keys("q")
        time.sleep(1)
        tmux.keys("echo back-in-$((40+2))", "Enter")
        tmux.wait_for("back-in-42", timeout=10)
    finally:
        subprocess.run([*tmux.base, "kill-server"], capture_output=True)
