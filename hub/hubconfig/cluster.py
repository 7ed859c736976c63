"""podbay's part of a hub that the Zero to JupyterHub chart runs (config/helm/values.yaml)."""

from __future__ import annotations

import os
from pathlib import Path

from .login import AuthError, configure_auth
from .start import (
    TeamGroups, _sections, _value, configure_culler, configure_pages, harden_pages, limit_usernames, load_checked,
    manages_groups, own_hub_api_url, refuse, service_environment, start_portal,
)


def configure_on_cluster(c) -> None:
    """podbay's part of a hub that the Zero to JupyterHub chart runs (config/helm/values.yaml,
    hub.extraConfig): the chart owns the ports, the proxy, the hub's database and the login;
    the values set podbay's spawner, its settings (c.PodbaySpawnerMixin) and the REST service.
    This checks podbay.yaml, takes teams and admins from it, reconciles the quota book with
    the pods that run, starts the cluster watch, and gives the service what it needs to reach
    the API server. It refuses to start the hub (exit 1) with a message where something is wrong."""
    from ..spawner import PodbaySpawnerMixin

    settings = PodbaySpawnerMixin(config=c)
    # Named in the values (c.PodbaySpawnerMixin.podbay_backend), else podbay.yaml's backend:.
    from ..settings import Podbay

    named = settings.podbay_backend or Podbay(config=c).backend or None
    cfg, plugin = load_checked(settings.config_file, named,
                               "c.PodbaySpawnerMixin.podbay_backend, c.Podbay.backend (PODBAY_BACKEND) "
                               "or backend: in podbay.yaml")
    backend = plugin.name
    spawner = c.JupyterHub.get("spawner_class")
    if spawner not in plugin.spawner_names(cfg):
        refuse(f"hub.config JupyterHub.spawner_class is {spawner!r}: podbay's {backend} backend needs "
               f"{plugin.spawner_for(cfg)!r} (or name another backend in c.PodbaySpawnerMixin.podbay_backend)")
    Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    # podbay.yaml's login, where it names one (else the chart's hub.config sets the authenticator).
    if cfg.auth.type != "demo":
        try:
            configure_auth(c, cfg, None, Path(settings.data_dir), None)
        except AuthError as e:
            refuse(str(e))
    # Teams are JupyterHub groups (the quota book reads a user's groups); an authenticator
    # that manages groups itself (from the identity provider's claims, set on any
    # authenticator's section, here or in a later extraConfig) keeps them: JupyterHub
    # refuses load_groups then (TeamGroups).
    if not manages_groups(c):
        groups = dict(_value(c.JupyterHub.get("load_groups"), {}))
        for name, team in cfg.teams.items():
            users = list(dict.fromkeys([*(groups.get(name) or {}).get("users", []), *team.members]))
            groups[name] = {**(groups.get(name) or {}), "users": users}
        c.JupyterHub.load_groups = TeamGroups(c, groups, cfg.teams)
    # podbay.yaml's admins, beside whatever the deployment names, on every section that
    # names admins (an authenticator's own section wins over Authenticator's).
    for section in [c.Authenticator, *(sec for sec in _sections(c) if "admin_users" in sec)]:
        section.admin_users = set(_value(section.get("admin_users"), set())) | set(cfg.admins)
    limit_usernames(c, cfg)
    harden_pages(c, plugin, cfg)
    # People's secrets are opened with the hub's crypt key (the chart's CryptKeeper.keys), known
    # before anything of the portal starts.
    keys = [k.decode() if isinstance(k, bytes) else str(k) for k in _value(c.CryptKeeper.get("keys"), [])]
    key = ";".join(keys) or os.environ.get("JUPYTERHUB_CRYPT_KEY")
    if key:
        os.environ["PODBAY_SECRETS_KEY"] = key
    portal, _side = start_portal(cfg, plugin, os.path.abspath(settings.config_file), settings.db_url,
                                 os.path.abspath(settings.data_dir), 8081)
    # The managed service inherits little of the hub's environment: how to reach the API
    # server (the pod's service account) and the key are passed on.
    for service in _value(c.JupyterHub.get("services"), []):
        if service.get("name") == "podbay":
            env = service.setdefault("environment", {})
            env.setdefault("PODBAY_BACKEND", backend)
            # The chart's own values for these win (setdefault).
            for k, v in service_environment(c, key).items():
                env.setdefault(k, v)
            env.setdefault("PODBAY_HUB_API_URL", own_hub_api_url(c))
    # On a cluster the chart's own culler (cull.enabled) is the same jupyterhub-idle-culler:
    # podbay.yaml's idle.culler is used only where the chart runs none.
    if not any(s.get("name") == "jupyterhub-idle-culler" for s in _value(c.JupyterHub.get("services"), [])):
        configure_culler(c, cfg, own_hub_api_url(c))
    configure_pages(c, portal)
