"""A docker workspace as a person's cluster account (beside a Slurm pool of people's jobs):
her groups, her entry in the container's password and group files, and folders in her home
made as her. The spawner (spawner.py) decides when; this is how."""

from __future__ import annotations

import grp
import io
import os
import subprocess
import tarfile
from pathlib import Path

from docker.errors import NotFound

from ...identity import ClusterAccount


def groups_of(account: ClusterAccount) -> tuple[list[int], dict[int, str]]:
    """The account's gids, and the cluster's names for them (where it has one)."""
    gids = os.getgrouplist(account.name, account.gid)
    names = {}
    for gid in gids:
        try:
            name = grp.getgrgid(gid).gr_name
        except KeyError:
            continue
        if ":" not in name and "\n" not in name:
            names[gid] = name
    return gids, names


def account_files(passwd: str, group: str, account: ClusterAccount, home: str,
                  groups: dict[int, str] | None = None) -> dict[str, str]:
    """The image's passwd and group with the account in them: its own line replaces any of
    the image's with its name or uid (jovyan is uid 1000, so may an account be); each of its
    groups (`groups`: gid → the cluster's name for it) the image does not have is added under
    its cluster name, with her as a member of the supplementary ones."""
    # Lines end at newlines only (str.splitlines would also split at \r, \x1c, \u2028 in a field).
    rows = [line.split(":") for line in passwd.split("\n") if line.strip()]
    # A login shell of the image's people (jovyan's), else root's (NGC images have no
    # people), never nobody's nologin.
    usable = [r for r in rows if len(r) == 7 and r[2].isdigit() and not r[6].endswith(("nologin", "false"))]
    shell = next((r[6] for r in usable if 1000 <= int(r[2]) < 60000), None) or \
        next((r[6] for r in usable if r[2] == "0"), "/bin/sh")
    kept = [":".join(r) for r in rows if not (r[0] == account.name or (len(r) > 2 and r[2] == str(account.uid)))]
    kept.append(f"{account.name}:x:{account.uid}:{account.gid}:{account.name}:{home}:{shell}")
    lines = []
    for line in group.split("\n"):
        if not line.strip():
            continue
        fields = line.split(":")
        if len(fields) == 4 and fields[2] not in {str(g) for g in (groups or {})} | {str(account.gid)}:
            # Her name in an image group that is not hers (an image's `sudo:x:27:ubuntu` when
            # she is ubuntu): initgroups would hand her that gid.
            fields[3] = ",".join(m for m in fields[3].split(",") if m != account.name)
            line = ":".join(fields)
        lines.append(line)
    have = {g.split(":")[2] for g in lines if len(g.split(":")) > 2}
    names = {g.split(":")[0] for g in lines}
    for gid, name in {account.gid: account.name, **(groups or {})}.items():
        if str(gid) in have:
            continue
        while name in names:  # the image has a group of that name with another gid
            name = f"{name}-{gid}"
        lines.append(f"{name}:x:{gid}:" + ("" if gid == account.gid else account.name))
        names.add(name)
    return {"passwd": "\n".join(kept) + "\n", "group": "\n".join(lines) + "\n"}


def write_account(client, container: str, account: ClusterAccount, home: str, groups: dict[int, str]) -> None:
    """Her account in the created container's /etc/passwd and /etc/group, before it starts:
    sshd (podbay ssh), `id`, the shell's prompt and git need a name for her uid, which the
    image does not know. `client`: Docker's low-level API client."""
    files = {}
    for name in ("passwd", "group"):
        try:
            stream, _ = client.get_archive(container, f"/etc/{name}")
        except NotFound:
            if name == "passwd":
                raise
            files[name] = ""  # an image without groups: hers are the first
            continue
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
            member = tar.extractfile(tar.getmember(name))
            if member is None:
                raise tarfile.TarError(f"/etc/{name} is not a plain file")
            # Bytes kept as they are (a GECOS field need not be UTF-8).
            files[name] = member.read().decode("utf-8", errors="surrogateescape")
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, text in account_files(files["passwd"], files["group"], account, home, groups).items():
            data = text.encode("utf-8", errors="surrogateescape")
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    client.put_archive(container, "/etc", out.getvalue())


def make_folders_as(account: ClusterAccount, gids: list[int], paths: list[Path]) -> None:
    """Folders in her home made as her (the volumes' mount points): Docker would make them as
    root, on the shared filesystem, where she could not write in them. As her, a link she put
    in the way leads only where she may write anyway. Nothing where the hub is not root (it
    cannot act as her): Docker makes them. OSError says why they could not be made."""
    if os.geteuid() != 0:
        return
    try:
        run = subprocess.run(["mkdir", "-p", "--", *map(str, paths)], user=account.uid, group=account.gid,
                             extra_groups=gids, cwd="/", env={"PATH": "/usr/bin:/bin"},
                             capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        raise OSError("the shared filesystem did not answer in 30 s") from None
    if run.returncode != 0:
        raise OSError(run.stderr.strip())
