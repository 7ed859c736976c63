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


def launcher(binds: list[tuple[str, str, bool]], quiet: bool = False, user: str | None = None,
             env_file: str | None = None, unprivileged: bool | None = None, home: str | None = None) -> list[str]:
    """The command prefix that runs what follows it with `binds` (source, target, read-only)
    mounted in a private mount namespace: for workspaces (local spawner) and jobs (local
    training backend) alike; as `user` (an account name) once mounted, where given (the hub
    is root and the workspace is the person's), with the environment in `env_file` (root's
    part runs with none of the person's: LD_PRELOAD and the like are theirs to set, for
    their own processes only). `unprivileged`: whether it runs without root (default: as
    this process does; a Slurm job as the person never has it, whoever submits). `home`: the
    account's home as this server mounts it, where not the password database's (the nodes')."""
    unshare = ["unshare", "--mount", "--propagation", "private"]
    if unprivileged if unprivileged is not None else os.getuid() != 0:
        # Without root, a user namespace grants the right to mount, as the same uid; its
        # capabilities kept past unshare's exec (mount(8) has none otherwise), and dropped
        # again before the command runs (main).
        unshare[1:1] = ["--user", "--map-current-user", "--keep-caps"]
    args = [f"--bind={src}:{dst}:{'ro' if ro else 'rw'}" for src, dst, ro in binds]
    who = [f"--user={user}"] if user else []
    if user and env_file:
        who.append(f"--env-file={env_file}")
    if user and home:
        who.append(f"--home={home}")
    # -I: Python reads no PYTHON* variable and imports nothing from the working directory
    # (root starts it; the directory may be a person's home).
    return unshare + [sys.executable, "-I", "-m", "podbay.hub.launch", *(["--quiet"] if quiet else []), *who, *args,
                      "--"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="podbay.hub.launch")
    parser.add_argument("--bind", action="append", default=[], metavar="SRC:DST:ro|rw")
    parser.add_argument("--quiet", action="store_true", help="say nothing of the mounts (a job's output is the user's)")
    parser.add_argument("--user", help="the account to become once the volumes are mounted")
    parser.add_argument("--env-file", help="the environment to run the command with, once it is the account's "
                                           "(NAME=value, each ended by a NUL; removed once read)")
    parser.add_argument("--home", help="the account's home on this server, where not its password entry's")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command to run after --")

    account = pwd.getpwnam(args.user) if args.user else None
    # Root's own choice (the hub's), never the person's environment.
    home = args.home or (account.pw_dir if account else None)
    env = dict(os.environ)
    if args.env_file:
        with open(args.env_file, "rb") as f:
            data = f.read()
        os.unlink(args.env_file)
        env = dict(item.decode().split("=", 1) for item in data.split(b"\0") if b"=" in item)
    for spec in args.bind:
        src, dst, mode = spec.rsplit(":", 2)
        try:
            # In a person's home, the mount point is reached without following a link the
            # person made (~/data -> /etc), and made as them.
            parent, name = _mount_point(dst, account, home) if account is not None else _plain_mount_point(dst)
        except OSError as e:
            sys.exit(f"podbay: cannot mount volume {src} at {dst}: {e.strerror or e}")
        try:
            _bind(src, parent, name, mode)
        except OSError as e:
            sys.exit(f"podbay: cannot mount volume {src} at {dst}: {e.strerror or e}")
        finally:
            os.close(parent)
        if not args.quiet:
            print(f"podbay: mounted {src} at {dst} ({mode})", flush=True)

    if account is not None:
        # Groups first, then the gid, then the uid: after setuid nothing else may change.
        os.initgroups(account.pw_name, account.pw_gid)
        os.setgid(account.pw_gid)
        os.setuid(account.pw_uid)
        if os.getuid() != account.pw_uid or os.geteuid() != account.pw_uid:
            sys.exit(f"podbay: could not become {account.pw_name}; refusing to start")
        try:
            os.chdir(home)
        except OSError as e:
            sys.exit(f"podbay: {account.pw_name} cannot enter their home {home}: {e.strerror}")
    elif os.getuid() != 0 and args.bind:
        _lock_mounts()
        # Until the lock another process of theirs could have changed a mount: what the
        # command gets is checked again, locked.
        for spec in args.bind:
            src, dst, mode = spec.rsplit(":", 2)
            try:
                want, got = os.stat(src), os.stat(dst)
                changed = (want.st_dev, want.st_ino) != (got.st_dev, got.st_ino) or \
                    (mode == "ro" and not os.statvfs(dst).f_flag & os.ST_RDONLY)
            except OSError:
                changed = True
            if changed:
                sys.exit(f"podbay: volume {src} at {dst} changed while it was mounted; refusing to start")
    _drop_ambient_capabilities()
    os.execvpe(command[0], command, env)


