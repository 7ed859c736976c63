"""Login through a real OpenID Connect provider (tests/idp: panva's certified oidc-provider on
the loopback, with its own sign-in form), a real hub and a real browser: the provider's
groups decide who gets in, which team a person is in and who is an admin, and a group taken
away at the provider takes effect at the next login. Bad settings stop the hub at start with
one sentence; a login that goes wrong says why and makes no user."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from tests.harness import environ_of, free_port_block, have_proxy, http_client, Hub, require, ROOT, TEST_CONFIG

IDP = ROOT / "tests" / "idp"
SECRET = "hub-secret-0123456789"
ALICE = {"sub": "u-alice", "username": "alice", "password": "alice-pw", "email": "alice@example.org",
         "groups": ["gpu-users", "/ai/vision"]}
BOB = {"sub": "u-bob", "username": "bob", "password": "bob-pw", "groups": ["students"]}
CAROL = {"sub": "u-carol", "username": "carol", "password": "carol-pw", "groups": ["podbay-admins"]}
# A provider with no groups mapper for her: no groups claim at all.
DAVE = {"sub": "u-dave", "username": "dave", "password": "dave-pw"}

pytestmark = pytest.mark.hub


@contextlib.contextmanager
def identity_provider(state: Path, redirect_uris: list[str], users: list[dict]):
    """The provider in a process of its own; yields its issuer URL."""
    node = shutil.which("node")
    require(node is not None and (IDP / "node_modules" / "oidc-provider").is_dir(),
            "the test identity provider is not installed (npm ci --prefix tests/idp)")
    config = state / "idp.json"
    config.write_text(json.dumps({"clients": [{"client_id": "podbay", "client_secret": SECRET,
                                               "redirect_uris": redirect_uris}], "users": users}))
    with (state / "idp.log").open("wb") as log:
        proc = subprocess.Popen([node, str(IDP / "idp.mjs"), "--port", "0", "--config", str(config)],
                                stdout=subprocess.PIPE, stderr=log)
    try:
        for line in proc.stdout:
            if line.startswith(b"ready "):
                break
        else:
            raise AssertionError((state / "idp.log").read_text())
        yield line.decode().split()[1]
    finally:
        proc.terminate()
        proc.wait(10)
        proc.stdout.close()


def podbay_yaml(path: Path, issuer: str, **auth) -> Path:
    cfg = yaml.safe_load(TEST_CONFIG.read_text())
    # Teams by the provider's groups only: names there need not be the teams'.
    cfg["teams"]["vision"].update(members=[], idp_groups=["/ai/vision"])
    cfg["teams"]["nlp"].update(members=[], idp_groups=["/ai/nlp"])
    cfg["admins"] = []
    cfg["auth"] = {"type": "oidc", "issuer": issuer, "client_id": "podbay", "client_secret_env": "PODBAY_OIDC_SECRET",
                   "scopes": ["openid", "profile", "email", "groups"], "allowed_groups": ["gpu-users"],
                   "admin_groups": ["podbay-admins"], "pass_access_token": True, **auth}
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def sso(tmp_path_factory):
    require(have_proxy(), "configurable-http-proxy is not installed")
    state = tmp_path_factory.mktemp("sso")
    port = free_port_block()
    wrong_port = free_port_block()
    callbacks = [f"http://127.0.0.1:{p}/hub/oauth_callback" for p in (port, wrong_port)]
    with identity_provider(state, callbacks, [ALICE, BOB, CAROL, DAVE]) as issuer:
        hub = Hub(podbay_yaml(state / "podbay.yaml", issuer), state / "hub", port,
                  extra_env={"PODBAY_OIDC_SECRET": SECRET})
        hub.data_dir.mkdir()
        hub.start()
        try:
            yield hub, issuer, wrong_port, state
        finally:
            hub.stop()


def login(browser, hub: Hub, username: str, password: str):
    """A fresh browser session through the provider's sign-in form; returns its page."""
    page = browser.new_context().new_page()
    page.goto(f"{hub.url}/hub/oauth_login")
    page.wait_for_selector("#username")
    assert "/interaction/" in page.url, "sent to the provider"
    page.fill("#username", username)
    page.fill("#password", password)
    page.click("#submit")
    page.wait_for_load_state()
    return page


