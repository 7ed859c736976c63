"""`podbay login`'s pairings (hub/service/pairing.py): codes a person can read out, single use,
expiring; the service's endpoints without a hub behind them."""

from __future__ import annotations

import re

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from podbay.hub.browser import SESSION_COOKIE, BrowserSession, TrustedProxies
from podbay.tui.hubapi import HubAPI
from podbay.hub.service.pairing import Pairings, normalize, pairing_router


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_codes_are_short_unambiguous_and_found_however_typed():
    pairings = Pairings()
    p = pairings.start("laptop", "127.0.0.1", "podbay")
    assert re.fullmatch(r"[ACDEFGHJKMNPQRTUVWXY]{4}-[ACDEFGHJKMNPQRTUVWXY]{4}", p.user_code)
    assert pairings.by_user_code(p.user_code.lower().replace("-", " ")) is p
    assert normalize("abcd efgh") == "ABCD-EFGH"
    assert len(p.device_code) >= 40 and pairings.by_device(p.device_code) is p


def test_a_code_expires_and_is_swept():
    clock = Clock()
    pairings = Pairings(ttl=600, clock=clock)
    p = pairings.start("laptop", "127.0.0.1", "podbay")
    assert pairings.live(p)
    clock.now += 601
    assert not pairings.live(p)
    clock.now += 120
    pairings.start("other", "127.0.0.1", "podbay")  # sweeps the long-expired ones
    assert pairings.by_device(p.device_code) is None


def app_of(router) -> FastAPI:
    app = FastAPI()
    app.include_router(router)
    return app


@pytest.fixture
def service():
    """The pairing endpoints, called through the proxy (a loopback peer, trusted by default)."""
    router = pairing_router("/services/podbay/", HubAPI("http://127.0.0.1:9/hub/api", token="service-token"), 3600)
    with TestClient(app_of(router), client=("127.0.0.1", 50000)) as client:
        yield client, router.pairings


def test_the_cli_polls_until_approved_and_gets_the_token_once(service):
    client, pairings = service
    started = client.post("/services/podbay/api/v1/pairings", json={"host": "laptop"}).json()
    # The link carries no code: the person types the one their terminal shows.
    assert started["verification_path"] == "/services/podbay/pair"
    poll = {"device_code": started["device_code"]}
    r = client.post("/services/podbay/api/v1/pairings/token", json=poll)
    assert (r.status_code, r.json()["error"]) == (400, "authorization_pending")
    # What an approval leaves (hub/service/pairing.py's pair_decide, tested end to end in test_tmux).
    p = pairings.by_device(started["device_code"])
    p.approved_by, p.token = "alice", {"token": "t0k", "user": "alice"}
    assert client.post("/services/podbay/api/v1/pairings/token", json=poll).json() == {"token": "t0k", "user": "alice"}
    again = client.post("/services/podbay/api/v1/pairings/token", json=poll)
    assert again.status_code == 400 and again.json()["message"] == ("this login code was used already: run "
                                                                    "`podbay login` again")
    unknown = client.post("/services/podbay/api/v1/pairings/token", json={"device_code": "forged"})
    assert unknown.json()["error"] == "expired_token"
    # Anything but an object is a code that does not exist, not a 500.
    assert client.post("/services/podbay/api/v1/pairings/token", json=[1]).status_code == 400
    assert client.post("/services/podbay/api/v1/pairings", json=[1]).status_code == 201


def test_a_refused_pairing_says_so(service):
    client, pairings = service
    started = client.post("/services/podbay/api/v1/pairings", json={}).json()
    pairings.by_device(started["device_code"]).denied = True
    r = client.post("/services/podbay/api/v1/pairings/token", json={"device_code": started["device_code"]})
    assert r.json() == {"error": "access_denied", "message": "the login was refused in the browser"}


def test_the_approval_page_is_for_a_browser_tab_only(service):
    client, _ = service
    # A script's fetch on the same origin cannot read it.
    r = client.get("/services/podbay/pair", params={"code": "ABCD-EFGH"},
                   headers={"Sec-Fetch-Mode": "cors", "Sec-Fetch-Dest": "empty", "Sec-Fetch-Site": "same-origin"})
    assert r.status_code == 403 and "opened in a browser tab" in r.text
    assert "frame-ancestors 'none'" in r.headers["content-security-policy"] and r.headers["cache-control"] == "no-store"
    # No page that opens it keeps a handle on it (window.open from a workspace's page).
    assert r.headers["cross-origin-opener-policy"] == "noopener-allow-popups"
    navigate = {"Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"}
    r = client.post("/services/podbay/pair", content="code=ABCD-EFGH&action=approve", headers=navigate)
    assert r.status_code == 403, "approving needs the person's own click (Sec-Fetch-User)"
    r = client.post("/services/podbay/pair", content="code=ABCD-EFGH&action=approve",
                    headers={**navigate, "Sec-Fetch-User": "?1", "Sec-Fetch-Site": "same-site"})
    assert r.status_code == 403, "a form another origin posts (a workspace on a subdomain) is not the page's"
    # A browser that sends no Fetch Metadata (plain HTTP beyond the loopback) is told why.
    assert "HTTPS" in client.get("/services/podbay/pair").text


