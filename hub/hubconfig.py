"""JupyterHub configuration for podbay, as one function a jupyterhub_config.py calls.

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

import ipaddress
import os
import shutil
import sys
from pathlib import Path

from traitlets import Bool, Integer, Unicode, default
from traitlets.config import Configurable

from .config import ConfigError
from .inventory import InventoryError
from .quota import LedgerUnavailable, database_url


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


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


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def check_public_ip(ip: str, backend, allow_unisolated: bool) -> None:
    """A backend with no isolation between users (local) listens on the loopback only,
    unless the operator says, knowingly, that they accept that."""
    if not backend.isolates_users and not is_loopback(ip) and not allow_unisolated:
        raise SystemExit(
            f"podbay: refusing to listen on {ip} with the {backend.name} backend: its workspaces all run "
            "as the hub's own user and are not isolated from each other, so anyone who can log "
            "in could reach every other user's files. Use the docker backend (--backend docker) "
            "for several users, or, if you accept that, set PODBAY_ALLOW_UNISOLATED=1 "
            "(podbay up --allow-unisolated).")


class Podbay(Configurable):
    """podbay's own settings for the hub, as `c.Podbay.<name>` in a jupyterhub_config.py
    before `configure(c)`; each falls back to its environment variable (what `podbay up`
    sets), then to the embedded default."""

    config_file = Unicode(config=True, help="podbay.yaml (env PODBAY_CONFIG; else ./config/podbay.yaml or the shipped demo).")
    data_dir = Unicode(config=True, help="Ledger, homes, logs, the hub's files (env PODBAY_DATA_DIR; default .podbay).")
    ip = Unicode(config=True, help="The public address (env PODBAY_IP; default 127.0.0.1).")
    port = Integer(config=True, help="The public port (env PODBAY_PORT; default 8000). The hub uses +1, "
                                     "the proxy's API +2 (127.0.0.1 only), podbay's service +3.")
    ssl_cert = Unicode(config=True, help="TLS certificate (PEM) for the public port (env PODBAY_SSL_CERT).")
    ssl_key = Unicode(config=True, help="Its private key (env PODBAY_SSL_KEY).")
    backend = Unicode(config=True, help="Overrides podbay.yaml's backend: (env PODBAY_BACKEND).")
    db_url = Unicode(config=True, help="The quota book's database (env PODBAY_DB_URL; default SQLite in data_dir). "
                                       "postgresql://… means psycopg 3.")
    hub_db_url = Unicode(config=True, help="The hub's own database (env PODBAY_HUB_DB_URL; default SQLite in data_dir).")
    keep_workspaces = Bool(config=True, help="Leave workspaces running when the hub stops (env PODBAY_KEEP_WORKSPACES=1).")
    allow_unisolated = Bool(config=True, help="Let a backend that does not isolate users (local) listen beyond "
                                              "the loopback (env PODBAY_ALLOW_UNISOLATED=1).")
    http_timeout = Integer(60, config=True, help="Seconds a started workspace has to answer.")
    start_timeout = Integer(90, config=True, help="Seconds a workspace has to start.")

    @default("config_file")
    def _config_file(self):
        # Never the shipped demo here: a production hub with no file named must not start
        # on the demo's made-up GPUs (`podbay up` names the demo itself when asked for none).
        named = _env("PODBAY_CONFIG") or ("config/podbay.yaml" if Path("config/podbay.yaml").is_file() else None)
        if not named:
            raise SystemExit("podbay: no podbay.yaml named: set c.Podbay.config_file (or PODBAY_CONFIG)")
        return os.path.abspath(named)

    @default("data_dir")
    def _data_dir(self):
        return str(Path(_env("PODBAY_DATA_DIR", ".podbay")).absolute())

    @default("ip")
    def _ip(self):
        return _env("PODBAY_IP", "127.0.0.1")

    @default("port")
    def _port(self):
        return int(_env("PODBAY_PORT", "8000"))

    @default("ssl_cert")
    def _ssl_cert(self):
        return _env("PODBAY_SSL_CERT", "")

    @default("ssl_key")
    def _ssl_key(self):
        return _env("PODBAY_SSL_KEY", "")

    @default("backend")
    def _backend(self):
        return _env("PODBAY_BACKEND", "")

    @default("db_url")
    def _db_url(self):
        return database_url(_env("PODBAY_DB_URL") or f"sqlite:///{Path(self.data_dir) / 'ledger.sqlite'}")

    @default("hub_db_url")
    def _hub_db_url(self):
        return database_url(_env("PODBAY_HUB_DB_URL") or f"sqlite:///{Path(self.data_dir) / 'jupyterhub.sqlite'}")

    @default("keep_workspaces")
    def _keep(self):
        return _env("PODBAY_KEEP_WORKSPACES", "0") == "1"

    @default("allow_unisolated")
    def _allow(self):
        return _env("PODBAY_ALLOW_UNISOLATED", "0") == "1"


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

    from .config import load_config

    try:
        cfg = load_config(config_file, settings.backend or None)
    except ConfigError as e:
        print(f"podbay: refusing to start, the configuration is invalid.\n{e.render()}", file=sys.stderr)
        raise SystemExit(1) from None

    from .backends import BackendError, chosen, load

    backend = chosen(cfg, settings.backend or None)
    try:
        plugin = load(backend)
    except BackendError as e:
        print(f"podbay: {e} (PODBAY_BACKEND or backend: in podbay.yaml)", file=sys.stderr)
        raise SystemExit(1) from None
    check_public_ip(public_ip, plugin, settings.allow_unisolated)

    c.Authenticator.admin_users = set(cfg.admins)
    limit_usernames(c, cfg)
    harden_pages(c, plugin)
    scheme = "https" if tls else "http"
    try:
        configure_auth(c, cfg, f"{scheme}://{host}:{port}", data_dir, public_ip)
    except AuthError as e:
        print(f"podbay: refusing to start: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    # The provider's tokens (auth state) and people's secrets are kept encrypted: with the
    # operator's key, or one the hub makes in its data directory.
    if not os.environ.get("JUPYTERHUB_CRYPT_KEY"):
        os.environ["JUPYTERHUB_CRYPT_KEY"] = _crypt_key(data_dir)

    # PODBAY_SPAWNER picks plain JupyterHub spawners too, for benchmarks/ comparisons.
    spawner = _env("PODBAY_SPAWNER", plugin.spawner)
    c.JupyterHub.spawner_class = spawner
    c.Spawner.default_url = "/lab"
    c.Spawner.http_timeout = settings.http_timeout
    c.Spawner.start_timeout = settings.start_timeout
    if not plugin.isolates_users:
        print(LOCAL_NOT_ISOLATED.format(user=_user_name()), file=sys.stderr)
    plugin.configure(c)
    if spawner == "simple":
        # Plain JupyterHub, for comparisons (benchmarks/spawn_latency.py).
        c.SimpleLocalProcessSpawner.home_dir_template = str(data_dir / "plain-homes" / "{username}")
        c.Spawner.args = ["--allow-root"] if os.getuid() == 0 else []
        return
    if spawner == "kubernetes":
        # Plain KubeSpawner on the catalog's default image, for benchmarks/k8s_spawn_latency.py.
        from .config import load_config as _load
        _configure_plain_kubernetes(c, _load(config_file, "kubernetes"))
        return
    if spawner == "docker":
        # Plain DockerSpawner on the catalog's default image, for benchmarks/docker_spawn_latency.py:
        # host networking needs what podbay-docker does by itself (issue 462).
        from .config import load_config as _load
        _configure_plain_docker(c, _load(config_file).default_image.image)
        return

    c.PodbaySpawnerMixin.config_file = config_file
    # The spawner's portal is the hub's: the same plugin's placement and capacity.
    c.PodbaySpawnerMixin.podbay_backend = plugin.name
    c.PodbaySpawnerMixin.data_dir = str(data_dir)
    db_url = database_url(settings.db_url)
    c.PodbaySpawnerMixin.db_url = db_url

    from .spawner import shared_portal

    try:
        portal = shared_portal(config_file, db_url, str(data_dir), plugin.name)
    except (InventoryError, LedgerUnavailable) as e:
        print(f"podbay: refusing to start: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    plugin.prepare_volumes(cfg, portal)
    try:
        # The engine is there; the hub's API and podbay's service listen where workspaces reach them.
        side = plugin.start_hub(cfg, portal, port + 1)
    except BackendError as e:
        print(f"podbay: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    serve_in_hub(plugin, portal)
    workspace_side, released = side.workspace_side, side.released
    c.JupyterHub.hub_bind_url = f"http://{workspace_side}:{port + 1}"
    if released:
        print(f"podbay: released devices of {len(released)} workspace(s) that no longer run: "
              + ", ".join(released), file=sys.stderr)

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
                        # People's secrets: the service opens them for the jobs it starts.
                        "PODBAY_SECRETS_KEY": os.environ["JUPYTERHUB_CRYPT_KEY"],
                        # How to reach the engine, where the hub was told; an operator's
                        # acceptance of a shared origin (hub/browser.py).
                        **{k: os.environ[k] for k in (*ENGINE_ENV, *BROWSER_ENV) if os.environ.get(k)},
                        # Whether other people's workspaces share the pages' origin (hub/browser.py):
                        # set before configure(c) to count.
                        "PODBAY_SUBDOMAIN_HOST": str(_value(c.JupyterHub.get("subdomain_host"), "") or "")},
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


class _OnFirstUse:
    """A list read when a template first looks at it (`{% if %}`, `{% for %}`), not before."""

    def __init__(self, read):
        self._read, self._items = read, None

    def _get(self) -> list:
        if self._items is None:
            self._items = self._read()
        return self._items

    def __bool__(self) -> bool:
        return bool(self._get())

    def __iter__(self):
        return iter(self._get())


def configure_pages(c, portal) -> None:
    """The hub's own pages show podbay's: links to its pages in the navigation bar, and the
    idle GPU notices on the home page (read from the quota book's database on render)."""
    import logging
    import time

    from .usage.policy import IdlePolicy, notices_for
    from .usage.store import UsageStore

    store, policy = UsageStore(portal.book), IdlePolicy(portal.cfg, portal.cfg.usage.interval)

    def read(name: str) -> list[dict]:
        try:
            return notices_for(portal.cfg, store, policy, name, time.time())
        except Exception:  # noqa: BLE001 - the home page must render whatever the database says
            logging.getLogger("podbay").exception("podbay's notices could not be read")
            return []

    def notices(user) -> "_OnFirstUse | list":
        # JupyterHub calls this for every page it renders; only the home page looks.
        return _OnFirstUse(lambda: read(user.name)) if user is not None else []

    base = _value(c.JupyterHub.get("base_url"), "/") or "/"
    base = base if base.endswith("/") else base + "/"
    paths = [str(Path(__file__).parent / "templates" / "hub")]
    c.JupyterHub.template_paths = paths + [p for p in _value(c.JupyterHub.get("template_paths"), []) if p not in paths]
    c.JupyterHub.template_vars = {**_value(c.JupyterHub.get("template_vars"), {}),
                                  "podbay_pages": f"{base}services/podbay/pages/", "podbay_notices": notices}


def configure_culler(c, cfg) -> None:
    """podbay.yaml's idle.culler as jupyterhub-idle-culler, a managed service of the hub's
    with only the scopes it needs: whole workspaces nobody used (browser, terminal, kernels)
    are stopped after idle.culler.timeout, GPU or not. (The GPU-aware rules are podbay's
    service's: hub/usage/policy.py.)"""
    culler = cfg.idle.culler
    if culler is None:
        return
    args = [sys.executable, "-m", "jupyterhub_idle_culler", f"--timeout={int(culler.timeout)}",
            f"--cull-every={int(culler.every)}", f"--concurrency={culler.concurrency}"]
    if culler.max_age:
        args.append(f"--max-age={int(culler.max_age)}")
    services = [s for s in _value(c.JupyterHub.get("services"), []) if s.get("name") != "idle-culler"]
    c.JupyterHub.services = [*services, {"name": "idle-culler", "command": args, "display": False}]
    roles = [r for r in _value(c.JupyterHub.get("load_roles"), []) if r.get("name") != "podbay-idle-culler"]
    c.JupyterHub.load_roles = [*roles, {
        "name": "podbay-idle-culler", "services": ["idle-culler"],
        # What jupyterhub-idle-culler's README lists for culling servers (not users).
        "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"],
    }]


