"""What runs inside workspaces, copied into the images as is (standard library only), and
the settings workspaces start with.

A new person's workspace starts quiet: no JupyterLab news question (nor a call to the
outside for news or updates), no VS Code Restricted Mode, trust prompt, welcome tab or chat
panel. JupyterLab's and VS Code's are default settings: a person's own settings win. The
Jupyter server's two (no news feed, no update check against PyPI) are the site's. Images
install them (images/common/install-workspace.sh); workspaces that run the hub's own Python
(local, and Slurm without a container) get them through JUPYTER_CONFIG_PATH, which Jupyter
reads before a person's ~/.jupyter (so there the server's two are podbay's)."""

from __future__ import annotations

import os
from pathlib import Path

# Not resolved: a Slurm node reaches the hub's software tree by the path the hub runs it from.
HERE = Path(os.path.abspath(__file__)).parent
# A Jupyter config folder: JupyterLab's default settings (labconfig/) and the server's.
JUPYTER_CONFIG = HERE / "jupyter"
# code-server's user settings, seeded at a person's first start (their home is a mount).
CODE_SERVER_SETTINGS = HERE / "code-server-settings.json"


def quiet_jupyter(env: dict[str, str]) -> dict[str, str]:
    """`env` with podbay's Jupyter config folder on JUPYTER_CONFIG_PATH, after any the site
    set there (which win over it)."""
    paths = [p for p in env.get("JUPYTER_CONFIG_PATH", "").split(os.pathsep) if p]
    return {**env, "JUPYTER_CONFIG_PATH": os.pathsep.join([*paths, str(JUPYTER_CONFIG)])}