def test_a_caller_other_than_the_proxy_is_counted_by_its_own_address():
    """A workspace calls the service directly (docker: the gateway's port; Kubernetes:
    hub:8083): what it says in X-Forwarded-For is not believed, so rotating it neither fills
    the table nor shows a forged address on the approval page; logins through the proxy go on."""
    router = pairing_router("/services/podbay/", HubAPI("http://127.0.0.1:9/hub/api", token="service-token"), 3600)
    app = app_of(router)
    with TestClient(app, client=("172.30.0.5", 40000)) as workspace, \
            TestClient(app, client=("127.0.0.1", 50000)) as proxy:
        made = [workspace.post("/services/podbay/api/v1/pairings", json={},
                               headers={"X-Forwarded-For": f"10.0.{i // 250}.{i % 250}"}) for i in range(30)]
        assert sum(r.status_code == 201 for r in made) == 10
        assert made[-1].status_code == 503 and "from 172.30.0.5" in made[-1].json()["message"]
        assert {p.address for p in router.pairings._by_device.values()} == {"172.30.0.5"}
        real = proxy.post("/services/podbay/api/v1/pairings", json={"host": "laptop"},
                          headers={"X-Forwarded-For": "192.0.2.7"})
        assert real.status_code == 201
        assert router.pairings.by_device(real.json()["device_code"]).address == "192.0.2.7"


def test_trusted_proxies_are_addresses_and_networks():
    proxies = TrustedProxies.parse("10.0.0.0/24, 192.0.2.1")
    assert proxies.trusts("10.0.0.9") and proxies.trusts("192.0.2.1")
    assert not proxies.trusts("10.0.1.1") and not proxies.trusts("127.0.0.1") and not proxies.trusts("testclient")
    assert TrustedProxies.parse(None).trusts("127.0.0.1") and not TrustedProxies.parse("").trusts("127.0.0.1")


class FakeOAuth:
    """HubOAuth's part the session uses: every token is some user's (as the hub resolves any
    valid token of a person, whatever it was made for)."""

    login_url = "/hub/api/oauth2/authorize?client_id=service-podbay"

    async def user_for_token(self, token, use_cache=False, sync=False):
        return {"kind": "user", "name": "alice", "admin": False}


def test_only_a_cookie_the_service_made_at_a_login_is_a_session():
    """A workspace's own JUPYTERHUB_API_TOKEN, or the token a VS Code link carries, set as
    the cookie, is no login (the hub would say whose it is): only the signed token that the
    OAuth callback stored."""
    session = BrowserSession(FakeOAuth(), b"k" * 32, "/services/podbay/")
    router = pairing_router("/services/podbay/", HubAPI("http://127.0.0.1:9/hub/api", token="service-token"), 3600, session)
    navigate = {"Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"}
    with TestClient(app_of(router), client=("127.0.0.1", 50000), follow_redirects=False) as client:
        for forged in ("workspace-api-token", "vscode-link-token", "workspace-api-token.0123abcd"):
            client.cookies.set(SESSION_COOKIE, forged, path="/services/podbay/")
            r = client.get("/services/podbay/pair", headers=navigate)
            assert r.status_code == 302 and r.headers["location"].startswith(FakeOAuth.login_url), forged
        client.cookies.set(SESSION_COOKIE, session.cookie_value("oauth-token"), path="/services/podbay/")
        r = client.get("/services/podbay/pair", headers=navigate)
        assert r.status_code == 200 and "Enter the code" in r.text
    # Another service's key signs nothing this one accepts.
    other = BrowserSession(FakeOAuth(), b"x" * 32, "/services/podbay/")
    assert other.cookie_value("t") != session.cookie_value("t")


