"""podbay.yaml's `auth:` as JupyterHub's authenticator (the demo's shared password, OpenID
Connect discovered from the issuer, or OAuthenticator's GitHub/GitLab/Entra ID), and the key
that keeps auth state and people's secrets encrypted."""

from __future__ import annotations

import os
from pathlib import Path

from ..settings import _env
from .start import TeamGroups, is_loopback


class AuthError(Exception):
    """A login that cannot work as configured; the message says what to change."""


def configure_auth(c, cfg, public_url: str | None, data_dir: Path, public_ip: str | None) -> None:
    """podbay.yaml's `auth:` as JupyterHub's authenticator. Teams follow the provider's groups
    where it has them (oidc: JupyterHub groups are the provider's, kept in step at each login);
    otherwise they are podbay.yaml's members, loaded as groups."""
    auth = cfg.auth
    # Decided as JupyterHub loads them: none where the authenticator manages groups.
    teams = TeamGroups(c, {name: {"users": list(team.members)} for name, team in cfg.teams.items()}, cfg.teams)
    if auth.type == "demo":
        c.JupyterHub.load_groups = teams
        password = _env("PODBAY_DEMO_PASSWORD")
        if password and (public_ip is None or not is_loopback(public_ip)):
            raise AuthError("the demo login (one shared password, PODBAY_DEMO_PASSWORD) is for `podbay up` on the "
                            f"loopback only, not {public_ip or 'a cluster'}: set auth.type: oidc in podbay.yaml for "
                            "your identity provider")
        # Without a password, the operator's own authenticator (set after configure(c)) logs people in.
        if password:
            c.JupyterHub.authenticator_class = "podbay-demo"
            c.DemoAuthenticator.demo_users = set(cfg.demo_users())
            c.DemoAuthenticator.password = password
            c.Authenticator.allowed_users = set(cfg.demo_users())
        return
    try:
        secret = auth.client_secret()
    except ValueError as e:
        raise AuthError(str(e)) from None
    unspecified = public_ip is not None and public_ip in ("0.0.0.0", "::")
    callback = auth.callback_url or (f"{public_url}/hub/oauth_callback" if public_url and not unspecified else None)
    if not callback:
        raise AuthError("give auth.callback_url: the hub's public URL + /hub/oauth_callback, as registered at "
                        "the identity provider")
    if auth.type == "oidc":
        doc = discover(auth.issuer)
        c.JupyterHub.authenticator_class = "podbay-oidc"
        section = c.PodbayOIDCAuthenticator
        section.issuer = auth.issuer
        section.authorize_url = doc["authorization_endpoint"]
        section.token_url = doc["token_endpoint"]
        section.userdata_url = doc["userinfo_endpoint"]
        section.scope = list(auth.scopes)
        section.username_claim = auth.username_claim
        section.groups_claim = auth.groups_claim
        section.auth_state_groups_key = f"oauth_user.{auth.groups_claim}"
        section.manage_groups = True
        allowed = (set(auth.allowed_groups) | {g for t in cfg.teams.values() for g in t.idp_groups}
                   | set(auth.admin_groups))
        if auth.allow_all:
            section.allow_all = True
        elif allowed:
            section.allowed_groups = allowed
        else:
            raise AuthError("nobody could log in: no auth.allowed_groups, auth.admin_groups or team idp_groups; "
                            "name the provider's groups, or set auth.allow_all: true")
        section.admin_groups = set(auth.admin_groups)
        section.pass_access_token = auth.pass_access_token
    else:
        classes = {"github": "GitHubOAuthenticator", "gitlab": "GitLabOAuthenticator",
                   "azuread": "AzureAdOAuthenticator"}
        c.JupyterHub.authenticator_class = auth.type
        section = c[classes[auth.type]]
        c.JupyterHub.load_groups = teams
        if auth.allow_all:
            section.allow_all = True
    section.client_id = auth.client_id
    section.client_secret = secret
    section.oauth_callback_url = callback
    section.enable_auth_state = True
    for key, value in auth.options.items():
        section[key] = value


def discover(issuer: str) -> dict:
    """The provider's OpenID configuration (its endpoints), read at hub start; AuthError
    saying what is wrong when it cannot be."""
    import httpx

    url = issuer.rstrip("/") + "/.well-known/openid-configuration"
    try:
        r = httpx.get(url, timeout=10, follow_redirects=True)
        r.raise_for_status()
        doc = r.json()
    except httpx.HTTPStatusError as e:
        raise AuthError(f"the identity provider answered {e.response.status_code} for {url}: check auth.issuer") \
            from None
    except (httpx.HTTPError, ValueError) as e:
        raise AuthError(f"the identity provider at {issuer} does not answer ({e}): check auth.issuer, or start "
                        "podbay when it is up") from None
    # OpenID Connect Discovery 1.0, 4.3: the document must be the issuer's own.
    if doc.get("issuer", "").rstrip("/") != issuer.rstrip("/"):
        raise AuthError(f"{url} is the configuration of issuer {doc.get('issuer')!r}, not of {issuer!r}: "
                        "auth.issuer must be exactly the provider's issuer")
    missing = [k for k in ("authorization_endpoint", "token_endpoint", "userinfo_endpoint") if not doc.get(k)]
    if missing:
        raise AuthError(f"the identity provider's configuration lacks {', '.join(missing)}")
    return doc


def crypt_key(data_dir: Path) -> str:
    import secrets

    path = data_dir / "jupyterhub_crypt_key"
    if not path.exists() or not path.read_text().strip():
        # Written whole under another name, then moved: never an empty key file.
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
        os.replace(tmp, path)
    return path.read_text().strip()
