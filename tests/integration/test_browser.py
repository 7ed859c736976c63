"""The spawn page in a real headless Chromium: log in, pick a MIG slice and a volume,
start, land in JupyterLab."""

from __future__ import annotations

import os

import pytest

from tests.conftest import browser_login, environ_of

pytestmark = [pytest.mark.hub, pytest.mark.browser]

def test_spawn_form_to_jupyterlab(hub, browser, tmp_path):
    # Take the only 3g.40gb, so the form must show it disabled with the reason.
    assert hub.start_server("alice", "big", {"profile": "mig-3g.40gb"}).status_code in (201, 202)

    page = browser.new_page()
    page.set_default_timeout(60_000)
    browser_login(page, hub, "alice")

    page.goto(f"{hub.url}/hub/spawn/alice/gpu-notebook")
    form = page.locator("#podbay-options")
    form.wait_for()
    assert "Team vision" in page.inner_text("#podbay-quota")
    big = page.locator('input[name=profile][value="mig-3g.40gb"]')
    assert big.is_disabled()
    assert "none free right now" in page.inner_text('[data-profile="mig-3g.40gb"]')
    # bob's volume is not offered to alice at all.
    assert page.locator('input[name=volumes][value="corpora"]').count() == 0
    page.screenshot(path=str(os.environ.get("PODBAY_SCREENSHOT_DIR", tmp_path)) + "/spawn-form.png", full_page=True)

    page.check('input[name=profile][value="mig-1g.10gb"]')
    page.check('input[name=volumes][value="imagenet"]')
    page.click('form input[type=submit], form button[type=submit]')
    page.wait_for_url("**/user/alice/gpu-notebook/lab**", timeout=90_000)
    page.locator(".jp-LabShell, #jp-main-dock-panel").first.wait_for(timeout=90_000)

    env = environ_of(hub.workspace_pid("alice", "gpu-notebook"))
    assert env["PODBAY_PROFILE"] == "mig-1g.10gb"
    assert env["CUDA_VISIBLE_DEVICES"].startswith("MIG-")
    assert env["PODBAY_VOLUMES"] == "imagenet"
    page.close()
