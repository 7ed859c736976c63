"""The client's HTTP: what carries its requests (tui/client.py)."""

from __future__ import annotations

import os

import httpcore
import httpx

from podbay.tui.client import PodbayClient

PORTAL = httpx.URL("https://portal.example.org/hub/api/user")


def transport(monkeypatch, **proxies):
    """What carries a request to the portal with only these proxy variables set."""
    for name in list(os.environ):
        if name.lower().endswith("_proxy"):
            monkeypatch.delenv(name)
    for name, value in proxies.items():
        monkeypatch.setenv(name, value)
    return PodbayClient("https://portal.example.org", "t").http._transport_for_url(PORTAL)


def test_the_client_goes_through_the_proxy_the_environment_names(monkeypatch):
    """A proxy in the environment carries the portal's requests, as for any httpx client;
    without one, https goes through a transport of its own (made at its first request)."""
    assert type(transport(monkeypatch)).__name__ == "_TLSOnFirstUse"
    for variable in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY"):
        proxied = transport(monkeypatch, **{variable: "http://proxy.example.org:3128"})
        assert isinstance(proxied._pool, httpcore.AsyncHTTPProxy), variable
    # Variables httpx does not read leave the quick transports: NO_PROXY alone, another
    # program's proxy, a proxy that NO_PROXY=* turns off.
    for unused in ({"NO_PROXY": "portal.example.org"}, {"ftp_proxy": "http://proxy.example.org:21"},
                   {"HTTPS_PROXY": "http://proxy.example.org:3128", "NO_PROXY": "*"}):
        assert type(transport(monkeypatch, **unused)).__name__ == "_TLSOnFirstUse", unused
