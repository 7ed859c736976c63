"""`podbay doctor` for the slurm backend: what the service needs of Slurm from the node it
runs on — Slurm's commands, a controller that answers, munge, and the partitions, accounts
and GPU GRES podbay.yaml names — each checked with Slurm's own commands, as the service
calls them (its environment, SLURM_CONF). With `run_as: person`, also the site's set-up for
acting as people: their accounts, the sudoers rules (tried, not read), and whether Slurm
lets the service see their jobs."""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import subprocess

from ...config import PodbayConfig
from ...doctor import Finding
from ...identity import NoClusterAccount, cluster_account
from ...training import BackendUnavailable
from .commands import Commands, SlurmError
from .nodes import parse_nodes

PROGRAMS = ("sbatch", "squeue", "scancel", "scontrol", "sacct", "sacctmgr")


async def diagnose(cfg: PodbayConfig) -> list[Finding]:
    return await asyncio.to_thread(_diagnose, cfg)


def _diagnose(cfg: PodbayConfig) -> list[Finding]:
    settings = cfg.slurm
    commands = Commands(settings)
    missing = [p for p in PROGRAMS if shutil.which(commands.program(p)) is None]
    if missing:
        return [Finding.fail(f"Slurm's commands are missing on this node: {', '.join(missing)}",
                             "install Slurm's client (Debian: slurm-client) where podbay's service runs, or set "
                             "slurm.bin_dir")]
    out = [Finding.ok("Slurm's commands are installed")]
    try:
        ping = commands.run("scontrol", "ping", timeout=settings.timeout)
    except (BackendUnavailable, SlurmError) as e:
        return out + [Finding.fail(f"slurmctld does not answer: {e}",
                                   "check SLURM_CONF (slurm.conf) and that this node reaches the controller")]
    if " is UP" not in ping:
        return out + [Finding.fail(f"slurmctld is not up: {ping.strip()}", "start slurmctld, or check slurm.conf")]
    out.append(Finding.ok(f"slurmctld answers ({ping.strip().splitlines()[0]})"))
    try:
        config = commands.run("scontrol", "show", "config", timeout=settings.timeout)
    except (BackendUnavailable, SlurmError):
        config = ""
    out.append(_munge(_munge_socket(config)))
    if settings.run_as == "person":
        out += _people(cfg, commands, config)
    try:
        nodes = parse_nodes(commands.run("scontrol", "show", "node", "--oneliner", timeout=settings.timeout),
                            settings.gres)
        parts = commands.run("scontrol", "show", "partition", "--oneliner", timeout=settings.timeout)
    except (BackendUnavailable, SlurmError) as e:
        return out + [Finding.fail(f"Slurm's nodes and partitions cannot be read: {e}", "check slurm.conf")]
    have = {line.split("PartitionName=", 1)[1].split()[0] for line in parts.splitlines() if "PartitionName=" in line}
    for pool in cfg.pools:
        partition = settings.partition(cfg, pool)
        if partition is None:
            continue
        if partition not in have:
            out.append(Finding.fail(f"pool {pool}: Slurm has no partition {partition!r} (it has: "
                                    f"{', '.join(sorted(have)) or 'none'})",
                                    f"set slurm.partitions.{pool} (or pools.{pool}.queue) to a partition of slurm.conf"))
            continue
        members = [n for n in nodes if partition in n.partitions]
        gpus = sum(n.gpus for n in members)
        if not gpus:
            out.append(Finding.fail(f"pool {pool}: partition {partition}'s nodes offer no gres/{settings.gres}",
                                    f"declare the GPUs as GRES in slurm.conf and gres.conf (Gres={settings.gres}:N), "
                                    "or set slurm.gres to the GRES that counts them"))
        else:
            out.append(Finding.ok(f"pool {pool}: partition {partition}, {len(members)} nodes, {gpus} GPUs"))
    accounts = sorted({*settings.accounts.values(), *(a for a in [settings.default_account] if a)})
    if accounts:
        try:
            known = set(commands.run("sacctmgr", "-n", "-P", "show", "account", "format=Account",
                                     timeout=settings.timeout).split())
        except (BackendUnavailable, SlurmError) as e:
            out.append(Finding.warn(f"Slurm's accounts cannot be read ({e}): slurmdbd may be down",
                                    "check slurmdbd; jobs of teams whose account is missing are refused"))
        else:
            lacking = [a for a in accounts if a not in known]
            if lacking:
                out.append(Finding.fail(f"Slurm has no account {', '.join(lacking)} (slurm.accounts): those teams' "
                                        "jobs are refused", "sacctmgr add account NAME (and add the users to it), or "
                                                            "fix slurm.accounts"))
            else:
                out.append(Finding.ok(f"Slurm's accounts exist ({', '.join(accounts)})"))
    return out


