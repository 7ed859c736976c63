"""The browser's side of podbay's service: the login session of its pages (the service's OAuth
login to the hub), who a caller is, and what keeps a script on the hub's origin from acting
for the person in front of the browser.

Without JupyterHub's `subdomain_host` every workspace is served from the hub's origin, and
whoever runs a workspace decides what it serves: a page there is same-origin with podbay's
pages and runs as whoever opens it. No header makes a page safe from a script of its own
origin in every browser (a service worker, or JupyterHub's own token page read with fetch,
are beyond podbay's reach), so:

- Where people's workspaces share the pages' origin (a backend that isolates users, no
  subdomain_host), `BrowserSession.exposed` is set and what a script there could turn into a
  credential or an action is off: approving a command-line login, a job's logs and cancel.
  The operator may accept the risk instead (PODBAY_SHARED_ORIGIN=accept).
- Everywhere, in layers: pages are served only to a tab's own navigation (Fetch Metadata:
  a script's fetch and frames get a 403); `Cross-Origin-Opener-Policy:
  noopener-allow-popups` leaves no opener a handle on them, not even one of the same origin
  (Chromium; elsewhere the same-origin policy stands); actions are forms posted from the
  page itself by the person's click with a token bound to the session and to what is acted
  on; a page's script reads with a token only that page holds; the session cookie holds only
  the token the hub issued to this service's OAuth client at the login, signed, and only one
  such cookie counts (another page may set a second one for a wider path).
- A login code is never offered for approval because a page or link carried it: the person
  types the code their own terminal shows (as GitHub's CLI has people do).

Browsers send Fetch Metadata only to secure origins (HTTPS, or the loopback): a page that
gets none is refused, with a sentence saying to use HTTPS.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from collections.abc import Iterable

from fastapi import Request
from fastapi.responses import RedirectResponse
from starlette.requests import cookie_parser

SESSION_COOKIE = "podbay-session"
STATE_COOKIE = "podbay-login-state"

# Every HTML page of the service (pairing and pages).
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    # No opener keeps a handle on the page, even one of the same origin that sends the same
    # policy (a workspace's page can: `same-origin` would keep it). Browsers that do not know
    # this value treat it as unsafe-none, where the same-origin policy alone stands.
    "Cross-Origin-Opener-Policy": "noopener-allow-popups",
    # Its bytes are not embedded by another site (<img>, <script> of another origin).
    "Cross-Origin-Resource-Policy": "same-origin",
    # A link out of the page does not carry its address (a login code) to the next site.
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                               "img-src 'self' data:; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
}


def navigation(request: Request, *, action: bool = False) -> bool:
    """A top-level page load in a browser tab; with `action`, a form of this origin posted
    by a button the person pressed. A script's fetch, a frame, or a form another site posts
    is not one."""
    h = request.headers
    ok = h.get("sec-fetch-mode") == "navigate" and h.get("sec-fetch-dest") == "document"
    if action:
        ok = ok and h.get("sec-fetch-site") == "same-origin" and h.get("sec-fetch-user") == "?1"
    return ok


def page_script(request: Request) -> bool:
    """A request a page's own script makes (fetch, same origin): never a navigation or frame."""
    h = request.headers
    return (h.get("sec-fetch-site") == "same-origin" and h.get("sec-fetch-mode") in ("cors", "same-origin")
            and h.get("sec-fetch-dest") == "empty")


def cookie_once(request: Request, name: str) -> str:
    """The cookie `name`, only if the request carries exactly one: a page of a workspace on
    the same site can set another of that name for a wider path (cookie tossing), which the
    browser would send beside the service's own."""
    found = [value for part in request.headers.get("cookie", "").split(";")
             for key, value in cookie_parser(part).items() if key == name]  # unquoted as Starlette does
    return found[0] if len(found) == 1 else ""


def same(a: str, b: str) -> bool:
    """Constant-time equality of two texts of any characters (compare_digest refuses non-ASCII str)."""
    return hmac.compare_digest(a.encode(), b.encode())


def no_metadata(request: Request) -> bool:
    """A browser that sent no Fetch Metadata at all: an insecure origin (plain HTTP beyond the
    loopback), where browsers send none."""
    return "sec-fetch-mode" not in request.headers


def not_a_tab(request: Request) -> str:
    """Why a page was refused to a request that is not a tab's own navigation."""
    if no_metadata(request):
        return ("This browser did not say how the page was opened, which browsers do only for HTTPS "
                "addresses: ask the platform team for the hub's HTTPS address.")
    return "This page only works opened in a browser tab."


