"""Where the URL and token come from, first match wins:

1. `--url` / `--token` flags;
2. `PODBAY_URL` / `PODBAY_TOKEN`;
3. inside a workspace, `JUPYTERHUB_API_URL` + `JUPYTERHUB_API_TOKEN` (no login needed), with
   podbay's service at `PODBAY_SERVICE_URL`: the hub's own port, which is what a workspace
   reaches, serves the hub's API but not the services the proxy routes to;
4. what `podbay login` stored in $XDG_CONFIG_HOME/podbay/credentials.json (mode 0600).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path


class NotLoggedIn(Exception):
    pass


@dataclass(frozen=True)
class Credentials:
    url: str
    token: str
    source: str
    # Where podbay's service is when it is not under `url` (inside a workspace).
    service_url: str | None = None


def config_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "podbay"


def credentials_file() -> Path:
    return config_dir() / "credentials.json"


def hub_base(api_url: str) -> str:
    """`http://host/prefix/hub/api` → `http://host/prefix`."""
    url = api_url.rstrip("/")
    return url[: -len("/hub/api")] if url.endswith("/hub/api") else url


def resolve(url: str | None = None, token: str | None = None) -> Credentials:
    env = os.environ
    if url and token:
        return Credentials(url.rstrip("/"), token, "flags")
    if env.get("PODBAY_URL") and env.get("PODBAY_TOKEN"):
        return Credentials((url or env["PODBAY_URL"]).rstrip("/"), token or env["PODBAY_TOKEN"], "PODBAY_URL/PODBAY_TOKEN")
    if env.get("JUPYTERHUB_API_URL") and env.get("JUPYTERHUB_API_TOKEN"):
        return Credentials((url or hub_base(env["JUPYTERHUB_API_URL"])).rstrip("/"),
                           token or env["JUPYTERHUB_API_TOKEN"], "this workspace",
                           None if url else env.get("PODBAY_SERVICE_URL") or None)
    try:
        stored = json.loads(credentials_file().read_text())
        return Credentials((url or stored["url"]).rstrip("/"), token or stored["token"], str(credentials_file()))
    except (OSError, ValueError, KeyError):
        raise NotLoggedIn("not logged in: run `podbay login URL` (or set PODBAY_URL and PODBAY_TOKEN)") from None


def store(url: str, token: str) -> Path:
    path = credentials_file()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # Created 0600 from the start: the token is never readable by others, not even briefly.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"url": url.rstrip("/"), "token": token}, f)
    os.chmod(path, 0o600)
    return path


def forget() -> bool:
    try:
        credentials_file().unlink()
        return True
    except FileNotFoundError:
        return False