def _libc():
    import ctypes

    return ctypes, ctypes.CDLL(None, use_errno=True)


def _lock_mounts() -> None:
    """Without root the mounts were made in a user namespace of the person's own, where any
    other process of theirs (a shell on the node, another job) could enter and remount a
    read-only volume writable. Moved into a namespace below it, the command sees copies the
    kernel locks (a less privileged namespace may not change them), whoever enters it."""
    ctypes, libc = _libc()
    clone_newns, clone_newuser = 0x00020000, 0x10000000
    uid, gid = os.getuid(), os.getgid()
    if libc.unshare(clone_newuser | clone_newns) != 0:
        sys.exit(f"podbay: cannot lock the volumes' mounts: {os.strerror(ctypes.get_errno())}")
    # The same uid and gid inside: the person's files stay theirs, and nothing else is mapped.
    for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
        try:
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
        except OSError as e:
            sys.exit(f"podbay: cannot lock the volumes' mounts ({name}: {e.strerror or e})")


def _drop_ambient_capabilities() -> None:
    """Nothing unshare --keep-caps kept reaches the command: it runs with no capability, so
    it cannot remount a read-only volume writable in its namespace."""
    ctypes, libc = _libc()
    PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
    if libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0:
        sys.exit(f"podbay: cannot drop capabilities: {os.strerror(ctypes.get_errno())}")


def _plain_mount_point(path: str) -> tuple[int, str]:
    os.makedirs(path, exist_ok=True)
    path = os.path.abspath(path)
    return os.open(os.path.dirname(path), os.O_PATH | os.O_DIRECTORY), os.path.basename(path)


def _mount_point(path: str, account, home: str) -> tuple[int, str]:
    """The mount point under the account's home as (an O_PATH descriptor of its folder, its
    name), each folder on the way made as the account where missing and taken without
    following a link: what is mounted on is in the home, whatever the person does to it."""
    rel = os.path.relpath(os.path.abspath(path), home)
    parts = [p for p in rel.split(os.sep) if p not in ("", ".")]
    if not parts or parts[0] == ".." or os.path.isabs(rel):
        raise OSError(f"{path} is not under {home}")
    fd = os.open(os.path.realpath(home), os.O_PATH | os.O_DIRECTORY)
    try:
        for i, part in enumerate(parts):
            try:
                nxt = os.open(part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            except FileNotFoundError:
                folder = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_DIRECTORY)
                try:
                    _as(account, lambda: os.mkdir(part, 0o755, dir_fd=folder))
                finally:
                    os.close(folder)
                nxt = os.open(part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            if i == len(parts) - 1:
                os.close(nxt)
                return fd, part
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        raise
    raise AssertionError("unreachable")


def _mount(args: list[str], fd: int) -> None:
    """mount(8) on /proc/self/fd/<fd>, the path as given (never canonicalised: that would
    follow the person's links again)."""
    done = subprocess.run(["mount", "--no-canonicalize", *args], capture_output=True, text=True, pass_fds=(fd,),
                          env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    if done.returncode != 0:
        raise OSError(done.stderr.strip() or f"mount exited with {done.returncode}")


def _bind(src: str, parent: int, name: str, mode: str) -> None:
    """Bind `src` on `name` in `parent` (nosuid, nodev, read-only where asked): the bind on
    the folder's descriptor, the flags on the new mount's root, reached from the parent and
    checked to be `src`'s before anything is changed on it."""
    target = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=parent)
    try:
        _mount(["--bind", src, f"/proc/self/fd/{target}"], target)
    finally:
        os.close(target)
    top = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=parent)
    try:
        want, got = os.stat(src), os.fstat(top)
        if (want.st_dev, want.st_ino) != (got.st_dev, got.st_ino):
            raise OSError("the mount point changed while it was mounted on; refusing to start")
        _mount(["-o", "remount,bind,nosuid,nodev" + (",ro" if mode == "ro" else ""), f"/proc/self/fd/{top}"], top)
        if mode == "ro" and not os.fstatvfs(top).f_flag & os.ST_RDONLY:
            raise OSError("it should be read-only but is writable; refusing to start")
    finally:
        os.close(top)


def _as(account, make) -> None:
    """`make()` with the account's uid and gid as the effective ones (so it is theirs, and
    only where they may write)."""
    os.setegid(account.pw_gid)
    os.seteuid(account.pw_uid)
    try:
        make()
    finally:
        os.seteuid(0)
        os.setegid(0)


if __name__ == "__main__":
    main()
