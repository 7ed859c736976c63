"""The client's HTTP: what carries its requests (tui/client.py)."""

from __future__ import annotations

import asyncio
import contextlib
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


async def _connections_for_two_requests(make_client, idle: float) -> int:
    """How many connections a client opens for two requests `idle` seconds apart, to a
    server that, like configurable-http-proxy, keeps connections open between requests."""
    opened = 0

    async def serve(reader, writer):
        nonlocal opened
        opened += 1
        while await reader.readuntil(b"\r\n\r\n"):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok")
            await writer.drain()

    async def quietly(reader, writer):
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            await serve(reader, writer)
        writer.close()

    server = await asyncio.start_server(quietly, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    async with server:
        http = make_client(url)
        assert (await http.get(f"{url}/a")).status_code == 200
        await asyncio.sleep(idle)
        assert (await http.get(f"{url}/b")).status_code == 200
        await http.aclose()
    return opened


def test_an_idle_connection_is_not_reused_as_the_proxy_closes_it(monkeypatch):
    """configurable-http-proxy closes a connection idle for 5 s; a request sent on it at that
    moment fails. The clients keep one under that (2 s), with or without a proxy named in
    the environment (httpx's own transports then), and HubAPI's own client too."""
    from podbay.tui.hubapi import HubAPI

    async def check():
        for proxies in ({}, {"HTTP_PROXY": "http://proxy.example.org:3128", "NO_PROXY": "127.0.0.1"}):
            for name in list(os.environ):
                if name.lower().endswith("_proxy"):
                    monkeypatch.delenv(name)
            for name, value in proxies.items():
                monkeypatch.setenv(name, value)
            # A client that reuses a connection at all (else the check below proves nothing).
            assert await _connections_for_two_requests(lambda url: PodbayClient(url, "t").http, 0) == 1
            assert await _connections_for_two_requests(lambda url: PodbayClient(url, "t").http, 2.5) == 2, proxies
        assert await _connections_for_two_requests(lambda url: HubAPI(f"{url}/hub/api").http, 2.5) == 2

    asyncio.run(check())
