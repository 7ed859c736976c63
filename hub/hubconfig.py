"""JupyterHub configuration for podbay, as one function a jupyterhub_config.py calls.

    from podbay.hub.hubconfig import configure
    configure(c)

Settings come from the environment that `podbay up` prepares (and operators may set):
PODBAY_CONFIG, PODBAY_DATA_DIR, PODBAY_PORT, PODBAY_DB_URL, PODBAY_DEMO_PASSWORD,
PODBAY_KEEP_WORKSPACES, PODBAY_SPAWNER, PODBAY_PAUSE_JOBS (queue jobs, start none). Ports: the public one, +1 the hub, +2 the proxy's
API, +3 podbay's REST service.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from .config import ConfigError
from .inventory import InventoryError


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


def configure(c) -> None:
    config_file = os.path.abspath(_env("PODBAY_CONFIG", "config/podbay.yaml"))
    data_dir = Path(_env("PODBAY_DATA_DIR", ".podbay")).absolute()
    port = int(_env("PODBAY_PORT", "8000"))
    data_dir.mkdir(parents=True, exist_ok=True)

    c.JupyterHub.bind_url = f"http://127.0.0.1:{port}"
    c.JupyterHub.hub_bind_url = f"http://127.0.0.1:{port + 1}"
    c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{port + 2}"
    c.ConfigurableHTTPProxy.command = [find_proxy()]
    c.ConfigurableHTTPProxy.pid_file = str(data_dir / "proxy.pid")
    c.JupyterHub.db_url = f"sqlite:///{data_dir / 'jupyterhub.sqlite'}"
    c.JupyterHub.cookie_secret_file = str(data_dir / "jupyterhub_cookie_secret")
    c.JupyterHub.allow_named_servers = True
    # podbay's quota decides how many workspaces a user runs, not a flat limit.
    c.JupyterHub.named_server_limit_per_user = 0
    # With PODBAY_KEEP_WORKSPACES=1 a hub restart leaves workspaces running (and their
    # devices claimed); by default stopping the hub stops everything.
    keep = _env("PODBAY_KEEP_WORKSPACES", "0") == "1"
    c.JupyterHub.cleanup_servers = not keep

    from .config import load_config

    try:
        cfg = load_config(config_file)
    except ConfigError as e:
        print(f"podbay: refusing to start, the configuration is invalid.\n{e.render()}", file=sys.stderr)
        raise SystemExit(1) from None

    c.JupyterHub.load_groups = {name: {"users": list(team.members)} for name, team in cfg.teams.items()}
    c.Authenticator.admin_users = set(cfg.admins)
    password = _env("PODBAY_DEMO_PASSWORD")
    if password:
        c.JupyterHub.authenticator_class = "podbay-demo"
        c.DemoAuthenticator.demo_users = set(cfg.demo_users())
        c.DemoAuthenticator.password = password
        c.Authenticator.allowed_users = set(cfg.demo_users())

    spawner = _env("PODBAY_SPAWNER", "podbay-local")
    c.JupyterHub.spawner_class = spawner
    singleuser = Path(sys.executable).parent / "jupyterhub-singleuser"
    c.Spawner.cmd = [str(singleuser) if singleuser.exists() else "jupyterhub-singleuser"]
    c.Spawner.default_url = "/lab"
    c.Spawner.http_timeout = 60
    c.Spawner.start_timeout = 90
    if spawner == "simple":
        # Plain JupyterHub, for comparisons (benchmarks/spawn_latency.py).
        c.SimpleLocalProcessSpawner.home_dir_template = str(data_dir / "plain-homes" / "{username}")
        c.Spawner.args = ["--allow-root"] if os.getuid() == 0 else []
        return

    c.PodbaySpawnerMixin.config_file = config_file
    c.PodbaySpawnerMixin.data_dir = str(data_dir)
    db_url = _env("PODBAY_DB_URL") or f"sqlite:///{data_dir / 'ledger.sqlite'}"
    c.PodbaySpawnerMixin.db_url = db_url

    # podbay's REST service, run and restarted by the hub, reachable under /services/podbay/.
    c.JupyterHub.services = [{
        "name": "podbay",
        "url": f"http://127.0.0.1:{port + 3}",
        "command": [sys.executable, "-m", "podbay.hub.service"],
        "environment": {"PODBAY_CONFIG": config_file, "PODBAY_DATA_DIR": str(data_dir), "PODBAY_DB_URL": db_url,
                        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                        "PODBAY_PAUSE_JOBS": _env("PODBAY_PAUSE_JOBS", "0")},
        "display": False,
    }]
    # Only what it needs: resolve callers, read their groups and their servers' options.
    c.JupyterHub.load_roles = [{
        "name": "podbay-service",
        "services": ["podbay"],
        "scopes": ["list:users", "read:users", "read:users:groups", "read:servers"],
    }]

    from .spawners.local import PodbayLocalSpawner
    from .spawners.mixin import shared_portal

    try:
        portal = shared_portal(config_file, db_url, str(data_dir))
    except InventoryError as e:
        print(f"podbay: refusing to start: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    for vol in cfg.volumes:
        src = portal.volume_source(vol)
        if not Path(vol.source).is_absolute():
            # Relative sources are podbay's own (the demo's): create them.
            src.mkdir(parents=True, exist_ok=True)
    released = portal.ledger.reconcile(PodbayLocalSpawner.is_alive)
    if released:
        print(f"podbay: released devices of {len(released)} workspace(s) that no longer run: "
              + ", ".join(released), file=sys.stderr)
