"""The spawn page in a real headless Chromium: log in, pick a MIG slice and a volume,
start, land in JupyterLab."""

from __future__ import annotations

import os
import re

import pytest

from tests.harness import browser_login, environ_of, http_client

pytestmark = [pytest.mark.hub, pytest.mark.browser]


def service(hub, user: str | None = None):
    """podbay's service API as `user` (their token), or as nobody."""
    headers = {"Authorization": f"token {hub.token(user)}"} if user else {}
    return http_client(base_url=f"{hub.url}/services/podbay/api/v1", headers=headers, timeout=60)

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


def test_podbays_pages_capacity_jobs_and_usage(hub, browser, tmp_path):
    """podbay's own pages through the hub: linked from its navigation bar, behind its login."""
    import time

    import yaml

    from tests.harness import TEST_CONFIG, wait_job

    shots = str(os.environ.get("PODBAY_SCREENSHOT_DIR", tmp_path))

    with service(hub, "alice") as alice, service(hub, "bob") as bob:
        talk = alice.post("/jobs", json={"name": "talk", "gpus": 1, "command": [
            "sh", "-c", "for i in 1 2 3 4 5 6 7 8; do echo line-$i; sleep 1; done"]}).json()
        long = alice.post("/jobs", json={"name": "long", "gpus": 0, "command": ["sleep", "120"]}).json()
        theirs = bob.post("/jobs", json={"name": "bobs", "gpus": 0, "command": ["sleep", "60"]}).json()
        wait_job(alice, talk["id"], {"running"})

    page = browser.new_page()
    page.set_default_timeout(60_000)
    browser_login(page, hub, "alice")
    page.goto(f"{hub.url}/hub/home")
    page.click("#podbay-nav-capacity")
    page.wait_for_url("**/services/podbay/pages/capacity")
    # Every GPU of the inventory, every device on it, with its holder.
    inventory = yaml.safe_load(TEST_CONFIG.read_text())
    for node in inventory["nodes"]:
        shown = page.locator(f'[data-node="{node["name"]}"] .gpu')
        assert shown.count() == len(node["gpus"]), node["name"]
        for gpu in node["gpus"]:
            keys = ([m["uuid"] for m in gpu["mig"]] if gpu.get("mig") else
                    [f'{gpu["uuid"]}::{n}' for n in range(gpu["replicas"])] if gpu.get("replicas") else [gpu["uuid"]])
            for key in keys:
                assert page.locator(f'[data-device="{key}"]').count() == 1, key
    # alice's 3g.40gb (from the spawn test) is hers; the training GPU her job holds too.
    assert page.get_attribute('[data-device="MIG-11111111-0001-4000-8000-000000000001"]', "data-holder") == "alice"
    held = page.locator('[data-node="train-01"] .dev.mine')
    assert held.count() == 1 and "job:" in held.inner_text()
    assert page.locator('[data-node="dev-01"] .dev.free').count() >= 1
    page.screenshot(path=f"{shots}/pages-capacity.png", full_page=True)

    page.click("text=Jobs")
    page.wait_for_url("**/pages/jobs")
    listed = {int(row.get_attribute("data-job")) for row in page.locator("#jobs tbody tr").all()}
    assert {talk["id"], long["id"]} <= listed and theirs["id"] not in listed
    # Another's job, by its URL: refused.
    assert page.goto(f"{hub.url}/services/podbay/pages/jobs/{theirs['id']}").status == 403
    # Logs follow as the job writes: an early line while it runs, the last one later.
    page.goto(f"{hub.url}/services/podbay/pages/jobs/{talk['id']}")
    page.wait_for_selector("#logs:has-text('line-1')")
    early = page.inner_text("#logs")
    assert "line-8" not in early
    page.wait_for_selector("#logs:has-text('line-8')", timeout=30_000)
    # Once it ends, the page shows how it ended.
    page.wait_for_selector("#state:has-text('succeeded')", timeout=30_000)
    assert "line-8" in page.inner_text("#logs") and page.locator("#cancel").count() == 0
    page.screenshot(path=f"{shots}/pages-job.png", full_page=True)
    # Cancel with the page's button.
    page.goto(f"{hub.url}/services/podbay/pages/jobs/{long['id']}")
    with page.expect_navigation() as nav:
        page.click("#cancel button")
    assert nav.value.ok, (nav.value.status, page.content()[:500])
    deadline = time.monotonic() + 30
    while page.inner_text("#state") != "cancelled" and time.monotonic() < deadline:
        time.sleep(0.5)
        page.reload()
    assert page.inner_text("#state") == "cancelled"
    # A forged cancel (no page token) is refused.
    r = page.request.post(f"{hub.url}/services/podbay/pages/jobs/{talk['id']}/cancel", form={"csrf": "x"})
    assert r.status == 403

    page.goto(f"{hub.url}/services/podbay/pages/usage?days=1")
    page.wait_for_selector("body[data-charts=drawn]")
    assert page.locator('#usage tr[data-key="alice"]').count() == 1
    # GPU-hours as a person reads them: her few minutes of GPUs are minutes, never "0.0".
    held = page.locator('#usage tr[data-key="alice"] td').nth(1).inner_text()
    assert re.fullmatch(r"<1 min|\d+ min|\d+\.\d|[\d,]+", held) and held not in ("0", "0.0"), held
    page.screenshot(path=f"{shots}/pages-usage.png", full_page=True)
    # Layout advice is for admins, who see everyone's requests and holders: not alice.
    page.goto(f"{hub.url}/services/podbay/pages/capacity?advice=30")
    assert page.locator("#advice").count() == 0
    page.close()
    admin = browser.new_page()
    admin.set_default_timeout(60_000)
    browser_login(admin, hub, "admin")
    admin.goto(f"{hub.url}/services/podbay/pages/capacity")
    admin.click("#advice a")
    admin.wait_for_url("**/capacity?advice=30#advice")
    said = admin.inner_text("#advice")
    assert "refused with today's layouts" in said and "requests over the last 30 days" in said, said
    admin.screenshot(path=f"{shots}/pages-capacity-advice.png", full_page=True)
    admin.close()
    with service(hub, "bob") as bob:
        bob.delete(f"/jobs/{theirs['id']}")


