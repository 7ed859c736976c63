"""End to end in a real terminal (tmux): log in by approving the code in a browser, create a
workspace in the TUI, wait for it, move a job to the training pool, read its logs; log out."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.harness import browser_login, http_client, require

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

    def wait_for_shell(self, timeout: float = 60) -> None:
        """Until the pane's foreground program is the shell again (the TUI has quit)."""
        deadline = time.monotonic() + timeout
        while self("display-message", "-p", "-t", "e2e", "#{pane_current_command}").strip() != "bash":
            assert time.monotonic() < deadline, f"the TUI did not quit; the screen was:\n{self.screen()}"
            time.sleep(0.1)


def approve(browser, hub, user: str, link: str, code: str) -> str:
    """A browser session of `user` opens the link, checks the code and approves; the page's words."""
    page = browser.new_context().new_page()
    try:
        browser_login(page, hub, user)
        page.goto(link)
        page.fill("#code", code)
        page.click("#continue")
        assert page.inner_text("#user-code") == code
        assert page.inner_text("#who") == user and page.inner_text("#host")
        page.click("#approve")
        return page.inner_text("#done")
    finally:
        page.context.close()


def test_login_workspace_job_and_logs_in_a_real_terminal(hub, tmp_path, browser):
    require(shutil.which("tmux") is not None, "tmux is not installed")
    tmux = Tmux(f"podbay-test-{os.getpid()}")
    env = f"XDG_CONFIG_HOME={tmp_path} TERM=xterm-256color"
    tmux("new-session", "-d", "-s", "e2e", "-x", "160", "-y", "40", "bash --norc --noprofile")
    try:
        tmux.keys(f"export {env}; {PODBAY} login {hub.url}", "Enter")
        screen = tmux.wait_for("enter the code")
        link = next(word for word in screen.split() if word.startswith(f"{hub.url}/services/podbay/pair"))
        code = re.search(r"enter the code ([A-Z]{4}-[A-Z]{4})\.", " ".join(screen.split())).group(1)
        assert "Return to your terminal" in approve(browser, hub, "alice", link, code)
        tmux.wait_for("Logged in to")
        token = json.loads((tmp_path / "podbay" / "credentials.json").read_text())["token"]
        with http_client(base_url=f"{hub.url}/hub/api", headers={"Authorization": f"token {token}"}) as api:
            assert api.get("/user").json()["name"] == "alice"
            # Only what the TUI and CLI need: it cannot make tokens of its own.
            assert api.post("/users/alice/tokens", json={}).status_code == 403

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
        tmux.wait_for_shell()
        tmux.keys("echo back-in-$((40+2))", "Enter")
        tmux.wait_for("back-in-42")
        tmux.keys(f"{PODBAY} logout", "Enter")
        tmux.wait_for("Logged out.")
        # Revoked at the hub, not only forgotten here.
        assert httpx.get(f"{hub.url}/hub/api/user", headers={"Authorization": f"token {token}"}).status_code == 403
    finally:
        subprocess.run([*tmux.base, "kill-server"], capture_output=True)


def test_the_token_is_the_approvers_and_a_code_works_once(hub, tmp_path, browser):
    """bob approves a code (a command line alice started, say): it logs in as bob, never as
    alice; the same code cannot be approved again, and a refused one fails the login."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PODBAY_", "JUPYTERHUB_"))}
    env.update(XDG_CONFIG_HOME=str(tmp_path), BROWSER="")

    def login() -> tuple[subprocess.Popen, str, str]:
        proc = subprocess.Popen([PODBAY, "login", hub.url], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=env)
        link = None
        for line in proc.stdout:
            if "/services/podbay/pair" in line:
                link = line.strip()
            found = re.search(r"enter the code ([A-Z]{4}-[A-Z]{4})\.", line)
            if link and found:
                return proc, link, found.group(1)
        raise AssertionError(proc.stderr.read())

    proc, link, code = login()
    assert "Return to your terminal: it is logged in as bob." in approve(browser, hub, "bob", link, code)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and f"Logged in to {hub.url} as bob" in out, err
    token = json.loads((tmp_path / "podbay" / "credentials.json").read_text())["token"]
    assert httpx.get(f"{hub.url}/hub/api/user", headers={"Authorization": f"token {token}"}).json()["name"] == "bob"
    # The same link again, in alice's browser: it cannot be used twice.
    page = browser.new_context().new_page()
    try:
        browser_login(page, hub, "alice")
        page.goto(link)
        page.fill("#code", code)
        page.click("#continue")
        assert "unknown, has expired or was used already" in page.inner_text("#refused")
    finally:
        page.context.close()

    proc, link, code = login()
    page = browser.new_context().new_page()
    try:
        browser_login(page, hub, "alice")
        page.goto(link)
        page.fill("#code", code)
        page.click("#continue")
        page.click("#deny")
        assert page.inner_text("#done") == "The command line was not logged in."
    finally:
        page.context.close()
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 1 and "podbay: login failed: the login was refused in the browser" in err, err