# What the service's browser side reads from the hub's environment (hub/browser.py).
BROWSER_ENV = ("PODBAY_SHARED_ORIGIN", "PODBAY_TRUSTED_PROXIES", "PODBAY_TRUSTED_PROXY_PODS")


def harden_pages(c, plugin) -> None:
    """The hub's own pages get Cross-Origin-Opener-Policy too (a workspace's page that opens
    one keeps no handle on it, in browsers that know noopener-allow-popups), and a deployment
    whose people's workspaces share the hub's origin is told what that leaves open."""
    settings = dict(_value(c.JupyterHub.get("tornado_settings"), {}))
    headers = dict(settings.get("headers") or {})
    headers.setdefault("Cross-Origin-Opener-Policy", "noopener-allow-popups")
    c.JupyterHub.tornado_settings = {**settings, "headers": headers}
    from .browser import shares_origin

    # The service decides the same way, from what the hub passes on (below).
    env = {**os.environ, "PODBAY_SUBDOMAIN_HOST": str(_value(c.JupyterHub.get("subdomain_host"), "") or "")}
    if shares_origin(env, plugin.isolates_users):
        print("podbay: WARNING: every workspace is served from the hub's own origin (no "
              "c.JupyterHub.subdomain_host): a page a workspace serves runs as whoever opens it on "
              "the hub's origin, and can act for them on the hub itself (JupyterHub's token page "
              "included). podbay turns off approving `podbay login` in the browser and jobs' output "
              "and cancel on its pages there (PODBAY_SHARED_ORIGIN=accept turns them on). Set "
              "subdomain_host (a wildcard DNS name and certificate) for a portal with several people.",
              file=sys.stderr)


