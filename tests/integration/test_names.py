"""Names that mean something in a URL (`#`, `?`, `/`) on a real hub: refused by default
(podbay's username_pattern), and where a deployment allows them, never read as another
person's name by the service (every hub URL is built from quoted segments)."""

from __future__ import annotations

import httpx
import pytest
import yaml

from tests.harness import http_client, hub_on, TEST_CONFIG

pytestmark = pytest.mark.hub

ODD = ["admin#x", "alice?x", "alice/../admin"]
# What JupyterHub itself allows when a deployment widens the pattern (it never allows "/").
WIDENED = ODD[:2]


def test_by_default_the_hub_makes_no_user_with_such_a_name(hub):
    with http_client(base_url=f"{hub.url}/hub/api", headers={"Authorization": f"token {hub.token('admin')}"},
                      timeout=60) as api:
        for name in ODD:
            r = api.post("/users", json={"usernames": [name]})
            assert r.status_code == 400 and "Invalid username" in r.text, (name, r.status_code, r.text[:200])
        assert api.post("/users", json={"usernames": ["carol.d-1@example.org"]}).status_code == 201


def test_the_hubs_own_pages_keep_no_opener(hub):
    """A workspace's page that opens the hub's token page (window.open) keeps no handle on it."""
    for path in ("/hub/login", "/hub/token"):
        assert httpx.get(f"{hub.url}{path}", timeout=30).headers["cross-origin-opener-policy"] == "noopener-allow-popups"


def test_where_a_deployment_allows_them_each_is_only_themselves(tmp_path):
    """`admin#x` would be read as `admin` (an admin of podbay: every job, log and usage) and
    `alice?x` as alice (her teams, quota and volumes) if a name reached the hub unquoted."""
    cfg = yaml.safe_load(TEST_CONFIG.read_text())
    cfg.setdefault("auth", {})["username_pattern"] = r"^.+$"
    cfg["teams"]["guests"] = {"members": WIDENED, "quota": {"gpu_units": 0, "workspaces_per_user": 1, "job_gpus": 0}}
    hub = hub_on(cfg, tmp_path, keep_workspaces=False)
    try:
        for name in WIDENED:
            with http_client(base_url=f"{hub.url}/services/podbay/api/v1", timeout=60,
                              headers={"Authorization": f"token {hub.token(name)}"}) as api:
                me = api.get("/me")
                assert me.status_code == 200, me.text
                assert (me.json()["name"], me.json()["admin"], me.json()["teams"]) == (name, False, ["guests"]), name
                # What only admins may see is refused them: another person's usage.
                assert api.get("/usage", params={"user": "alice"}).status_code == 403
    finally:
        hub.stop()
