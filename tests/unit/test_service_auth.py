"""Who is calling podbay's service: JupyterHub's HubAuth resolves the token, and scopes are
matched the way JupyterHub matches them (filters included)."""

from __future__ import annotations

import asyncio
import socket

import pytest

from podbay.hub.service import ACCESS_SCOPE, Caller, HubClient
from podbay.hub.service.errors import ApiError

from tests.standins.json_server import serve_json


@pytest.mark.parametrize("scopes, reaches", [
    ({"access:servers"}, True),
    ({"access:servers!user=alice"}, True),
    ({"access:servers!user=bob"}, False),
    # A workspace's own token: that one server, not every one of hers.
    ({"access:servers!server=alice/train"}, False),
    ({ACCESS_SCOPE, "read:users:name!user=alice"}, False),
])
def test_reaching_every_workspace_is_checked_with_jupyterhubs_filters(scopes, reaches):
    assert Caller("alice", False, (), scopes=frozenset(scopes)).reaches_all_workspaces() is reaches


def test_a_hub_that_is_down_is_a_503_that_says_so():
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    hub = HubClient(f"http://127.0.0.1:{port}/hub/api", "service-token")
    with pytest.raises(ApiError) as e:
        asyncio.run(hub.resolve("some-token"))
    assert e.value.status == 503 and "not reachable" in e.value.message


def test_the_access_scope_is_the_hubs_when_it_names_one(monkeypatch):
    monkeypatch.delenv("JUPYTERHUB_OAUTH_ACCESS_SCOPES", raising=False)
    monkeypatch.delenv("JUPYTERHUB_SERVICE_NAME", raising=False)
    assert HubClient("http://127.0.0.1:1/hub/api", "t").auth.access_scopes == {ACCESS_SCOPE}
    monkeypatch.setenv("JUPYTERHUB_OAUTH_ACCESS_SCOPES", '["access:services!service=gpu-portal"]')
    assert HubClient("http://127.0.0.1:1/hub/api", "t").auth.access_scopes == {"access:services!service=gpu-portal"}


def test_a_caller_is_kept_a_while_and_a_revoked_token_is_forgotten():
    """One token, many requests: the hub is asked once per ttl; `forget` (podbay logout's
    revoke) makes the next request ask again."""
    asked, valid = [], {"good"}

    def answer(path, headers):
        asked.append(path.split("?")[0])
        token = headers.get("authorization", "").split()[-1]
        if path.startswith("/hub/api/users"):
            return 200, {"name": "alice", "admin": False, "groups": ["vision"]}
        if token in valid:
            return 200, {"name": "alice", "kind": "user", "scopes": [ACCESS_SCOPE]}
        return 403, {}

    with serve_json(answer) as url:
        hub = HubClient(f"{url}/hub/api", "service-token", ttl=300)

        async def go():
            first = [await hub.resolve("good") for _ in range(3)]
            n = len(asked)
            valid.clear()           # revoked at the hub…
            kept = await hub.resolve("good")
            hub.forget("good")      # …and forgotten here, as the revoke route does
            return first, n, kept, await hub.resolve("good")

        first, n, kept, after = asyncio.run(go())
        assert all(c and c.name == "alice" and c.groups == ("vision",) for c in first)
        assert n == 2  # one /user, one /users/alice for three requests
        assert kept is not None and after is None