def limit_usernames(c, cfg) -> None:
    """JupyterHub's username_pattern from podbay.yaml (auth.username_pattern), unless the
    deployment's own config sets one: no login gets a name that means something in a URL or
    a path (`admin#x`, `alice?x`, `alice/../admin`)."""
    if any("username_pattern" in section for section in [c.Authenticator, *_sections(c)]):
        return
    c.Authenticator.username_pattern = cfg.auth.username_pattern


class AuthError(Exception):
    """A login that cannot work as configured; the message says what to change."""


def configure_auth(c, cfg, public_url: str | None, data_dir: Path, public_ip: str | None) -> None:
    """podbay.yaml's `auth:` as JupyterHub's authenticator. Teams follow the provider's groups
    where it has them (oidc: JupyterHub groups are the provider's, kept in step at each login);
    otherwise they are podbay.yaml's members, loaded as groups."""
    auth = cfg.auth
    teams = {name: {"users": list(team.members)} for name, team in cfg.teams.items()}
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
        if not auth.options.get("manage_groups"):  # JupyterHub refuses load_groups with it
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


def _crypt_key(data_dir: Path) -> str:
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


def configure_on_cluster(c) -> None:
    """podbay's part of a hub that the Zero to JupyterHub chart runs (config/helm/values.yaml,
    hub.extraConfig): the chart owns the ports, the proxy, the hub's database and the login;
    the values set podbay's spawner, its settings (c.PodbaySpawnerMixin) and the REST service.
    This checks podbay.yaml, takes teams and admins from it, reconciles the quota book with
    the pods that run, starts the cluster watch, and gives the service what it needs to reach
    the API server. It refuses to start the hub (exit 1) with a message where something is wrong."""
    from .backends import BackendError, load
    from .config import load_config
    from .spawner import PodbaySpawnerMixin, shared_portal

    settings = PodbaySpawnerMixin(config=c)
    backend = settings.podbay_backend or "kubernetes"

    def refuse(message: str):
        print(f"podbay: refusing to start: {message}", file=sys.stderr)
        raise SystemExit(1)

    try:
        cfg = load_config(settings.config_file, backend)
        plugin = load(backend)
    except ConfigError as e:
        refuse(f"the configuration is invalid.\n{e.render()}")
    except BackendError as e:
        refuse(str(e))
    spawner = c.JupyterHub.get("spawner_class")
    if spawner not in (plugin.spawner, "podbay.hub.backends.kubernetes.spawner.PodbayKubeSpawner"):
        refuse(f"hub.config JupyterHub.spawner_class is {spawner!r}: podbay's {backend} backend needs "
               f"{plugin.spawner!r}")
    Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    # podbay.yaml's login, where it names one (else the chart's hub.config sets the authenticator).
    if cfg.auth.type != "demo":
        try:
            configure_auth(c, cfg, None, Path(settings.data_dir), None)
        except AuthError as e:
            refuse(str(e))
    # Teams are JupyterHub groups (the quota book reads a user's groups); an authenticator
    # that manages groups itself (from the identity provider's claims, set on any
    # authenticator's section) keeps them: JupyterHub refuses load_groups then.
    if not any(_value(section.get("manage_groups"), False) for section in _sections(c)):
        groups = dict(_value(c.JupyterHub.get("load_groups"), {}))
        for name, team in cfg.teams.items():
            users = list(dict.fromkeys([*(groups.get(name) or {}).get("users", []), *team.members]))
            groups[name] = {**(groups.get(name) or {}), "users": users}
        c.JupyterHub.load_groups = groups
    # podbay.yaml's admins, beside whatever the deployment names, on every section that
    # names admins (an authenticator's own section wins over Authenticator's).
    for section in [c.Authenticator, *(sec for sec in _sections(c) if "admin_users" in sec)]:
        section.admin_users = set(_value(section.get("admin_users"), set())) | set(cfg.admins)
    limit_usernames(c, cfg)
    harden_pages(c, plugin)
    try:
        portal = shared_portal(os.path.abspath(settings.config_file), settings.db_url,
                               os.path.abspath(settings.data_dir), backend)
    except (InventoryError, LedgerUnavailable) as e:
        refuse(str(e))
    try:
        side = plugin.start_hub(cfg, portal, 8081)
    except BackendError as e:
        refuse(str(e))
    if side.released:
        print(f"podbay: released what {len(side.released)} workspace(s) that no longer run held: "
              + ", ".join(side.released), file=sys.stderr)
    serve_in_hub(plugin, portal)
    # People's secrets are opened with the hub's crypt key (the chart's CryptKeeper.keys).
    keys = [k.decode() if isinstance(k, bytes) else str(k) for k in _value(c.CryptKeeper.get("keys"), [])]
    key = ";".join(keys) or os.environ.get("JUPYTERHUB_CRYPT_KEY")
    if key:
        os.environ["PODBAY_SECRETS_KEY"] = key
    # The managed service inherits little of the hub's environment: how to reach the API
    # server (the pod's service account) and the key are passed on.
    for service in _value(c.JupyterHub.get("services"), []):
        if service.get("name") == "podbay":
            env = service.setdefault("environment", {})
            env.setdefault("PODBAY_BACKEND", backend)
            if key:
                env.setdefault("PODBAY_SECRETS_KEY", key)
            for k in (*ENGINE_ENV, *BROWSER_ENV):
                if os.environ.get(k):
                    env.setdefault(k, os.environ[k])
            # Whether other people's workspaces share the pages' origin (hub/browser.py).
            subdomain_host = _value(c.JupyterHub.get("subdomain_host"), "")
            if subdomain_host:
                env.setdefault("PODBAY_SUBDOMAIN_HOST", str(subdomain_host))
    # On a cluster the chart's own culler (cull.enabled) is the same jupyterhub-idle-culler:
    # podbay.yaml's idle.culler is used only where the chart runs none.
    if not any(s.get("name") == "jupyterhub-idle-culler" for s in _value(c.JupyterHub.get("services"), [])):
        configure_culler(c, cfg)
    configure_pages(c, portal)