# bob's page, served from the hub's origin (his workspace serves what he wants). It tries
# everything a same-origin script can against alice, who opens it while logged in: the
# approval page of bob's `podbay login` code in a window it opens (one click), a form that
# approves it with what it read (a second click), and podbay's pages and their actions read
# and posted with fetch. What it got is in window.got for the test to read.
ATTACK = """<!DOCTYPE html><html><head><meta charset="utf-8"><title>A puzzle</title></head><body>
<button id="one">Open the puzzle</button> <button id="two">Check the answer</button>
<script>
const q = new URLSearchParams(location.search);
const code = q.get("code"), job = q.get("job");
window.got = {};
function read(w, field) {
  try { return w.document.querySelector("input[name=" + (field || "csrf") + "]").value; }
  catch (e) { return "blocked: " + e.name; }
}
document.getElementById("one").onclick = () => {
  window.w = window.open("/services/podbay/pair?code=" + code);
};
document.getElementById("two").onclick = () => {
  const f = document.createElement("form");
  f.method = "post"; f.action = "/services/podbay/pair"; f.target = "_blank";
  for (const [k, v] of [["code", code], ["csrf", read(window.w)], ["action", "approve"]]) {
    const i = document.createElement("input"); i.type = "hidden"; i.name = k; i.value = v; f.append(i);
  }
  document.body.append(f); f.submit();
};
async function status(url, init) {
  try { const r = await fetch(url, Object.assign({credentials: "include"}, init)); return r.status + " " + (await r.text()).slice(0, 200); }
  catch (e) { return "error: " + e; }
}
window.probe = async () => {
  const pages = "/services/podbay/pages/";
  return {
    pair: await status("/services/podbay/pair?code=" + code),
    jobs: await status(pages + "jobs"),
    job: await status(pages + "jobs/" + job),
    logs: await status(pages + "jobs/" + job + "/logs", {headers: {"X-Podbay-Page": "guessed"}}),
    cancel: await status(pages + "jobs/" + job + "/cancel", {method: "POST", body: new URLSearchParams({csrf: "x"})}),
  };
};
</script></body></html>"""


