"""Start a workspace with its volumes bind-mounted, inside a private mount namespace.

Run by the local spawner as
    unshare --mount --propagation private python -m podbay.hub.launch \\
        --bind SRC:DST:ro --bind SRC:DST:rw -- jupyterhub-singleuser ...
It mounts each volume, checks that read-only ones really are, then becomes the workspace
(exec), so the pid the hub watches is the workspace's own.
"""

from __future__ import annotations

import argparse
import os
import pwd
import subprocess
import sys


def launcher(binds: list[tuple[str, str, bool]], quiet: bool = False, user: str | None = None) -> list[str]:
    """The command prefix that runs what follows it with `binds` (source, target, read-only)
    mounted in a private mount namespace: for workspaces (local spawner) and jobs (local
    training backend) alike; as `user` (an account name) once mounted, where given (the hub
    is root and the workspace is the person's)."""
    unshare = ["unshare", "--mount", "--propagation", "private"]
    if os.getuid() != 0:
        # Without root, a user namespace grants the right to mount, as the same uid.
        unshare[1:1] = ["--user", "--map-current-user"]
    args = [f"--bind={src}:{dst}:{'ro' if ro else 'rw'}" for src, dst, ro in binds]
    who = [f"--user={user}"] if user else []
    return unshare + [sys.executable, "-m", "podbay.hub.launch", *(["--quiet"] if quiet else []), *who, *args, "--"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="podbay.hub.launch")
    parser.add_argument("--bind", action="append", default=[], metavar="SRC:DST:ro|rw")
    parser.add_argument("--quiet", action="store_true", help="say nothing of the mounts (a job's output is the user's)")
    parser.add_argument("--user", help="the account to become once the volumes are mounted")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command to run after --")

    account = pwd.getpwnam(args.user) if args.user else None
    for spec in args.bind:
        src, dst, mode = spec.rsplit(":", 2)
        try:
            _makedirs(dst, account)
        except OSError as e:
            sys.exit(f"podbay: cannot mount volume {src} at {dst}: {e.strerror}")
        opts = ["-o", "ro"] if mode == "ro" else []
        done = subprocess.run(["mount", "--bind", *opts, src, dst], capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"podbay: cannot mount volume {src} at {dst}: {done.stderr.strip()}")
        if mode == "ro" and not os.statvfs(dst).f_flag & os.ST_RDONLY:
            sys.exit(f"podbay: {dst} should be read-only but is writable; refusing to start")
        if not args.quiet:
            print(f"podbay: mounted {src} at {dst} ({mode})", flush=True)

    if account is not None:
        # Groups first, then the gid, then the uid: after setuid nothing else may change.
        os.initgroups(account.pw_name, account.pw_gid)
        os.setgid(account.pw_gid)
        os.setuid(account.pw_uid)
        if os.getuid() != account.pw_uid or os.geteuid() != account.pw_uid:
            sys.exit(f"podbay: could not become {account.pw_name}; refusing to start")
    os.execvp(command[0], command)


def _makedirs(path: str, account) -> None:
    """The mount point, made as the account it is for (a ~/data/<volume> of root's in a
    person's home would be in their way)."""
    missing = []
    p = os.path.abspath(path)
    while not os.path.exists(p):
        missing.append(p)
        p = os.path.dirname(p)
    os.makedirs(path, exist_ok=True)
    if account is not None:
        for made in missing:
            os.chown(made, account.pw_uid, account.pw_gid)


if __name__ == "__main__":
    main()
