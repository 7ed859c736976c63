"""`podbay login`'s pairings (hub/pairing.py): codes a person can read out, single use,
expiring; the service's endpoints without a hub behind them."""

from __future__ import annotations

import re

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from podbay.hub.pairing import Pairings, normalize, pairing_router


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


@pytest.fixture
def service():
    router = pairing_router("/services/podbay/", "http://127.0.0.1:9/hub/api", "service-token", 3600)
    app = FastAPI()
    app.include_router(router)
    with TestClient(app) as client:
        yield client, router.pairings


def test_the_cli_polls_until_approved_and_gets_the_token_once(service):
    client, pairings = service
    started = client.post("/services/podbay/api/v1/pairings", json={"host": "laptop"}).json()
    assert started["verification_path"] == f"/services/podbay/pair?code={started['user_code']}"
    poll = {"device_code": started["device_code"]}
    r = client.post("/services/podbay/api/v1/pairings/token", json=poll)
    assert (r.status_code, r.json()["error"]) == (400, "authorization_pending")
    # What an approval leaves (hub/pairing.py's pair_decide, tested end to end in test_tmux).
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
    r = client.get("/services/podbay/pair", params={"code": "ABCD-EFGH"})
    assert r.status_code == 403 and "opened in a browser tab" in r.text
    assert r.headers["content-security-policy"] == "frame-ancestors 'none'" and r.headers["cache-control"] == "no-store"
    r = client.post("/services/podbay/pair", content="code=ABCD-EFGH&action=approve",
                    headers={"Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"})
    assert r.status_code == 403, "approving needs the person's own click (Sec-Fetch-User)"


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