def test_a_workspace_page_cannot_approve_a_login_or_act_on_pages_for_its_visitor(hub, browser, tmp_path):
    """The attack of a workspace on its visitor, in a real Chromium: bob starts `podbay login`
    and gets alice, logged in to the hub and podbay's pages, to open a page he serves from the
    hub's origin. With one click it opens the approval page of his code; with a second it
    posts the approval with what it could read. alice's token never reaches bob's command
    line; podbay's pages answer none of its reads and actions."""
    import http.server
    import threading


    from tests.harness import wait_job

    # The proxy passes the whole path on, as it does to a workspace's server.
    (tmp_path / "attack" / "user" / "bob" / "puzzle").mkdir(parents=True)
    (tmp_path / "attack" / "user" / "bob" / "puzzle" / "index.html").write_text(ATTACK)
    class Handler(http.server.SimpleHTTPRequestHandler):
        def end_headers(self):
            # bob sends the policy podbay's pages send, as a same-origin opener that keeps its
            # handle where the pages' policy is only `same-origin`.
            self.send_header("Cross-Origin-Opener-Policy", "same-origin")
            super().end_headers()

    handler = lambda *a: Handler(*a, directory=str(tmp_path / "attack"))  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    hub.add_route("/user/bob/puzzle", f"http://127.0.0.1:{server.server_port}")
    context = browser.new_context()
    try:
        with service(hub) as anon:
            bobs = anon.post("/pairings", json={"host": "bobs-laptop"}).json()
        with service(hub, "alice") as alice:
            job = alice.post("/jobs", json={"name": "secret-output", "gpus": 0, "command": [
                "sh", "-c", "echo API_KEY=hunter2; sleep 120"]}).json()
            wait_job(alice, job["id"], {"running"})

        page = context.new_page()
        page.set_default_timeout(60_000)
        browser_login(page, hub, "alice")
        # alice has used podbay's pages: her browser holds their session.
        page.goto(f"{hub.url}/services/podbay/pages/jobs/{job['id']}")
        page.wait_for_selector("#logs:has-text('API_KEY')")

        page.goto(f"{hub.url}/user/bob/puzzle/index.html?code={bobs['user_code']}&job={job['id']}")
        with context.expect_page() as opened:
            page.click("#one")
        popup = opened.value
        # A page sent her there: she is asked for the code her own terminal shows, bob's is
        # not offered for approval.
        popup.wait_for_selector("#sent")
        assert popup.locator("#approve").count() == 0 and bobs["user_code"] not in popup.content()
        # Nor can bob's page read the form's token through its window, to fill in his code.
        real = popup.get_attribute("input[name=entry]", "value")
        stolen = page.evaluate("() => read(window.w, 'entry')")
        assert real and stolen != real, "bob's page read the pairing form through its window"
        # The second click posts an approval with whatever the first could read.
        with context.expect_page() as posted:
            page.click("#two")
        posted.value.wait_for_load_state()
        assert "Not approved" in posted.value.content()

        probe = page.evaluate("() => window.probe()")
        for what, answer in probe.items():
            assert answer.startswith("403"), (what, answer)
        assert "hunter2" not in str(probe)

        with service(hub) as anon:
            r = anon.post("/pairings/token", json={"device_code": bobs["device_code"]})
        assert r.json()["error"] == "authorization_pending", "alice's token reached bob's command line"
        with service(hub, "alice") as alice:
            assert alice.get(f"/jobs/{job['id']}").json()["state"] == "running", "bob's page cancelled it"
            alice.delete(f"/jobs/{job['id']}")
    finally:
        context.close()
        server.shutdown()


def test_only_the_services_own_login_is_a_session_not_a_workspace_or_vscode_token(hub):
    """Any token of alice's names her to the hub. Set as podbay's session cookie, a workspace's
    own JUPYTERHUB_API_TOKEN or the token `podbay ws open --vscode` prints would approve a
    pairing and mint a token broader than itself: neither is a session, each is sent to log in."""
    import httpx

    from podbay.hub.browser import SESSION_COOKIE

    assert hub.start_server("alice", "tokens", {"profile": "cpu"}).status_code in (201, 202)
    workspace_token = environ_of(hub.workspace_pid("alice", "tokens"))["JUPYTERHUB_API_TOKEN"]
    with service(hub, "alice") as api:
        r = api.post("/workspaces/tokens/jupyter-token", json={"days": 1})
        assert r.status_code == 201, r.text
        vscode_token = r.json()["token"]
        code = httpx.post(f"{hub.url}/services/podbay/api/v1/pairings", json={"host": "x"}).json()["user_code"]
    navigate = {"Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document", "Sec-Fetch-Site": "none"}
    for token in (workspace_token, vscode_token):
        # The hub knows whose it is...
        assert httpx.get(f"{hub.url}/hub/api/user", headers={"Authorization": f"token {token}"}).status_code == 200
        with http_client(cookies={SESSION_COOKIE: token}, timeout=60) as browser:
            r = browser.get(f"{hub.url}/services/podbay/pair", params={"code": code}, headers=navigate)
            # ... and podbay still asks for a login of its own.
            assert r.status_code == 302 and "/hub/api/oauth2/authorize" in r.headers["location"], r.text[:300]
            r = browser.get(f"{hub.url}/services/podbay/pages/jobs", headers=navigate)
            assert r.status_code == 302 and "/hub/api/oauth2/authorize" in r.headers["location"]
    hub.stop_server("alice", "tokens")


def test_the_link_a_terminal_opens_before_the_login_leads_to_the_approval_of_the_typed_code(hub, browser):
    """`podbay login` opens its link in a browser that has not logged in yet: the hub's login
    comes first, then the page's form for the code the terminal shows, then its approval."""
    import httpx

    from tests.harness import PASSWORD

    code = httpx.post(f"{hub.url}/services/podbay/api/v1/pairings", json={"host": "laptop"}).json()["user_code"]
    context = browser.new_context()
    try:
        page = context.new_page()
        page.set_default_timeout(60_000)
        page.goto(f"{hub.url}/services/podbay/pair")
        page.wait_for_selector("#username_input")
        page.fill("#username_input", "alice")
        page.fill("#password_input", PASSWORD)
        page.click("#login_submit")
        page.fill("#code", code)
        page.click("#continue")
        page.wait_for_selector("#approve")
        assert page.inner_text("#user-code") == code and page.inner_text("#who") == "alice"
        page.click("#deny")
        assert page.inner_text("#done") == "The command line was not logged in."
    finally:
        context.close()