def user_model(hub: Hub, name: str) -> dict | None:
    with http_client(base_url=f"{hub.url}/hub/api", headers={"Authorization": f"token {hub.token('carol')}"}) as api:
        r = api.get(f"/users/{name}")
    return r.json() if r.status_code == 200 else None


def test_the_providers_groups_decide_who_gets_in_their_team_and_who_is_an_admin(sso, browser):
    hub, issuer, _, _ = sso
    # carol first: in the admin group, so a JupyterHub admin (and the test's API token).
    page = login(browser, hub, "carol", "carol-pw")
    assert page.url.startswith(f"{hub.url}/hub/"), page.url
    page.context.close()
    assert user_model(hub, "carol")["admin"] is True

    # A wrong password is the provider's to refuse.
    page = browser.new_context().new_page()
    page.goto(f"{hub.url}/hub/oauth_login")
    page.fill("#username", "alice")
    page.fill("#password", "guess")
    page.click("#submit")
    assert page.inner_text("#error") == "Invalid username or password."
    page.context.close()

    page = login(browser, hub, "alice", "alice-pw")
    page.goto(f"{hub.url}/hub/spawn/alice/w1")
    quota = page.inner_text("#podbay-quota")
    assert "Team vision" in quota, quota
    page.context.close()
    alice = user_model(hub, "alice")
    assert set(alice["groups"]) == {"gpu-users", "/ai/vision"} and alice["admin"] is False
    # Her workspace gets the provider's access token (pass_access_token), which the provider takes.
    assert hub.start_server("alice", "data", {"profile": "cpu"}).status_code in (201, 202)
    token = environ_of(hub.workspace_pid("alice", "data"))["OAUTH_ACCESS_TOKEN"]
    me = httpx.get(f"{issuer}/me", headers={"Authorization": f"Bearer {token}"})
    assert me.status_code == 200 and me.json()["preferred_username"] == "alice", me.text

    # bob is in no allowed group: a page that says so, and no account.
    page = login(browser, hub, "bob", "bob-pw")
    assert "not currently authorized" in page.content()
    page.context.close()
    assert user_model(hub, "bob") is None

    # Taken out of the group at the provider: no longer in the team at the next login.
    httpx.post(f"{issuer}/test/users", json=[{**ALICE, "groups": ["gpu-users"]}, BOB, CAROL, DAVE]).raise_for_status()
    page = login(browser, hub, "alice", "alice-pw")
    page.goto(f"{hub.url}/hub/spawn/alice/w1")
    assert "You are in no team" in page.inner_text("#podbay-quota")
    page.context.close()
    assert user_model(hub, "alice")["groups"] == ["gpu-users"]
    # The workspace she started in the team keeps it until it stops.
    book = hub.book()
    try:
        assert book.get("workspace:alice/data").team == "vision"
    finally:
        book.dispose()
    assert environ_of(hub.workspace_pid("alice", "data"))["PODBAY_TEAM"] == "vision"
    hub.stop_server("alice", "data")


def test_a_login_that_goes_wrong_says_why_and_makes_no_user(sso, browser):
    hub, issuer, wrong_port, state = sso
    # The provider sends no groups claim for dave: nobody can tell his teams.
    page = login(browser, hub, "dave", "dave-pw")
    assert "sent no &#39;groups&#39; claim" in page.content() or "sent no 'groups' claim" in page.inner_text("body")
    page.context.close()
    assert user_model(hub, "dave") is None

    # A state that is not the one this browser was given.
    page = browser.new_context().new_page()
    page.goto(f"{hub.url}/hub/oauth_login")
    page.wait_for_selector("#username")
    r = page.goto(f"{hub.url}/hub/oauth_callback?code=forged&state=forged")
    assert r.status == 400 and "OAuth state mismatch" in page.inner_text("body")
    page.context.close()

    # A hub whose client secret the provider refuses.
    wrong = Hub(podbay_yaml(state / "wrong.yaml", issuer), state / "wrong", wrong_port,
                extra_env={"PODBAY_OIDC_SECRET": "not-the-secret"})
    wrong.data_dir.mkdir()
    wrong.start()
    try:
        page = login(browser, wrong, "alice", "alice-pw")
        text = page.inner_text("body")
        assert "refused podbay's client credentials (invalid_client)" in text, text
        page.context.close()
    finally:
        wrong.stop()


