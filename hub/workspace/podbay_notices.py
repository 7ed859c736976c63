"""podbay's idle GPU notices in a workspace's terminals: run by /etc/profile.d at every
login shell (JupyterLab's terminals are login shells, and so are SSH sessions).

Standard library only: it is copied into workspace images beside podbay_sshd.py. It asks
podbay's service (PODBAY_SERVICE_URL, with the workspace's own JUPYTERHUB_API_TOKEN) and
prints the person's warnings and what the idle rules did lately; it says nothing, quickly,
when there is nothing to say or the service does not answer: a shell must never wait on it.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request


def fetch(timeout: float = 2.0) -> list[dict]:
    service = os.environ.get("PODBAY_SERVICE_URL")
    token = os.environ.get("JUPYTERHUB_API_TOKEN")
    if not service or not token:
        return []
    url = service.rstrip("/") + "/services/podbay/api/v1/notices"
    request = urllib.request.Request(url, headers={"Authorization": f"token {token}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return json.load(r)
    except (urllib.error.URLError, OSError, ValueError):
        return []


def lines(notices: list[dict], now: float, recent: float = 86400) -> list[str]:
    out = []
    for n in notices:
        if n.get("kind") == "warning":
            out.append(f"podbay: GPU idle: {n.get('message', '')}")
        elif now - float(n.get("at") or 0) < recent:
            out.append(f"podbay: {n.get('message', '')}")
    return out


def main() -> int:
    for line in lines(fetch(), time.time()):
        print(line, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