class BrowserSession:
    """The service's OAuth login to the hub, kept in a cookie under the service's prefix."""

    def __init__(self, oauth, secret: bytes, prefix: str, exposed: bool = False):
        self.oauth, self.secret, self.prefix = oauth, secret, prefix
        # Other people's workspaces are served from this origin (the module's docstring).
        self.exposed = exposed

    def mac(self, *parts: object) -> str:
        return hmac.new(self.secret, "\n".join(map(str, parts)).encode(), hashlib.sha256).hexdigest()

    def cookie_value(self, token: str) -> str:
        """The cookie for a token the hub issued to this service's OAuth client at a login."""
        return f"{token}.{self.mac('session', token)}"

    def token_of(self, cookie: str) -> str | None:
        """The token in a cookie this service made; else None."""
        token, _, mac = cookie.rpartition(".")
        if not token or not same(mac, self.mac("session", token)):
            return None
        return token

    def token(self, request: Request) -> str | None:
        return self.token_of(self.raw(request))

    def raw(self, request: Request) -> str:
        """The cookie as sent: what page tokens are bound to."""
        return cookie_once(request, SESSION_COOKIE)

    async def user(self, request: Request) -> dict | None:
        """The hub's model of the person logged in here, or None: not logged in, a cookie this
        service did not make, or a session the hub expired or revoked."""
        token = self.token(request)
        if token is None or self.oauth is None:
            return None
        try:
            model = await self.oauth.user_for_token(token, use_cache=False, sync=False)
        except Exception:  # noqa: BLE001 - an expired or revoked session: log in again
            return None
        if not model or model.get("kind", "user") != "user":
            return None
        return model

    def page_token(self, request: Request, *what: object) -> str:
        """A token for one page's form or script: bound to this session and to `what`."""
        return self.token_for_cookie(self.raw(request), *what)

    def token_for_cookie(self, cookie: str, *what: object) -> str:
        return self.mac("page", cookie, *what)

    def page_token_ok(self, request: Request, given: str, *what: object) -> bool:
        return bool(self.raw(request)) and same(given or "", self.page_token(request, *what))

    def login_redirect(self, request: Request) -> RedirectResponse:
        """To the hub's login, coming back to this page (the pairing router's oauth_callback)."""
        state = secrets.token_urlsafe(16)
        target = str(request.url.path) + (f"?{request.url.query}" if request.url.query else "")
        r = RedirectResponse(f"{self.oauth.login_url}&state={state}", status_code=302)
        r.set_cookie(STATE_COOKIE, f"{state}|{target}", max_age=600, httponly=True, samesite="lax",
                     path=self.prefix, secure=https(request))
        clear_tossed(r, request, SESSION_COOKIE)
        return r


def clear_tossed(response, request: Request, name: str) -> None:
    """Delete `name` for every path above and at this request's (and for the site's parent
    domain): a cookie another page set there would otherwise shadow, or double, the one the
    service sets, and every later request would be refused as carrying two."""
    parts = [p for p in request.url.path.split("/") if p]
    paths = ["/"] + ["/" + "/".join(parts[:i]) + end for i in range(1, len(parts) + 1) for end in ("", "/")]
    host = request.url.hostname or ""
    domains: list[str | None] = [None]
    if "." in host and not host.replace(".", "").isdigit():
        # A workspace on a subdomain can set a cookie for the hub's host and for its parent.
        domains += [host, host.split(".", 1)[1]] if host.count(".") >= 2 else [host]
    for path in dict.fromkeys(paths):
        for domain in domains:
            response.delete_cookie(name, path=path, domain=domain)


def shares_origin(env: dict, isolates_users: bool) -> bool:
    """Whether other people's workspaces are served from the pages' own origin: a backend that
    keeps people apart, with no subdomain_host (PODBAY_SUBDOMAIN_HOST, which podbay's hub
    configuration passes on; JupyterHub's JUPYTERHUB_HOST is public_url's host where one is
    set, so it cannot tell), unless the operator accepts it (PODBAY_SHARED_ORIGIN=accept)."""
    return (isolates_users and not env.get("PODBAY_SUBDOMAIN_HOST")
            and env.get("PODBAY_SHARED_ORIGIN", "").lower() != "accept")


def https(request: Request) -> bool:
    return request.headers.get("x-forwarded-proto", request.url.scheme) == "https"


class TrustedProxies:
    """The addresses whose X-Forwarded-For is believed: the proxy in front of the service.
    Anyone else (a workspace calling the service directly) is counted by their own address,
    whatever header they send."""

    def __init__(self, entries: Iterable[str]):
        self.networks = [ipaddress.ip_network(e.strip(), strict=False) for e in entries if e.strip()]
        # Addresses found at run time (Kubernetes: the proxy pods', k8s.api.follow_pod_addresses).
        self.found: set[str] = set()

    @classmethod
    def parse(cls, text: str | None, default: Iterable[str] = ("127.0.0.0/8", "::1/128")) -> "TrustedProxies":
        """From PODBAY_TRUSTED_PROXIES (addresses or networks, comma-separated)."""
        return cls(text.split(",") if text is not None else default)

    def trusts(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return str(ip) in self.found or any(ip in net for net in self.networks)

    def client(self, request: Request) -> str:
        """The caller's address: walking X-Forwarded-For from the right past every trusted
        proxy (a front proxy before the hub's, such as the chart's autohttps), the first
        address no trusted proxy is; the peer's own when the peer is not trusted. Entries
        left of that one are whatever the caller sent."""
        peer = request.client.host if request.client else "?"
        forwarded = [a.strip() for a in request.headers.get("x-forwarded-for", "").split(",") if a.strip()]
        address = peer
        while self.trusts(address) and forwarded:
            address = forwarded.pop()
        return address