# An operator's own jupyterhub_config.py: podbay's configure(c), then a login of their own
# that manages groups, as Zero to JupyterHub's hub.config writes it (issue 29).
OPERATORS_LOGIN = """from podbay.hub.hubconfig import configure

configure(c)
c.JupyterHub.authenticator_class = "generic-oauth"
g = c.GenericOAuthenticator
g.client_id, g.client_secret = "podbay", {secret!r}
g.oauth_callback_url = "{hub}/hub/oauth_callback"
g.authorize_url, g.token_url, g.userdata_url = "{issuer}/auth", "{issuer}/token", "{issuer}/me"
g.scope = ["openid", "profile", "groups"]
g.username_claim = "preferred_username"
g.allowed_groups = {{"gpu-users", "students"}}
g.manage_groups = True
g.auth_state_groups_key = "oauth_user.groups"
"""


def test_an_authenticator_of_the_operators_own_that_manages_groups_maps_them_to_teams(tmp_path, browser):
    """Its groups are the hub's (JupyterHub refuses to start with podbay's teams loaded as
    groups beside them); teams follow them through idp_groups, as with auth: oidc, and
    podbay.yaml's members still count."""
    require(have_proxy(), "configurable-http-proxy is not installed")
    port = free_port_block()
    with identity_provider(tmp_path, [f"http://127.0.0.1:{port}/hub/oauth_callback"], [ALICE, BOB]) as issuer:
        cfg = yaml.safe_load(TEST_CONFIG.read_text())
        cfg["teams"]["vision"].update(members=[], idp_groups=["/ai/vision"])  # bob stays nlp's member
        (tmp_path / "podbay.yaml").write_text(yaml.safe_dump(cfg))
        hub = Hub(tmp_path / "podbay.yaml", tmp_path / "hub", port, extra_env={"PODBAY_DEMO_PASSWORD": ""})
        hub.data_dir.mkdir()
        (hub.data_dir / "jupyterhub_config.py").write_text(
            OPERATORS_LOGIN.format(secret=SECRET, hub=hub.url, issuer=issuer))
        hub.start(own_config=True)
        try:
            for name, password, team in (("alice", "alice-pw", "vision"), ("bob", "bob-pw", "nlp")):
                page = login(browser, hub, name, password)
                page.goto(f"{hub.url}/hub/spawn/{name}/w1")
                assert f"Team {team}" in page.inner_text("#podbay-quota")
                page.context.close()
            with hub.api("admin") as api:
                assert set(api.get("/users/alice").json()["groups"]) == {"gpu-users", "/ai/vision"}
                assert {g["name"] for g in api.get("/groups").json()} == {"gpu-users", "/ai/vision", "students"}
        finally:
            hub.stop()


def hub_config_error(tmp_path, monkeypatch, capsys, cfg: Path, **env) -> str:
    from traitlets.config import Config

    from podbay.hub.hubconfig import configure

    # configure() puts a crypt key of the hub's own into the environment: this test's only.
    monkeypatch.setenv("JUPYTERHUB_CRYPT_KEY", "test-key")
    for k, v in {"PODBAY_CONFIG": str(cfg), "PODBAY_DATA_DIR": str(tmp_path / "data"), **env}.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(SystemExit):
        configure(Config())
    return capsys.readouterr().err


