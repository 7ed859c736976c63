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
import subprocess
import sys


def launcher(binds: list[tuple[str, str, bool]], quiet: bool = False) -> list[str]:
    """The command prefix that runs what follows it with `binds` (source, target, read-only)
    mounted in a private mount namespace: for workspaces (local spawner) and jobs (local
    training backend) alike."""
    unshare = ["unshare", "--mount", "--propagation", "private"]
    if os.getuid() != 0:
        # Without root, a user namespace grants the right to mount, as the same uid.
        unshare[1:1] = ["--user", "--map-current-user"]
    args = [f"--bind={src}:{dst}:{'ro' if ro else 'rw'}" for src, dst, ro in binds]
    return unshare + [sys.executable, "-m", "podbay.hub.launch", *(["--quiet"] if quiet else []), *args, "--"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="podbay.hub.launch")
    parser.add_argument("--bind", action="append", default=[], metavar="SRC:DST:ro|rw")
    parser.add_argument("--quiet", action="store_true", help="say nothing of the mounts (a job's output is the user's)")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command to run after --")

    for spec in args.bind:
        src, dst, mode = spec.rsplit(":", 2)
        try:
            os.makedirs(dst, exist_ok=True)
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

    os.execvp(command[0], command)


if __name__ == "__main__":
    main()
