"""The client's HTTP: what carries its requests (tui/client.py)."""

from __future__ import annotations

import httpcore
import httpx

from podbay.tui.client import PodbayClient

PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


def test_the_client_goes_through_the_proxy_the_environment_names(monkeypatch):
    """A proxy in the environment carries the portal's requests, as for any httpx client;
    without one, https still goes through a transport of its own (made at its first request)."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    portal = httpx.URL("https://portal.example.org/hub/api/user")
    direct = PodbayClient("https://portal.example.org", "t").http._transport_for_url(portal)
    assert not isinstance(getattr(direct, "_pool", None), httpcore.AsyncHTTPProxy)
    assert type(direct).__name__ == "_TLSOnFirstUse"

    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example.org:3128")
    proxied = PodbayClient("https://portal.example.org", "t").http._transport_for_url(portal)
    assert isinstance(proxied._pool, httpcore.AsyncHTTPProxy)
    # NO_PROXY alone names no proxy: the quick transports stay.
    monkeypatch.delenv("HTTPS_PROXY")
    monkeypatch.setenv("NO_PROXY", "portal.example.org")
    assert type(PodbayClient("https://portal.example.org", "t").http._transport_for_url(portal)).__name__ == \
        "_TLSOnFirstUse"