def _sections(c) -> list:
    from traitlets.config import Config

    return [section for section in c.values() if isinstance(section, Config)]


def _value(value, initial):
    """A traitlets config value as it will be: one set with .add()/.append()/.update() is
    still a LazyConfigValue here."""
    from traitlets.config.loader import LazyConfigValue

    if isinstance(value, LazyConfigValue):
        return value.get_value(initial)
    return initial if value is None else value


# What the service needs to reach the backend's engine as the hub does: Docker's socket, a
# kubeconfig, or (in a pod) the API server the service account's token is for.
ENGINE_ENV = ("DOCKER_HOST", "KUBECONFIG", "KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT", "SLURM_CONF")
_serving: list = []


def serve_in_hub(plugin, portal) -> None:
    """The backend's background work (the cluster watch that the spawn form's and the claims'
    capacity read) on the hub's loop, for the hub's lifetime. JupyterHub loads its
    configuration on its running loop; a command that loads it with none (none does today)
    gets no watch."""
    import asyncio
    import logging

    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return

    async def serve():
        try:
            await plugin.serve(portal)
        except Exception:  # a watch that cannot start: capacity stays unknown, spawns are not refused for it
            logging.getLogger("podbay").exception("the %s backend's background work stopped", plugin.name)

    _serving.append(loop.create_task(serve()))


def _configure_plain_kubernetes(c, cfg) -> None:
    c.JupyterHub.spawner_class = "kubespawner.KubeSpawner"
    c.KubeSpawner.namespace = cfg.kubernetes.namespace
    c.KubeSpawner.image = cfg.default_image.image
    c.KubeSpawner.uid = 1000
    c.KubeSpawner.fs_gid = 100


def _configure_plain_docker(c, image: str) -> None:
    from dockerspawner import DockerSpawner
    from jupyterhub.utils import random_port

    class PlainHostDockerSpawner(DockerSpawner):
        async def start(self):
            self.port = random_port()
            return await super().start()

        async def get_ip_and_port(self):
            return "127.0.0.1", self.port

    c.JupyterHub.spawner_class = PlainHostDockerSpawner
    c.DockerSpawner.image = image
    c.DockerSpawner.network_name = "host"
    c.DockerSpawner.use_internal_ip = True
    c.DockerSpawner.remove = True
    c.DockerSpawner.pull_policy = "never"
    c.DockerSpawner.ip = "127.0.0.1"
    c.DockerSpawner.prefix = "plain"
    c.DockerSpawner.volumes = {"plain-home-{username}": "/home/jovyan"}
