"""`podbay doctor` for the slurm backend: what the service needs of Slurm from the node it
runs on — Slurm's commands, a controller that answers, munge, and the partitions, accounts
and GPU GRES podbay.yaml names — each checked with Slurm's own commands, as the service
calls them (its environment, SLURM_CONF)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess

from ...config import PodbayConfig
from ...doctor import Finding
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

