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


def test_a_caller_is_kept_a_while_and_a_revoked_token_is_forgotten():
    """One token, many requests: the hub is asked once per ttl; `forget` (podbay logout's
    revoke) makes the next request ask again."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    asked, valid = [], {"good"}

    class Hub(BaseHTTPRequestHandler):
        def do_GET(self):
            asked.append(self.path.split("?")[0])
            token = self.headers.get("authorization", "").split()[-1]
            if self.path.startswith("/hub/api/user") and not self.path.startswith("/hub/api/users"):
                body, status = ({"name": "alice", "kind": "user", "scopes": [ACCESS_SCOPE]}, 200) \
                    if token in valid else ({}, 403)
            else:
                body, status = {"name": "alice", "admin": False, "groups": ["vision"]}, 200
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        hub = HubClient(f"http://127.0.0.1:{server.server_address[1]}/hub/api", "service-token", ttl=300)

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
    finally:
        server.shutdown()