def _people(cfg: PodbayConfig, commands: Commands, config: str) -> list[Finding]:
    """Whether the service can act as the people podbay.yaml names, as it will."""
    out = []
    if os.geteuid() == 0:
        out.append(Finding.warn("the service runs as root: it may act as anyone, not only as your people",
                                "run the hub as an account of its own, with config/slurm/sudoers installed"))
    names = sorted({m for team in cfg.teams.values() for m in team.members} | set(cfg.cluster_accounts.table))
    found, lacking = [], []
    for name in names:
        try:
            found.append(cluster_account(cfg, name))
        except NoClusterAccount as e:
            lacking.append(f"{name} ({e.args[0].split(':')[0]})")
    if lacking:
        out.append(Finding.warn(f"people without a usable cluster account: {'; '.join(lacking)}",
                                "create their accounts, or map their logins (cluster_accounts.table)"))
    out += _shared_filesystem(cfg, found)
    if shutil.which(commands.settings.sudo) is None:
        return out + [Finding.fail(f"{commands.settings.sudo} is not installed: jobs cannot run as their people",
                                   "install sudo and config/slurm/sudoers (docs/howto/slurm.md)")]
    if not found:
        return out + [Finding.warn("no person to try the sudoers rules as (no team member has an account)",
                                   "list members under teams:, or map them in cluster_accounts.table")]
    account = found[0].name
    # What a submit does: sbatch as the person, a descriptor kept open, SLURM_CONF kept.
    read, write = os.pipe()
    os.close(write)
    try:
        argv = commands.argv("sbatch", ("--test-only", "--wrap=true", f"--export-file={read}"), account, (read,))
        tried = subprocess.run(argv, capture_output=True, text=True, timeout=commands.settings.timeout,
                               env=commands.env, pass_fds=(read,), stdin=subprocess.DEVNULL, cwd="/")
    except (OSError, subprocess.SubprocessError) as e:
        tried = subprocess.CompletedProcess([], 1, "", str(e))
    finally:
        os.close(read)
    words = " ".join(tried.stderr.split())
    if tried.returncode == 0 or "to start at" in words or "allocation failure" in words.lower():
        out.append(Finding.ok(f"the service submits as the person (tried as {account}: sudo, its descriptor "
                              "and SLURM_CONF reach sbatch)"))
    elif "sudo" in words.lower() or "not allowed" in words:
        out.append(Finding.fail(f"sudo does not let the service submit as {account}: {words}",
                                "install config/slurm/sudoers (closefrom_override and env_keep SLURM_CONF "
                                "included) for the service's account and your people's group"))
    else:
        out.append(Finding.fail(f"sbatch as {account} fails: {words}",
                                "check SLURM_CONF reaches it (env_keep) and the account's association "
                                "(sacctmgr add user)"))
    for program in ("scancel", "mkdir", "dd"):
        listed = subprocess.run([commands.settings.sudo, "-n", "-l", "-u", account, commands.program(program)
                                 if program == "scancel" else program], capture_output=True, text=True, timeout=10)
        if listed.returncode != 0:
            out.append(Finding.fail(f"sudo does not let the service run {program} as {account}",
                                    "install config/slurm/sudoers: cancel and logs need it"))
    root = subprocess.run([commands.settings.sudo, "-n", "-l", "-u", "root", commands.program("sbatch")],
                          capture_output=True, text=True, timeout=10)
    if root.returncode == 0 and os.geteuid() != 0:
        out.append(Finding.warn("the service may run sbatch as root",
                                "narrow its sudoers rule to your people's group (config/slurm/sudoers)"))
    private = next((line.split("=", 1)[1].strip() for line in config.splitlines()
                    if line.split("=", 1)[0].strip() == "PrivateData"), "")
    if "jobs" in private.lower() and os.geteuid() != 0:
        me = pwd.getpwuid(os.geteuid()).pw_name
        try:
            level = commands.run("sacctmgr", "-n", "-P", "show", "user", me, "format=AdminLevel").strip()
        except (BackendUnavailable, SlurmError):
            level = ""
        if level not in ("Operator", "Administrator"):
            out.append(Finding.fail(f"Slurm hides people's jobs from the service (PrivateData={private})",
                                    f"sacctmgr modify user {me} set adminlevel=operator"))
    return out


def _shared_filesystem(cfg: PodbayConfig, found: list) -> list[Finding]:
    """Whether this server sees the shared filesystem where podbay.yaml says: each mapped
    folder, and each person's home (workspaces mount it; their jobs' files are read there)."""
    out = []
    for cluster, here in cfg.cluster_accounts.paths.items():
        if not os.path.isdir(here):
            out.append(Finding.fail(f"cluster_accounts.paths: {here} (the nodes' {cluster}) is not a folder on this "
                                    "server", "mount the shared filesystem there, or correct the mapping"))
    missing = [f"{a.name} ({a.home_here})" for a in found if not a.home_here.is_dir()]
    if missing:
        out.append(Finding.fail(f"homes this server does not see: {', '.join(missing)}",
                                "mount the shared filesystem the homes are on here, and say where in "
                                "cluster_accounts.paths if not at the nodes' paths"))
    elif found:
        out.append(Finding.ok(f"this server sees the people's homes ({len(found)})"
                              + (" through cluster_accounts.paths" if cfg.cluster_accounts.paths else "")))
    return out


def _munge_socket(config: str) -> str | None:
    """munged's socket as slurm.conf gives it (AuthInfo=socket=…), else munge's default."""
    for line in config.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "AuthInfo":
            for part in value.strip().split(","):
                if part.startswith("socket="):
                    return part.removeprefix("socket=")
    return None


def _munge(socket: str | None) -> Finding:
    """A credential made and read back on the socket Slurm uses: what every Slurm command
    does under the hood."""
    if shutil.which("munge") is None or shutil.which("unmunge") is None:
        return Finding.warn("munge's commands are not installed here; Slurm's own answer above stands",
                            "install munge to check credentials directly")
    at = [f"--socket={socket}"] if socket else []
    try:
        cred = subprocess.run(["munge", "-n", *at], capture_output=True, timeout=10, check=True).stdout
        subprocess.run(["unmunge", *at], input=cred, capture_output=True, timeout=10, check=True)
    except (subprocess.SubprocessError, OSError) as e:
        return Finding.fail(f"munge cannot make and read a credential ({e})",
                            "start munged with the cluster's key (/etc/munge/munge.key)")
    return Finding.ok("munge makes and reads credentials")