def test_bad_login_settings_stop_the_hub_with_one_sentence(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("PODBAY_OIDC_SECRET", raising=False)
    monkeypatch.delenv("PODBAY_DEMO_PASSWORD", raising=False)
    # Nothing listens there.
    dead = f"http://127.0.0.1:{free_port_block(1)}"
    err = hub_config_error(tmp_path, monkeypatch, capsys, podbay_yaml(tmp_path / "a.yaml", dead),
                           PODBAY_OIDC_SECRET=SECRET)
    assert f"refusing to start: the identity provider at {dead} does not answer" in err, err
    monkeypatch.delenv("PODBAY_OIDC_SECRET")
    err = hub_config_error(tmp_path, monkeypatch, capsys, podbay_yaml(tmp_path / "b.yaml", dead))
    assert "the environment variable PODBAY_OIDC_SECRET (auth.client_secret_env) is not set" in err, err
    monkeypatch.delenv("PODBAY_OIDC_SECRET", raising=False)
    with identity_provider(tmp_path, ["http://127.0.0.1:9/hub/oauth_callback"], []) as issuer:
        err = hub_config_error(tmp_path, monkeypatch, capsys,
                               podbay_yaml(tmp_path / "c.yaml", issuer + "/realms/ai"), PODBAY_OIDC_SECRET=SECRET)
        assert f"the identity provider answered 404 for {issuer}/realms/ai/.well-known/openid-configuration" in err
        err = hub_config_error(tmp_path, monkeypatch, capsys,
                               podbay_yaml(tmp_path / "c.yaml", issuer.replace("127.0.0.1", "localhost")))
        assert "auth.issuer must be exactly the provider's issuer" in err, err
        cfg = podbay_yaml(tmp_path / "d.yaml", issuer, allowed_groups=[], admin_groups=[])
        data = yaml.safe_load(cfg.read_text())
        for team in data["teams"].values():
            team["idp_groups"] = []
        cfg.write_text(yaml.safe_dump(data))
        err = hub_config_error(tmp_path, monkeypatch, capsys, cfg, PODBAY_OIDC_SECRET=SECRET)
        assert "nobody could log in" in err, err
    # The demo's one password never beyond the loopback.
    err = hub_config_error(tmp_path, monkeypatch, capsys, TEST_CONFIG, PODBAY_DEMO_PASSWORD="pw",
                           PODBAY_IP="0.0.0.0", PODBAY_BACKEND="docker")
    assert "the demo login (one shared password, PODBAY_DEMO_PASSWORD) is for `podbay up` on the loopback only" in err


def test_config_check_knows_the_auth_section(tmp_path):
    cfg = yaml.safe_load(TEST_CONFIG.read_text())
    path = tmp_path / "podbay.yaml"

    def check(auth: dict) -> str:
        path.write_text(yaml.safe_dump({**cfg, "auth": auth}))
        run = subprocess.run([sys.executable, "-m", "podbay.hub.cli", "config", "check", str(path)],
                             capture_output=True, text=True)
        assert run.returncode == 1, run.stdout
        return run.stderr

    # The secret itself never in the file.
    assert "auth.client_secret: unknown key" in check({"type": "oidc", "client_id": "podbay", "client_secret": "s3"})
    assert "auth type oidc needs issuer" in check({"type": "oidc", "client_id": "podbay", "client_secret_env": "S"})
    assert "give the client secret's place as one of client_secret_env" in check(
        {"type": "oidc", "issuer": "https://id.example", "client_id": "podbay"})
    assert "auth.client_secret_env" in check({"type": "oidc", "issuer": "https://id.example", "client_id": "podbay",
                                              "client_secret_env": "not a name"})


def test_the_other_providers_are_oauthenticators_own_with_options_passed_through(tmp_path, monkeypatch):
    from traitlets.config import Config

    from podbay.hub.hubconfig import configure

    cfg = yaml.safe_load(TEST_CONFIG.read_text())
    cfg["auth"] = {"type": "github", "client_id": "Iv1.podbay", "client_secret_env": "PODBAY_OIDC_SECRET",
                   "options": {"allowed_organizations": ["example-ai"]}}
    (tmp_path / "podbay.yaml").write_text(yaml.safe_dump(cfg))
    for k, v in {"PODBAY_CONFIG": str(tmp_path / "podbay.yaml"), "PODBAY_DATA_DIR": str(tmp_path / "data"),
                 "PODBAY_OIDC_SECRET": SECRET}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("PODBAY_DEMO_PASSWORD", raising=False)
    monkeypatch.setenv("JUPYTERHUB_CRYPT_KEY", "test-key")
    c = Config()
    configure(c)
    gh = c.GitHubOAuthenticator
    assert c.JupyterHub.authenticator_class == "github"
    assert (gh.client_id, gh.client_secret, gh.allowed_organizations) == ("Iv1.podbay", SECRET, ["example-ai"])
    assert gh.oauth_callback_url == f"http://127.0.0.1:{c.JupyterHub.bind_url.rsplit(':', 1)[1]}/hub/oauth_callback"
    # Teams from podbay.yaml's members, as groups (GitHub's teams are not podbay's).
    assert c.JupyterHub.load_groups["vision"] == {"users": ["alice"]}
    from jupyterhub.app import JupyterHub

    assert JupyterHub(config=c).load_groups["vision"] == {"users": ["alice"]}
    # Unless the operator's config has the authenticator manage groups, after configure(c):
    # JupyterHub loads none then (it refuses to start with load_groups beside it).
    gh.manage_groups = True
    assert JupyterHub(config=c).load_groups == {}
