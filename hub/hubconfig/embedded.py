"""The hub that `podbay up` runs, or a jupyterhub_config.py of one's own: one function.

    from podbay.hub.hubconfig import configure
    configure(c)

Settings come from the environment that `podbay up` prepares (and operators may set):
PODBAY_CONFIG, PODBAY_DATA_DIR, PODBAY_PORT, PODBAY_DB_URL, PODBAY_DEMO_PASSWORD,
PODBAY_KEEP_WORKSPACES, PODBAY_BACKEND (local or docker), PODBAY_PAUSE_JOBS (queue jobs,
start none), PODBAY_PROXY=external (a proxy started elsewhere, with CONFIGPROXY_AUTH_TOKEN),
PODBAY_HUB_DB_URL (the hub's own database), PODBAY_IP (the public address, 127.0.0.1 by default) and PODBAY_ALLOW_UNISOLATED=1 (the
operator accepts a local backend on a non-loopback address). Ports: the public one, +1 the
hub, +2 the proxy's API, +3 podbay's REST service. Only the public port may listen beyond
the loopback; on the docker backend the hub's API listens on the workspace network's
gateway, for the workspaces.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from ..quota import database_url
from ..secrets import key_from_env
from .login import AuthError, configure_auth, crypt_key
from ..settings import Podbay, _env
from .start import (
    configure_culler, configure_pages, harden_pages, is_loopback, limit_usernames, load_checked, refuse,
    service_environment, start_portal,
)


def find_proxy() -> str:
    """configurable-http-proxy: beside this Python (the README's setup links it there), or on PATH."""
    here = Path(sys.executable).parent / "configurable-http-proxy"
    found = str(here) if here.exists() else shutil.which("configurable-http-proxy")
    if not found:
        raise SystemExit(
            "podbay: configurable-http-proxy is not installed. Run the README's setup command, "
            "or: npm install -g configurable-http-proxy"
        )
    return found


LOCAL_NOT_ISOLATED = (
    "podbay: the local backend runs every workspace as this hub's own user ({user}), with no "
    "isolation between workspaces: each user can read the others' files and reach what they "
    "listen on. It is for one person trying podbay; for several users use the docker backend "
    "(podbay up --backend docker) or Kubernetes.")


def _user_name() -> str:
    import pwd

    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())


def check_public_ip(ip: str, backend, allow_unisolated: bool, cfg) -> None:
    """A backend with no isolation between users (local) listens on the loopback only,
    unless the operator says, knowingly, that they accept that."""
    if not backend.isolates(cfg) and not is_loopback(ip) and not allow_unisolated:
        raise SystemExit(
            f"podbay: refusing to listen on {ip} with the {backend.name} backend: its workspaces all run "
            "as the hub's own user and are not isolated from each other, so anyone who can log "
            "in could reach every other user's files. Use the docker backend (--backend docker) "
            "for several users, or, if you accept that, set PODBAY_ALLOW_UNISOLATED=1 "
            "(podbay up --allow-unisolated).")


