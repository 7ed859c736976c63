"""Who a person is on the cluster: the Unix account their Slurm jobs run as.

A person's podbay name (their login, which the hub verified) maps to an account by
`cluster_accounts:` — the same name by default, a table entry, or the part before the @ of
the site's own domain where the identity provider's names differ. The account must exist on this node as the
cluster sees it (the site's LDAP or SSSD through NSS, or /etc/passwd) and must not be a
system account: nobody's job ever runs as root, a daemon, nobody, or the service itself.

Nothing of a request takes part: the account follows from the authenticated name alone.
"""

from __future__ import annotations

import os
import posixpath
import pwd
import re
from dataclasses import dataclass
from pathlib import Path

from .config import PodbayConfig
from .config.models import ACCOUNT_NAME


@dataclass(frozen=True)
class ClusterAccount:
    name: str
    uid: int
    gid: int
    # The home the cluster gives the account (on the site's shared filesystem), as its nodes
    # see it.
    home: Path
    # The same folder as this server sees it (cluster_accounts.paths).
    home_here: Path


class NoClusterAccount(ValueError):
    """A person podbay cannot act for on the cluster, in words they can act on."""


def account_name(cfg: PodbayConfig, user: str) -> str:
    """The account name a podbay user maps to (not checked against the system)."""
    ca = cfg.cluster_accounts
    name = ca.table.get(user)
    if name is None:
        local, at, domain = user.rpartition("@")
        # Only the site's own domain: alice@elsewhere.example is not the cluster's alice.
        name = local if ca.strip_domain and at and domain.lower() == ca.strip_domain.lower() else user
    if not re.fullmatch(ACCOUNT_NAME, name):
        raise NoClusterAccount(
            f"your login {user!r} is not a cluster account name: ask your platform team to map it "
            "(cluster_accounts.table in podbay.yaml)")
    return name


def cluster_account(cfg: PodbayConfig, user: str) -> ClusterAccount:
    """The person's cluster account; NoClusterAccount saying why there is none."""
    name = account_name(cfg, user)
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise NoClusterAccount(
            f"you have no account on the cluster (podbay looked for {name!r}): ask your platform team to "
            "create it, or to map your login to yours (cluster_accounts.table)") from None
    if (entry.pw_uid < cfg.cluster_accounts.min_uid or entry.pw_uid in (65534, os.geteuid())
            or entry.pw_name in cfg.cluster_accounts.never):
        raise NoClusterAccount(
            f"the account {name!r} is a system account (uid {entry.pw_uid}): podbay runs nobody's jobs as one; "
            "ask your platform team to map your login to your own account")
    home = entry.pw_dir
    if (not home.startswith("/") or home.startswith("//") or any(c in home for c in ":\n")
            or posixpath.normpath(home) != home.rstrip("/")):
        # It is written into a container's /etc/passwd and matched against path mappings.
        raise NoClusterAccount(f"the account {name!r} has no usable home ({home!r}): ask your platform team")
    return ClusterAccount(name=entry.pw_name, uid=entry.pw_uid, gid=entry.pw_gid, home=Path(home),
                          home_here=Path(here(cfg, home)))


# The cluster's shared filesystem seen from two sides: its nodes (the password database's
# homes, what Slurm is told) and this server (what podbay, Docker and local workspaces open).

def _swap(path: str, pairs) -> str:
    """`path` with the longest matching prefix of `pairs` (whole path components) replaced."""
    best = None
    for old, new in pairs:
        if (path == old or path.startswith(old + "/")) and (best is None or len(old) > len(best[0])):
            best = (old, new)
    return path if best is None else best[1] + path[len(best[0]):]


def here(cfg: PodbayConfig, path: str | Path) -> str:
    """A path as the cluster's nodes see it, as this server sees it."""
    return _swap(str(path), cfg.cluster_accounts.paths.items())


def on_cluster(cfg: PodbayConfig, path: str | Path) -> str:
    """A path as this server sees it, as the cluster's nodes see it."""
    return _swap(str(path), ((h, c) for c, h in cfg.cluster_accounts.paths.items()))


def home_missing(account: ClusterAccount) -> str | None:
    """Why this server cannot give a workspace the account's home, in words; None: it can.
    The home itself, not what is in it (which the service may not see)."""
    if account.home_here.is_dir():
        return None
    where = f" (looked at {account.home_here}, cluster_accounts.paths)" if account.home_here != account.home else ""
    return (f"your cluster home {account.home} is not on this server{where}: the shared filesystem is not "
            "mounted here, or podbay.yaml does not say where (cluster_accounts.paths). Ask your platform team")

