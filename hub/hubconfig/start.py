"""What both set-ups do the same way (the embedded `configure` and the chart's
`configure_on_cluster`): podbay.yaml and the backend checked, the usernames limited, the hub's
pages hardened and linked to podbay's, the quota book reconciled with what runs, the backend's
background work started, the REST service's environment, the culler."""

from __future__ import annotations

import ipaddress
import os
import sys
from pathlib import Path

from traitlets.config.loader import DeferredConfig

from ..config import ConfigError
from ..inventory import InventoryError
from ..quota import LedgerUnavailable


def refuse(message: str):
    """Stop the hub at start, with what is wrong and what to do."""
    print(f"podbay: refusing to start: {message}", file=sys.stderr)
    raise SystemExit(1)


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def load_checked(config_file: str, backend: str | None, where: str = "PODBAY_BACKEND or backend: in podbay.yaml"):
    """podbay.yaml as the backend reads it, and the backend's plugin; refuse() otherwise,
    naming `where` the backend is chosen."""
    from ..backends import BackendError, chosen, load
    from ..config import load_config

    try:
        cfg = load_config(config_file, backend or None)
    except ConfigError as e:
        refuse(f"the configuration is invalid.\n{e.render()}")
    try:
        plugin = load(chosen(cfg, backend or None))
    except BackendError as e:
        refuse(f"{e} ({where})")
    return cfg, plugin


def start_portal(cfg, plugin, config_file: str, db_url: str, data_dir: str, hub_port: int):
    """The hub's portal (the spawner's too), the engine checked and the quota book reconciled
    with what runs, and the backend's background work on the hub's loop."""
    from ..backends import BackendError
    from ..spawner import shared_portal

    try:
        portal = shared_portal(config_file, db_url, data_dir, plugin.name)
    except (InventoryError, LedgerUnavailable) as e:
        refuse(str(e))
    plugin.prepare_volumes(cfg, portal)
    # Warm what opening people's secrets costs (cryptography's import, the table's mapping and
    # its query): the first spawns of a storm would otherwise wait for it, one at a time, inside
    # their quota-and-claim step (benchmarks/spawn_storm.py). A store of its own, keyless, that
    # opens nothing: the portal's reads its key at the first spawn, and a deployment may set it
    # after this (cluster.py: the chart's CryptKeeper.keys).
    from ..secrets import SecretStore

    SecretStore(portal.book, None).values("")
    try:
        side = plugin.start_hub(cfg, portal, hub_port)
    except BackendError as e:
        # The engine's refusal says "refusing to start the … backend" itself.
        print(f"podbay: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    if side.released:
        print(f"podbay: released devices of {len(side.released)} workspace(s) that no longer run: "
              + ", ".join(side.released), file=sys.stderr)
    # MIG instances made for what no longer holds them (a crash, a release while the hub was down).
    portal.tidy_mig()
    serve_in_hub(plugin, portal)
    return portal, side


def service_environment(c, key: str | None) -> dict[str, str]:
    """What podbay's service gets of the hub's environment: how to reach the engine, the
    browser settings, whether workspaces have origins of their own, the secrets key."""
    env = {k: os.environ[k] for k in (*ENGINE_ENV, *BROWSER_ENV) if os.environ.get(k)}
    # Whether other people's workspaces share the pages' origin (hub/browser.py): set before
    # configure(c) to count.
    subdomain_host = _value(c.JupyterHub.get("subdomain_host"), "")
    if subdomain_host:
        env["PODBAY_SUBDOMAIN_HOST"] = str(subdomain_host)
    if key:
        # People's secrets: the service opens them for the jobs it starts.
        env["PODBAY_SECRETS_KEY"] = key
    return env


def own_hub_api_url(c) -> str:
    """The hub's API as a process beside it reaches it: the loopback of the hub's own pod, on
    the port it binds (the chart: hub_bind_url http://:8081), never its Service. A managed
    service runs in the hub's pod, and JupyterHub would give it hub_connect_url
    (http://hub:8081): a call through the hub's own Service, which is hairpin traffic (a
    pod reaching itself through a Service's address), and not every CNI passes it. (A
    NetworkPolicy cannot block a pod's traffic to itself: that is not the issue.)"""
    from urllib.parse import urlparse

    bind = urlparse(str(_value(c.JupyterHub.get("hub_bind_url"), "") or "http://:8081"))
    base = str(_value(c.JupyterHub.get("base_url"), "/") or "/").strip("/")
    path = f"/{base}/hub/api" if base else "/hub/api"
    return f"http://127.0.0.1:{bind.port or 8081}{path}"


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

    from ..usage.policy import IdlePolicy, notices_for
    from ..usage.store import UsageStore

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
    paths = [str(Path(__file__).parent.parent / "templates" / "hub")]
    c.JupyterHub.template_paths = paths + [p for p in _value(c.JupyterHub.get("template_paths"), []) if p not in paths]
    c.JupyterHub.template_vars = {**_value(c.JupyterHub.get("template_vars"), {}),
                                  "podbay_pages": f"{base}services/podbay/pages/", "podbay_notices": notices}


def configure_culler(c, cfg, api_url: str | None = None) -> None:
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
    if api_url:  # else JUPYTERHUB_API_URL, which the hub gives it
        args.append(f"--url={api_url}")
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


def harden_pages(c, plugin, cfg) -> None:
    """The hub's own pages get Cross-Origin-Opener-Policy too (a workspace's page that opens
    one keeps no handle on it, in browsers that know noopener-allow-popups), and a deployment
    whose people's workspaces share the hub's origin is told what that leaves open."""
    settings = dict(_value(c.JupyterHub.get("tornado_settings"), {}))
    headers = dict(settings.get("headers") or {})
    headers.setdefault("Cross-Origin-Opener-Policy", "noopener-allow-popups")
    c.JupyterHub.tornado_settings = {**settings, "headers": headers}
    from ..browser import shares_origin

    # The service decides the same way, from what the hub passes on (below).
    env = {**os.environ, "PODBAY_SUBDOMAIN_HOST": str(_value(c.JupyterHub.get("subdomain_host"), "") or "")}
    if shares_origin(env, plugin.isolates(cfg)):
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


def manages_groups(c) -> bool:
    """Whether an authenticator keeps JupyterHub's groups itself (manage_groups, on any
    authenticator's section): the provider's groups, which teams' idp_groups map to teams.
    JupyterHub then refuses to start with load_groups."""
    return any(_value(section.get("manage_groups"), False) for section in _sections(c))


class TeamGroups(dict, DeferredConfig):
    """podbay.yaml's teams as JupyterHub's load_groups, decided when JupyterHub loads its
    configuration, after the whole jupyterhub_config.py ran: an authenticator set after
    configure(c) that manages groups (c.GenericOAuthenticator.manage_groups = True) gets
    none of podbay's loaded. Team members count anyway: PodbayConfig.teams_of reads them
    from podbay.yaml, and a team's idp_groups from the authenticator's groups. A dict until
    then, for a config that adds groups of its own after configure(c)."""

    def __init__(self, c, groups: dict, teams):
        super().__init__(groups)
        self._config, self._teams = c, set(teams)

    def get_value(self, trait) -> dict:
        if manages_groups(self._config):
            # The deployment's own groups stay (JupyterHub says what is wrong with them).
            return {name: group for name, group in self.items() if name not in self._teams}
        return dict(self)


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