def test_the_login_comes_back_only_to_the_services_own_pages():
    session = BrowserSession(FakeOAuth(), b"k" * 32, "/services/podbay/")
    router = pairing_router("/services/podbay/", HubAPI("http://127.0.0.1:9/hub/api", token="service-token"), 3600, session)

    async def token_for_code(code, sync=False):
        return "oauth-token"

    session.oauth.token_for_code = token_for_code
    with TestClient(app_of(router), client=("127.0.0.1", 50000), follow_redirects=False) as client:
        for target, lands in [("/services/podbay/pages/jobs", "/services/podbay/pages/jobs"),
                              ("/services/podbay//evil.example/x", "/services/podbay/evil.example/x"),
                              ("//evil.example/services/podbay/", "/services/podbay/pair"),
                              ("/services/podbay/../../user/bob/x/", "/services/podbay/pair"),
                              ("/services/podbay/%2e%2e/%2e%2e/user/bob/x", "/services/podbay/pair"),
                              ("https://evil.example/", "/services/podbay/pair")]:
            client.cookies.set("podbay-login-state", f"s1|{target}", path="/services/podbay/")
            r = client.get("/services/podbay/oauth_callback", params={"code": "c", "state": "s1"})
            assert r.headers["location"] == lands
            assert session.token_of(r.cookies[SESSION_COOKIE]) == "oauth-token"
        # The whole round, with the cookies as the service sets them (quoted, as browsers keep them).
        client.cookies.clear()
        nav = {"Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document", "Sec-Fetch-Site": "none"}
        r = client.get("/services/podbay/pair", params={"code": "ABCD-EFGH"}, headers=nav)
        assert r.status_code == 302 and r.headers["location"].startswith(FakeOAuth.login_url)
        state = r.headers["location"].rsplit("state=", 1)[1]
        r = client.get("/services/podbay/oauth_callback", params={"code": "c", "state": state})
        assert r.headers["location"] == "/services/podbay/pair?code=ABCD-EFGH"
        # Back there, the code the link carried is not offered for approval.
        r = client.get(r.headers["location"], headers={**nav, "Sec-Fetch-Site": "same-origin"})
        assert "id='sent'" in r.text and 'id="approve"' not in r.text


def test_a_code_is_offered_for_approval_only_once_the_person_typed_it():
    """A page of any site (a workspace's on the hub's origin too), a link in a mail, or the
    login coming back may carry a code: none is offered for approval (one click, or a double
    click timed over the button, would approve another's). The person types the code their
    own terminal shows into the page's own form (its token)."""
    session = BrowserSession(FakeOAuth(), b"k" * 32, "/services/podbay/")
    router = pairing_router("/services/podbay/", HubAPI("http://127.0.0.1:9/hub/api", token="service-token"), 3600, session)
    nav = {"Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"}
    with TestClient(app_of(router), client=("127.0.0.1", 50000), follow_redirects=False) as client:
        code = client.post("/services/podbay/api/v1/pairings", json={}).json()["user_code"]
        client.cookies.set(SESSION_COOKIE, session.cookie_value("oauth-token"), path="/services/podbay/")
        for site in ("none", "same-origin", "cross-site", "same-site"):
            r = client.get("/services/podbay/pair", params={"code": code}, headers={**nav, "Sec-Fetch-Site": site})
            assert r.status_code == 200 and "id='sent'" in r.text and 'name="csrf"' not in r.text, site
            assert code not in r.text
        entry = re.search(r'name="entry" value="([0-9a-f]+)"', client.get(
            "/services/podbay/pair", headers={**nav, "Sec-Fetch-Site": "none"}).text).group(1)
        r = client.get("/services/podbay/pair", params={"code": code.lower().replace("-", " "), "entry": entry},
                       headers={**nav, "Sec-Fetch-Site": "same-origin", "Sec-Fetch-User": "?1"})
        assert 'id="approve"' in r.text and code in r.text
        r = client.get("/services/podbay/pair", params={"code": code, "entry": "0" * 64},
                       headers={**nav, "Sec-Fetch-Site": "same-origin"})
        assert 'id="approve"' not in r.text


def test_where_other_peoples_workspaces_share_the_origin_approval_is_off():
    session = BrowserSession(FakeOAuth(), b"k" * 32, "/services/podbay/", exposed=True)
    router = pairing_router("/services/podbay/", HubAPI("http://127.0.0.1:9/hub/api", token="service-token"), 3600, session)
    nav = {"Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document", "Sec-Fetch-Site": "none"}
    with TestClient(app_of(router), client=("127.0.0.1", 50000), follow_redirects=False) as client:
        client.cookies.set(SESSION_COOKIE, session.cookie_value("oauth-token"), path="/services/podbay/")
        r = client.get("/services/podbay/pair", headers=nav)
        assert r.status_code == 403 and "podbay login --paste" in r.text and "subdomain_host" in r.text
        r = client.post("/services/podbay/pair", content="code=ABCD-EFGH&csrf=x&action=approve",
                        headers={**nav, "Sec-Fetch-Site": "same-origin", "Sec-Fetch-User": "?1"})
        assert r.status_code == 403 and "id='off'" in r.text
        # The command line is told at once, and pastes a token instead of waiting.
        r = client.post("/services/podbay/api/v1/pairings", json={})
        assert r.status_code == 404 and r.json()["error"] == "not_here"


