"""`podbay login` without copying a token: the command line pairs with a browser session,
in the manner of OAuth's device authorization grant (RFC 8628).

1. The CLI asks for a pairing (`POST api/v1/pairings`, no credentials): it gets a secret
   device code, which it keeps, and a short user code, which it shows with a link.
2. A person opens the link in a browser, logs in to the hub as usual (through the identity
   provider), sees which computer asks, from where and when, what the token may do and for
   how long, and approves or refuses.
3. The CLI polls with its device code (`POST api/v1/pairings/token`) and, once approved,
   gets a token of the approving person, made by the hub with only the scopes the TUI and
   CLI need and the lifetime the operator set. It is handed out once.

Codes expire in minutes and are single-use; only a logged-in person can approve, and the
token is theirs. Pairings live in this service's memory: a restart of the service forgets
the ones under way (the CLI then says the code expired). `DELETE api/v1/session` revokes the
token it is called with (`podbay logout`).
"""

from __future__ import annotations

import html
import logging
import posixpath
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse

from ..browser import (
    PAGE_HEADERS,
    SESSION_COOKIE,
    STATE_COOKIE,
    BrowserSession,
    TrustedProxies,
    clear_tossed,
    cookie_once,
    https,
    navigation,
    no_metadata,
    not_a_tab,
    same,
)
from podbay.tui.hubapi import HubAPI

log = logging.getLogger("podbay.pairing")

# What a paired CLI/TUI may do: see the person's own servers, start and stop them, reach
# them (`podbay ssh` tunnels through the workspace's Jupyter server), and use podbay's
# service. Not: make tokens, act on other users, administer the hub.
CLI_SCOPES = ["read:users!user", "read:servers!user", "servers!user", "access:servers!user",
              "access:services!service=podbay"]
SCOPE_WORDS = {
    "read:users!user": "read your name and groups",
    "read:servers!user": "list your workspaces",
    "servers!user": "start and stop your workspaces",
    "access:servers!user": "reach your workspaces (podbay ssh)",
    "access:services!service=podbay": "use podbay's service (catalog, capacity, jobs)",
}
# Letters that cannot be mistaken for each other (no 0/O, 1/I/L, 5/S, 2/Z, 8/B).
ALPHABET = "ACDEFGHJKMNPQRTUVWXY"


def user_code() -> str:
    raw = "".join(secrets.choice(ALPHABET) for _ in range(8))
    return f"{raw[:4]}-{raw[4:]}"


def normalize(code: str) -> str:
    raw = "".join(c for c in code.upper() if c.isalnum())
    return f"{raw[:4]}-{raw[4:]}" if len(raw) == 8 else raw


@dataclass
class Pairing:
    device_code: str
    user_code: str
    host: str
    address: str
    agent: str
    created: float
    expires: float
    approved_by: str | None = None
    denied: bool = False
    token: dict[str, Any] | None = field(default=None, repr=False)
    taken: bool = False


class Pairings:
    """The pairings under way, by device code and by user code."""

    def __init__(self, ttl: float = 600, most: int = 1000, per_address: int = 10, clock=time.time):
        self.ttl, self.most, self.per_address, self.clock = ttl, most, per_address, clock
        self._by_device: dict[str, Pairing] = {}
        # Tokens made for an approval that no command line came for: revoked at the next chance.
        self.orphans: list[tuple[str, str]] = []

    def _sweep(self) -> None:
        now = self.clock()
        for key in [k for k, p in self._by_device.items() if p.expires < now - 60]:
            p = self._by_device.pop(key)
            if p.token is not None and not p.taken and p.token.get("token_id"):
                self.orphans.append((p.token["user"], p.token["token_id"]))

    def start(self, host: str, address: str, agent: str) -> Pairing:
        self._sweep()
        if len(self._by_device) >= self.most:
            raise OverflowError("too many logins under way; try again in a few minutes")
        mine = sum(1 for p in self._by_device.values() if p.address == address and self.live(p))
        if mine >= self.per_address:
            raise OverflowError(f"{mine} logins from {address} are under way already; finish or wait for them")
        now = self.clock()
        taken = {p.user_code for p in self._by_device.values()}
        code = user_code()
        while code in taken:
            code = user_code()
        p = Pairing(secrets.token_urlsafe(32), code, host[:100], address, agent[:200], now, now + self.ttl)
        self._by_device[p.device_code] = p
        return p

    def by_device(self, device_code: str) -> Pairing | None:
        return self._by_device.get(device_code)

    def by_user_code(self, code: str) -> Pairing | None:
        code = normalize(code)
        return next((p for p in self._by_device.values() if same(p.user_code, code)), None)

    def live(self, p: Pairing) -> bool:
        return not p.taken and not p.denied and p.expires >= self.clock()


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(headers=PAGE_HEADERS, content=f"""<!DOCTYPE html><html><head><meta charset="utf-8"><title>{html.escape(title)} · podbay</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{{font-family:system-ui,sans-serif;max-width:36rem;margin:3rem auto;padding:0 1rem;line-height:1.5}}
code{{font-size:1.3rem;letter-spacing:.1rem}} .origin{{background:#f4f7fb;padding:.75rem;border-radius:.3rem}}
button{{font-size:1rem;padding:.4rem 1rem;margin-right:.5rem}}</style></head>
<body><h1>{html.escape(title)}</h1>{body}</body></html>""", status_code=status)