def configure(c) -> None:
    settings = Podbay(config=c)
    config_file = os.path.abspath(settings.config_file)
    data_dir = Path(settings.data_dir).absolute()
    port = settings.port
    public_ip = settings.ip
    data_dir.mkdir(parents=True, exist_ok=True)

    host = f"[{public_ip}]" if ":" in public_ip else public_ip
    tls = bool(settings.ssl_cert or settings.ssl_key)
    if tls and not (settings.ssl_cert and settings.ssl_key):
        print("podbay: refusing to start: TLS needs both a certificate and its key "
              "(c.Podbay.ssl_cert and ssl_key, or PODBAY_SSL_CERT and PODBAY_SSL_KEY)", file=sys.stderr)
        raise SystemExit(1)
    for path in filter(None, (settings.ssl_cert, settings.ssl_key)):
        if not Path(path).is_file():
            print(f"podbay: refusing to start: the TLS file {path} does not exist", file=sys.stderr)
            raise SystemExit(1)
    c.JupyterHub.bind_url = f"{'https' if tls else 'http'}://{host}:{port}"
    if tls:
        # The proxy serves the public port with them; the hub's own ports stay on the
        # loopback (and the workspace network), in plain HTTP.
        c.JupyterHub.ssl_cert, c.JupyterHub.ssl_key = settings.ssl_cert, settings.ssl_key
    # The hub's own port serves the proxy and the REST service on the loopback; on the
    # docker backend it moves to the workspace network's gateway (below), for the workspaces.
    c.JupyterHub.hub_bind_url = f"http://127.0.0.1:{port + 1}"
    c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{port + 2}"
    if _env("PODBAY_PROXY", "own") == "external":
        # The proxy runs on its own (docker/compose.yaml); the hub shares its
        # CONFIGPROXY_AUTH_TOKEN and only programs its routes.
        c.ConfigurableHTTPProxy.should_start = False
    else:
        c.ConfigurableHTTPProxy.command = [find_proxy()]
        c.ConfigurableHTTPProxy.pid_file = str(data_dir / "proxy.pid")
    # The hub's own database: SQLite in the data directory, or PODBAY_HUB_DB_URL (PostgreSQL
    # in production: `postgresql://…` with psycopg 3, as for the quota book).
    c.JupyterHub.db_url = database_url(settings.hub_db_url)
    c.JupyterHub.cookie_secret_file = str(data_dir / "jupyterhub_cookie_secret")
    c.JupyterHub.allow_named_servers = True
    # podbay's quota decides how many workspaces a user runs, not a flat limit.
    c.JupyterHub.named_server_limit_per_user = 0
    # With PODBAY_KEEP_WORKSPACES=1 a hub restart leaves workspaces running (and their
    # devices claimed); by default stopping the hub stops everything.
    c.JupyterHub.cleanup_servers = not settings.keep_workspaces

    cfg, plugin = load_checked(config_file, settings.backend)
    backend = plugin.name
    check_public_ip(public_ip, plugin, settings.allow_unisolated, cfg)

    c.Authenticator.admin_users = set(cfg.admins)
    limit_usernames(c, cfg)
    harden_pages(c, plugin, cfg)
    scheme = "https" if tls else "http"
    try:
        configure_auth(c, cfg, f"{scheme}://{host}:{port}", data_dir, public_ip)
    except AuthError as e:
        refuse(str(e))
    # The provider's tokens (auth state) and people's secrets are kept encrypted: with the
    # operator's key, or one the hub makes in its data directory.
    if not os.environ.get("JUPYTERHUB_CRYPT_KEY"):
        os.environ["JUPYTERHUB_CRYPT_KEY"] = crypt_key(data_dir)

    c.JupyterHub.spawner_class = plugin.spawner_for(cfg)
    c.Spawner.default_url = "/lab"
    c.Spawner.http_timeout = settings.http_timeout
    c.Spawner.start_timeout = settings.start_timeout
    if not plugin.isolates(cfg):
        print(LOCAL_NOT_ISOLATED.format(user=_user_name()), file=sys.stderr)
    plugin.configure(c, cfg)
    # PODBAY_PLAIN_SPAWNER=module:function: a plain JupyterHub spawner instead of podbay's,
    # for benchmarks/' comparisons (benchmarks/plain_spawners.py); podbay's own set-up is
    # left out then.
    plain = _env("PODBAY_PLAIN_SPAWNER")
    if plain:
        import importlib

        module, _, function = plain.partition(":")
        try:
            configure_plain = getattr(importlib.import_module(module), function)
        except (ImportError, AttributeError, ValueError) as e:
            refuse(f"PODBAY_PLAIN_SPAWNER={plain!r} is not module:function of an importable module ({e}); "
                   "it is for benchmarks/ only: unset it")
        print(f"podbay: WARNING: PODBAY_PLAIN_SPAWNER={plain}: a plain JupyterHub spawner for benchmarks, "
              "without podbay's service, quotas or devices; unset it for a real hub", file=sys.stderr)
        configure_plain(c, config_file, data_dir)
        return

    c.PodbaySpawnerMixin.config_file = config_file
    # The spawner's portal is the hub's: the same plugin's placement and capacity.
    c.PodbaySpawnerMixin.podbay_backend = plugin.name
    c.PodbaySpawnerMixin.data_dir = str(data_dir)
    db_url = database_url(settings.db_url)
    c.PodbaySpawnerMixin.db_url = db_url

    # The engine is there; the hub's API and podbay's service listen where workspaces reach them.
    portal, side = start_portal(cfg, plugin, config_file, db_url, str(data_dir), port + 1)
    workspace_side = side.workspace_side
    c.JupyterHub.hub_bind_url = f"http://{workspace_side}:{port + 1}"

    # podbay's REST service, run and restarted by the hub, reachable under /services/podbay/
    # through the proxy, and at service_url from the workspaces (their `podbay` commands).
    service_url = f"http://{workspace_side}:{port + 3}"
    c.PodbaySpawnerMixin.service_url = service_url
    c.JupyterHub.services = [{
        "name": "podbay",
        "url": service_url,
        "command": [sys.executable, "-m", "podbay.hub.service"],
        "environment": {"PODBAY_CONFIG": config_file, "PODBAY_DATA_DIR": str(data_dir), "PODBAY_DB_URL": db_url,
                        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                        "PODBAY_PAUSE_JOBS": _env("PODBAY_PAUSE_JOBS", "0"), "PODBAY_BACKEND": backend,
                        # The keys the hub's spawns open secrets with (PODBAY_SECRETS_KEY first).
                        **service_environment(c, ";".join(key_from_env()))},
        "display": False,
        # Its pages (`podbay login`'s approval) log people in through the hub, without a
        # "grant access to podbay?" page of the hub's own: it is part of the portal.
        "oauth_no_confirm": True,
    }]
    # Only what it needs: resolve callers, read their groups and their servers' options.
    c.JupyterHub.load_roles = [{
        "name": "podbay-service",
        "services": ["podbay"],
        # tokens: to make the narrow token of a `podbay login` that its owner approved.
        # servers: the idle rules' release-gpu and stop (hub/usage/policy.py).
        "scopes": ["list:users", "read:users", "read:users:groups", "read:servers", "tokens", "servers"],
    }, {
        # Every user may use podbay's service (JupyterHub 5+ grants no service by default);
        # their tokens from /hub/token inherit it.
        "name": "user",
        "scopes": ["self", "access:services!service=podbay"],
    }]
    configure_culler(c, cfg)
    configure_pages(c, portal)
    # A workspace's own token (JUPYTERHUB_API_TOKEN): JupyterHub's `server` role, plus the
    # service (so `podbay job submit` works in its terminal) and reading the user's own
    # servers (`podbay ws ls`); nothing that starts, stops or makes tokens.
    c.Spawner.server_token_scopes = ["users:activity!user", "access:servers!server",
                                     "access:services!service=podbay", "read:servers!user"]
