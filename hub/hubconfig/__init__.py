"""JupyterHub's configuration for podbay, as one function a jupyterhub_config.py calls:
`configure(c)` for the hub `podbay up` runs (or one's own, c.Podbay.* first), and
`configure_on_cluster(c)` in the Zero to JupyterHub chart's hub.extraConfig.

- `settings`: c.Podbay, each setting with its environment variable and default;
- `embedded`: configure (ports, proxy, TLS, the hub's database, the demo login);
- `cluster`: configure_on_cluster (the chart owns ports, proxy, database and login);
- `start`: what both do the same way (checks, the portal, the service's environment,
  the hub's pages, the culler);
- `login`: podbay.yaml's auth: as JupyterHub's authenticator.
"""

from .cluster import configure_on_cluster
from .embedded import check_public_ip, configure, find_proxy
from .login import AuthError, configure_auth, discover
from ..settings import Podbay
from .start import BROWSER_ENV, ENGINE_ENV, _serving, harden_pages, is_loopback, limit_usernames, serve_in_hub

__all__ = ["BROWSER_ENV", "ENGINE_ENV", "_serving", "AuthError", "Podbay", "check_public_ip", "configure", "configure_auth",
           "configure_on_cluster", "discover", "find_proxy", "harden_pages", "is_loopback", "limit_usernames",
           "serve_in_hub"]