def not_in_a_tab(request: Request) -> HTMLResponse:
    title = "Open this over HTTPS" if no_metadata(request) else "Open this in your browser"
    return _page(title, f"<p>{html.escape(not_a_tab(request))}</p>", 403)


def pairing_router(prefix: str, hub: HubAPI, lifetime: int,
                   session: BrowserSession | None = None, forget_token=None,
                   proxies: TrustedProxies | None = None) -> APIRouter:
    """The pairing endpoints under `prefix` (the service's URL prefix), making tokens through
    `hub` (the service's own, with the `tokens` scope). `session` is the
    browser's login to the hub (the service's OAuth; hub/browser.py); `forget_token` drops a
    revoked token from the service's cache of callers; `proxies` are the addresses whose
    X-Forwarded-For is believed."""
    router = APIRouter()
    pairings = Pairings()
    proxies = proxies or TrustedProxies.parse(None)
    oauth = session.oauth if session else None
    # Other people's workspaces share the pages' origin: approval in the browser is off.
    off = session is not None and session.exposed

    def csrf(request: Request, code: str) -> str:
        return session.page_token(request, "pair", code)

    @router.post(f"{prefix}api/v1/pairings", status_code=201, summary="Start logging in a command line",
                 tags=["login"])
    async def start(request: Request):
        if off:
            # The command line pastes a token instead of waiting for an approval that is off.
            return JSONResponse({"error": "not_here", "message": "approving a login in the browser is off on this "
                                 "portal (its workspaces share the hub's address): paste a token instead"},
                                status_code=404)
        try:
            body = await request.json()
        except ValueError:
            body = {}
        host = str((body if isinstance(body, dict) else {}).get("host") or "an unnamed computer")
        try:
            p = pairings.start(host, proxies.client(request), request.headers.get("user-agent", ""))
        except OverflowError as e:
            return JSONResponse({"error": "busy", "message": str(e)}, status_code=503)
        return {"device_code": p.device_code, "user_code": p.user_code,
                # Where to type the code: the link carries none (pair_page says why).
                "verification_path": f"{prefix}pair",
                "expires_in": int(p.expires - p.created), "interval": 2}

    @router.post(f"{prefix}api/v1/pairings/token", summary="The token of an approved pairing, once",
                 tags=["login"])
    async def token(request: Request):
        try:
            body = await request.json()
        except ValueError:
            body = {}
        device_code = str(body.get("device_code", "")) if isinstance(body, dict) else ""
        p = pairings.by_device(device_code)

        def refuse(error: str, message: str, status: int = 400):
            return JSONResponse({"error": error, "message": message}, status_code=status)

        if p is None or p.expires < pairings.clock():
            return refuse("expired_token", "this login code has expired: run `podbay login` again")
        if p.taken:
            return refuse("expired_token", "this login code was used already: run `podbay login` again")
        if p.denied:
            return refuse("access_denied", "the login was refused in the browser")
        if p.token is None:
            return refuse("authorization_pending", "waiting for the code to be approved in a browser")
        p.taken = True
        out, p.token = p.token, None
        return out

    async def person(request: Request) -> dict | None:
        return await session.user(request) if session else None

    def login(request: Request):
        if session is None or oauth is None:
            return _page("Not available", "<p>Logging in a command line needs the hub's login (JupyterHub "
                                          "OAuth): tell the platform team.</p>", 503)
        return session.login_redirect(request)

    @router.get(f"{prefix}oauth_callback", include_in_schema=False)
    async def oauth_callback(request: Request, code: str = "", state: str = ""):
        saved, _, target = cookie_once(request, STATE_COOKIE).partition("|")
        if not code or not saved or not same(saved, state):
            r = _page("Login failed", "<p>The login did not come back as it left (an old or forged link). "
                                      f"<a href='{html.escape(prefix)}pair'>Start again</a>.</p>", 400)
            clear_tossed(r, request, STATE_COOKIE)
            return r
        if session is None or oauth is None:
            return login(request)
        token = await oauth.token_for_code(code, sync=False)
        r = RedirectResponse(own_page(target), status_code=302)
        # The one token a session may hold: the one the hub just issued to this service's
        # OAuth client, signed, so no other token of the person's can be set as one.
        r.set_cookie(SESSION_COOKIE, session.cookie_value(token), httponly=True, samesite="lax", path=prefix,
                     secure=https(request))
        r.delete_cookie(STATE_COOKIE, path=prefix)
        return r

    def own_page(target: str) -> str:
        """Where a login comes back to: one of this service's own pages, never another path of
        the hub's origin (`…/podbay/../../user/bob/`) or another host (`//evil`, `/\\evil`)."""
        parts = urlsplit(target)
        path = posixpath.normpath(parts.path) + ("/" if parts.path.endswith("/") else "")
        # No escapes in the path: a browser reads %2e%2e as "..".
        if (parts.scheme or parts.netloc or "\\" in target or "%" in parts.path or path.startswith("//")
                or not path.startswith(prefix)):
            return f"{prefix}pair"
        return path + (f"?{parts.query}" if parts.query else "")

    async def revoke_orphans() -> None:
        while pairings.orphans:
            user, token_id = pairings.orphans.pop()
            try:
                await hub.delete_token(user, token_id)
            except httpx.HTTPError:
                log.warning("could not revoke the uncollected login token %s of %s", token_id, user)

    def describe(p: Pairing) -> str:
        minutes = max(0, int((pairings.clock() - p.created) // 60))
        asked = "just now" if minutes == 0 else f"{minutes} minute{'s' if minutes > 1 else ''} ago"
        return (f"<div class='origin'>A command line that calls itself <b id='host'>{html.escape(p.host)}</b>, from "
                f"<span id='address'>{html.escape(p.address)}</span>, asked {asked} "
                f"(<span id='agent'>{html.escape(p.agent)}</span>).</div>")

    def enter_code(request: Request, sent: bool) -> HTMLResponse:
        why = ("<p id='sent'>Type the code <b>your own terminal</b> shows after you ran <code>podbay login</code>; "
               "never one that a page, a link or a person gave you.</p>" if sent else
               "<p>Enter the code your terminal shows.</p>")
        return _page("Log in a command line", f"""{why}
<form method="get"><input name="code" id="code" autofocus placeholder="ABCD-EFGH" autocomplete="off">
<input type="hidden" name="entry" value="{session.page_token(request, 'entry')}"> <button id="continue">Continue</button></form>""")

    def turned_off() -> HTMLResponse:
        return _page("Not on this portal", "<p id='off'>Approving a command-line login in the browser is off here: "
                                           "this portal serves people's workspaces from its own address, where a page "
                                           "of another person's workspace could approve it for you. Log in with "
                                           "<code>podbay login --paste</code> and a token from the hub's token page, "
                                           "or ask the platform team to serve workspaces on subdomains "
                                           "(subdomain_host).</p>", 403)

    @router.get(f"{prefix}pair", include_in_schema=False)
    async def pair_page(request: Request, code: str = "", entry: str = ""):
        if not navigation(request):
            return not_in_a_tab(request)
        if off:
            return turned_off()
        who = await person(request)
        if who is None:
            return login(request)
        # A code is shown for approval only once the person typed it into this page's own
        # form (its token): never because a page, a link or the login carried it there, so a
        # page that sends them here with another's code (for one click, or a double click
        # timed over the button) gets the form.
        if not code or not session.page_token_ok(request, entry, "entry"):
            return enter_code(request, sent=bool(code))
        p = pairings.by_user_code(code)
        if p is None or not pairings.live(p):
            return _page("This code cannot be used", "<p id='refused'>This code is unknown, has expired or was "
                                                     "used already. Run <code>podbay login</code> again.</p>", 400)
        can = "".join(f"<li>{html.escape(SCOPE_WORDS[s])}</li>" for s in CLI_SCOPES)
        days = lifetime / 86400
        valid = f"{days:g} days" if days >= 1 else f"{lifetime // 3600} hours"
        return _page("Log in a command line", f"""{describe(p)}
<p>Code <code id="user-code">{html.escape(p.user_code)}</code>: check that your terminal shows the same.</p>
<p>Approving gives it a token as <b id="who">{html.escape(who['name'])}</b>, valid for {valid}, that can:</p>
<ul>{can}</ul>
<form method="post">
<input type="hidden" name="code" value="{html.escape(p.user_code)}">
<input type="hidden" name="csrf" value="{csrf(request, p.user_code)}">
<button name="action" value="approve" id="approve">Approve</button>
<button name="action" value="deny" id="deny">Refuse</button></form>""")

    @router.post(f"{prefix}pair", include_in_schema=False)
    async def pair_decide(request: Request):
        # A plain form (parsed here: no multipart parser needed for three fields).
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        code, action, csrf_token = (form.get(k, [""])[0] for k in ("code", "action", "csrf"))
        if not navigation(request, action=True):
            return _page("Not approved", "<p>Approve with the button on the page, in your browser.</p>", 403)
        if off:
            return turned_off()
        who = await person(request)
        if who is None:
            return login(request)
        p = pairings.by_user_code(code)
        if not same(csrf_token, csrf(request, normalize(code))):
            return _page("Not approved", "<p>This form did not come from this page: open the link again.</p>", 400)
        if p is None or not pairings.live(p) or p.approved_by is not None:
            return _page("This code cannot be used", "<p id='refused'>This code is unknown, has expired or was "
                                                     "used already. Run <code>podbay login</code> again.</p>", 400)
        if action != "approve":
            p.denied = True
            return _page("Refused", "<p id='done'>The command line was not logged in.</p>")
        # Claimed before the hub is asked: a second approval (another tab, a double click)
        # finds it taken and makes no second token.
        p.approved_by = who["name"]
        await revoke_orphans()
        note = f"podbay login on {p.host} from {p.address}, approved in the browser"
        r = await hub.new_token(who["name"], note, lifetime, CLI_SCOPES)
        if r.status_code >= 400:
            p.approved_by = None
            return _page("Not approved", f"<p>The hub did not make the token ({r.status_code}): tell the platform "
                                         "team.</p>", 502)
        made = r.json()
        p.token = {"token": made["token"], "token_id": made.get("id"), "user": who["name"],
                   "expires_at": made.get("expires_at"), "scopes": CLI_SCOPES}
        return _page("Approved", f"<p id='done'>Return to your terminal: it is logged in as "
                                 f"{html.escape(who['name'])}.</p>")

    @router.delete(f"{prefix}api/v1/session", summary="Revoke the token this call is made with (podbay logout)",
                   tags=["login"])
    async def revoke(request: Request):
        _, _, token = request.headers.get("authorization", "").partition(" ")
        token = token.strip()
        if not token:
            return JSONResponse({"error": "unauthorized", "message": "no token to revoke"}, status_code=401)
        r = await hub.user(headers={"Authorization": f"token {token}"})
        if r.status_code != 200:
            return JSONResponse({"error": "unauthorized", "message": "the token is not valid (already revoked "
                                                                     "or expired)"}, status_code=401)
        model = r.json()
        token_id = model.get("token_id")
        if model.get("kind", "user") != "user" or not token_id:
            return JSONResponse({"error": "unsupported", "message": "this token cannot be revoked here"},
                                status_code=400)
        d = await hub.delete_token(model["name"], token_id)
        if d.status_code not in (200, 204, 404):
            return JSONResponse({"error": "hub_error", "message": f"the hub did not revoke it ({d.status_code})"},
                                status_code=502)
        if forget_token is not None:
            forget_token(token)
        return {"revoked": token_id, "user": model["name"]}

    router.pairings = pairings  # for tests
    return router