def test_who_shares_the_pages_origin():
    """JupyterHub's JUPYTERHUB_HOST is public_url's host where one is set: only the hub's
    configuration knows subdomain_host, and passes it on (PODBAY_SUBDOMAIN_HOST)."""
    from podbay.hub.browser import shares_origin

    assert shares_origin({}, isolates_users=True)
    assert shares_origin({"JUPYTERHUB_HOST": "https://hub.example.org"}, isolates_users=True), "public_url only"
    assert not shares_origin({"PODBAY_SUBDOMAIN_HOST": "https://hub.example.org"}, isolates_users=True)
    assert not shares_origin({"PODBAY_SHARED_ORIGIN": "accept"}, isolates_users=True)
    assert not shares_origin({}, isolates_users=False), "the local backend keeps nobody apart anyway"


def test_forwarded_addresses_are_walked_past_every_trusted_proxy():
    """A front proxy (the chart's autohttps, an ingress) before the hub's: the caller is the
    first address, from the right, that no trusted proxy has."""
    router = pairing_router("/services/podbay/", HubAPI("http://127.0.0.1:9/hub/api", token="service-token"), 3600,
                            proxies=TrustedProxies.parse("127.0.0.1, 10.0.0.0/24"))
    with TestClient(app_of(router), client=("127.0.0.1", 50000)) as proxy:
        for sent in ("203.0.113.9, 10.0.0.7", "1.2.3.4, 203.0.113.9, 10.0.0.7"):
            made = proxy.post("/services/podbay/api/v1/pairings", json={}, headers={"X-Forwarded-For": sent}).json()
            assert router.pairings.by_device(made["device_code"]).address == "203.0.113.9", sent


def test_a_second_session_cookie_or_a_strange_one_is_no_session():
    """A workspace's script can set a cookie of the same name for the whole origin (path=/),
    which the browser sends too: a request with two is no session, and the login clears the
    wider one. Non-ASCII values are refusals, never a 500."""
    session = BrowserSession(FakeOAuth(), b"k" * 32, "/services/podbay/")
    router = pairing_router("/services/podbay/", HubAPI("http://127.0.0.1:9/hub/api", token="service-token"), 3600, session)
    nav = {"Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document", "Sec-Fetch-Site": "none"}
    good = session.cookie_value("oauth-token")
    with TestClient(app_of(router), client=("127.0.0.1", 50000), follow_redirects=False) as client:
        r = client.get("/services/podbay/pair", headers={**nav, "Cookie": f"{SESSION_COOKIE}={good}"})
        assert r.status_code == 200
        r = client.get("/services/podbay/pair",
                       headers={**nav, "Cookie": f"{SESSION_COOKIE}={good}; {SESSION_COOKIE}={session.cookie_value('bobs')}"})
        assert r.status_code == 302
        assert any(h.startswith(f'{SESSION_COOKIE}=""') and "Path=/" in h.split(";", 1)[1].replace(" path", " Path")
                   for h in r.headers.get_list("set-cookie")), r.headers.get_list("set-cookie")
        for strange in ("tok\u00e9n.ab\u00e7", "x.\u00ff"):
            r = client.get("/services/podbay/pair", headers={**nav, "Cookie": f"{SESSION_COOKIE}={strange}".encode()})
            assert r.status_code == 302
        r = client.post("/services/podbay/pair", content="code=\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9&csrf=\u00e9&action=approve".encode(),
                        headers={**nav, "Sec-Fetch-Site": "same-origin", "Sec-Fetch-User": "?1",
                                 "Cookie": f"{SESSION_COOKIE}={good}", "Content-Type": "application/x-www-form-urlencoded"})
        assert r.status_code == 400


def test_the_origin_is_the_proxys_entry_and_one_address_cannot_fill_the_table(service):
    client, pairings = service
    forged = client.post("/services/podbay/api/v1/pairings", json={"host": "laptop"},
                         headers={"X-Forwarded-For": "10.1.2.3 (alice's desk), 192.0.2.7"}).json()
    assert pairings.by_device(forged["device_code"]).address == "192.0.2.7"
    for _ in range(9):
        assert client.post("/services/podbay/api/v1/pairings", json={},
                           headers={"X-Forwarded-For": "192.0.2.7"}).status_code == 201
    r = client.post("/services/podbay/api/v1/pairings", json={}, headers={"X-Forwarded-For": "192.0.2.7"})
    assert r.status_code == 503 and "10 logins from 192.0.2.7 are under way" in r.json()["message"]
    assert client.post("/services/podbay/api/v1/pairings", json={},
                       headers={"X-Forwarded-For": "192.0.2.8"}).status_code == 201
