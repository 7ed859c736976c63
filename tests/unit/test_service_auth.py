"""Who is calling podbay's service: JupyterHub's HubAuth resolves the token, and scopes are
matched the way JupyterHub matches them (filters included)."""

from __future__ import annotations

import asyncio
import socket

import pytest

from podbay.hub.service import ACCESS_SCOPE, Caller, HubClient
from podbay.hub.service.errors import ApiError


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
