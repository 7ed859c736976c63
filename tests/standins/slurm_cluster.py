"""A real Slurm cluster on the loopback, for the slurm backend's tests.

Debian's Slurm 22.05 daemons, each started here with a configuration written here:

- munged with a key of its own (its socket in the state folder: nothing of the system's);
- MariaDB on a free loopback port with a data folder of its own, and slurmdbd on it, so that
  finished jobs, their exit codes and the accounts' limits are real accounting;
- slurmctld and two slurmd nodes (Slurm's multiple-slurmd support: one host, two node names
  on their own ports), each with four GPUs as GRES on device files that stand for GPUs (Slurm
  counts and hands out GRES by file; it needs no driver);
- two partitions (`gpu`, `debug`), and two accounts (`vision`, limited to 8 GPUs at once;
  `nlp`, to 1).

Everything runs as root (SlurmUser=root), with no cgroups (proctrack/linuxproc) and no
system service touched. `python -m tests.standins.slurm_cluster --state DIR` runs one until Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

CLUSTER = "podbaytest"
NODES = ("n1", "n2")
GPUS_PER_NODE = 4
# team account -> its GRES limit (GrpTRES=gres/gpu=N)
# The contract suite's teams have accounts of their own, limited as their job_gpus are.
ACCOUNTS = {"vision": 8, "nlp": 1, "contract-vision": 2, "contract-nlp": 1}
PROGRAMS = ("munged", "mungekey", "mariadbd", "mariadb-install-db", "slurmdbd", "slurmctld", "slurmd",
            "sbatch", "squeue", "sacct", "sacctmgr", "scontrol", "sinfo", "scancel")


def missing_programs() -> list[str]:
    return [p for p in PROGRAMS if not shutil.which(p, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")]


def free_ports(n: int) -> list[int]:
    """n free ports, below the kernel's ephemeral range (tests/harness.py says why)."""
    from tests.harness import free_port_block

    base = free_port_block(n)
    return list(range(base, base + n))


@dataclass
class SlurmCluster:
    state: Path
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def conf(self) -> Path:
        return self.state / "etc" / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        """What Slurm's commands need to reach this cluster."""
        return {"SLURM_CONF": str(self.conf), "PATH": os.environ.get("PATH", "/usr/bin:/bin") + ":/usr/sbin"}

    def run(self, *argv: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(list(argv), capture_output=True, text=True, env={**os.environ, **self.env},
                              check=check, timeout=timeout)

    def daemon(self, name: str, argv: list[str]) -> None:
        log = (self.state / "log" / f"{name}.out").open("ab")
        self.procs[name] = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                            env={**os.environ, **self.env}, start_new_session=True)

    def stop_daemon(self, name: str, timeout: float = 180) -> None:
        """Stop a daemon as an operator does (SIGTERM) and wait until it has: slurmctld saves
        its state on the way out, which takes longer on a busy machine. The kill is for a
        daemon that hangs, not for a slow one: killed mid-save, its next start finds the
        state broken and refuses (every test after it then meets 'Connection refused')."""
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise RuntimeError(f"{name} did not stop in {timeout:.0f} s of SIGTERM: killed") from None

    def start_daemon_again(self, name: str) -> None:
        """slurmctld after a test stopped it (state kept in StateSaveLocation)."""
        argv = {"slurmctld": ["slurmctld", "-D"]}[name]
        self.daemon(name, argv)
        proc = self.procs[name]

        def answers() -> bool:
            if proc.poll() is not None:
                log = (self.state / "log" / f"{name}.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{name} exited with status {proc.returncode} as it started again:\n{log}")
            ping = self.run("scontrol", "ping", check=False)
            return ping.returncode == 0 and "UP" in ping.stdout

        # Polls, their limits for a machine that never gets there (they return at the event).
        wait_for(answers, 120, "slurmctld to answer again")
        # Its nodes are UNKNOWN until their slurmd registers again.
        wait_for(lambda: not any("unk" in state or "not_resp" in state for state in
                                 self.run("sinfo", "-h", "-N", "-o", "%T", check=False).stdout.split()),
                 120, "the nodes to register again")

    def stop(self) -> None:
        # Jobs first: a slurmd that stops leaves its jobs' slurmstepd running.
        if "slurmctld" in self.procs:
            with contextlib.suppress(Exception):
                every = self.run("squeue", "-h", "-o", "%i", check=False, timeout=10).stdout.split()
                if every:  # everyone's: the identity tests' jobs are their people's
                    self.run("scancel", *every, check=False, timeout=10)
                wait_for(lambda: not self.run("squeue", "-h", check=False, timeout=10).stdout.strip(), 15,
                         "the jobs to end")
        hung = []
        for name in ["slurmd-n2", "slurmd-n1", "slurmctld", "slurmdbd", "mariadb"]:
            try:
                self.stop_daemon(name)
            except RuntimeError as e:  # killed: the others are stopped all the same
                hung.append(str(e))
        pid = self.state / "munge" / "munged.pid"
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(pid.read_text()), signal.SIGTERM)
        if hung:
            raise RuntimeError("; ".join(hung))


# The people of the identity tests, as real Unix accounts with their Slurm associations, and
# the non-root account the sudoers rules are tried as (the service's, at a site).
PEOPLE = {"pbt-alice": "vision", "pbt-bob": "nlp"}  # and the contract's account of the same team
SERVICE = "pbt-svc"
GROUP = "pbt-people"
SUDOERS = Path("/etc/sudoers.d/podbay-tests")


@dataclass
class People:
    """Real accounts (useradd) with homes on `shared`, the stand-in for a site's shared
    filesystem that the portal and the nodes both see (one host here), and the site's sudoers
    rules of config/slurm/sudoers for root (the tests' hub) and SERVICE."""

    shared: Path
    accounts: dict[str, str]

    def home(self, account: str) -> Path:
        return self.shared / "home" / account

    def as_service(self, *argv: str, env: dict | None = None) -> subprocess.CompletedProcess:
        """A command as the non-root service account, as a site's hub would run it."""
        return subprocess.run(["setpriv", f"--reuid={SERVICE}", f"--regid={SERVICE}", "--init-groups", "--", *argv],
                              capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})}, cwd="/")

    def remove(self) -> None:
        SUDOERS.unlink(missing_ok=True)


def _account(name: str, home: Path, groups: list[str]) -> None:
    import pwd

    try:
        if pwd.getpwnam(name).pw_dir != str(home):
            subprocess.run(["usermod", f"--home={home}", name], check=True, capture_output=True)
        subprocess.run(["usermod", f"--groups={','.join(groups)}", name], check=True, capture_output=True)
    except KeyError:
        subprocess.run(["useradd", "--no-create-home", f"--home-dir={home}", "--shell=/bin/sh",
                        f"--groups={','.join(groups)}", "--user-group", name], check=True, capture_output=True)
    entry = pwd.getpwnam(name)
    home.mkdir(parents=True, exist_ok=True)
    os.chown(home, entry.pw_uid, entry.pw_gid)
    home.chmod(0o700)  # as Debian makes homes now: nobody else, the service included, looks in


def people(cluster: SlurmCluster, shared: Path) -> People:
    """Accounts pbt-alice (team vision) and pbt-bob (nlp) with 0700 homes under `shared`,
    their associations in Slurm, and the sudoers rules. Made again on each run (the homes
    move with `shared`); the accounts stay, as a site's would."""
    if shared.exists():
        shutil.rmtree(shared)  # a run's homes start empty
    shared.mkdir(parents=True)
    shared.chmod(0o755)
    (shared / "home").mkdir(exist_ok=True)
    (shared / "home").chmod(0o755)
    if subprocess.run(["getent", "group", GROUP], capture_output=True).returncode != 0:
        subprocess.run(["groupadd", GROUP], check=True, capture_output=True)
    for account in PEOPLE:
        _account(account, shared / "home" / account, [GROUP])
    _account(SERVICE, shared / "service", [])
    rules = (Path(__file__).resolve().parents[2] / "config" / "slurm" / "sudoers").read_text()
    rules = rules.replace("User_Alias   PODBAY = podbay", f"User_Alias   PODBAY = root, {SERVICE}")
    rules = rules.replace("Runas_Alias  PODBAY_PEOPLE = %podbay-users", f"Runas_Alias  PODBAY_PEOPLE = %{GROUP}")
    staged = shared / "sudoers"
    staged.write_text(rules)
    subprocess.run(["visudo", "-cf", str(staged)], check=True, capture_output=True)
    SUDOERS.write_bytes(staged.read_bytes())
    SUDOERS.chmod(0o440)
    for account, team in PEOPLE.items():
        cluster.run("sacctmgr", "-i", "add", "user", account, f"Account={team},contract-{team}", f"DefaultAccount={team}")
    return People(shared, dict(PEOPLE))


def start_hub(cluster: SlurmCluster, folder: Path, edit=None, backend: str = "slurm", keep_workspaces: bool = False,
              plain: str | None = None, extra_env: dict | None = None):
    """A started hub on the slurm backend (or `backend`, with a pool on Slurm: edit says
    which), on the contract's podbay.yaml (its image not built here) as `edit(cfg)` changes
    it, with its files in `folder`."""
    import yaml

    from tests.harness import Hub, free_port_block
    from tests.standins.site_install import site_python

    cfg = yaml.safe_load((Path(__file__).resolve().parents[1] / "data" / "podbay-contract.yaml").read_text())
    cfg["images"][0].pop("build", None)
    if edit is not None:
        edit(cfg)
    config = folder / "podbay.yaml"
    config.write_text(yaml.safe_dump(cfg))
    (folder / "data").mkdir()
    hub = Hub(config=config, data_dir=folder / "data", port=free_port_block(), keep_workspaces=keep_workspaces,
              extra_env={"PODBAY_BACKEND": backend, "SLURM_CONF": str(cluster.conf), **(extra_env or {})},
              spawner=plain, python=str(site_python()))
    hub.start()
    return hub


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what}")


def start(state: Path) -> SlurmCluster:
    """Start the cluster in `state` (made empty first); ready when both nodes are idle and the
    accounts exist."""
    if state.exists():
        shutil.rmtree(state)
    for sub in ("etc", "munge", "state", "log", "db", "run", *(f"spool/{n}" for n in NODES),
                *(f"dev/{n}" for n in NODES)):
        (state / sub).mkdir(parents=True)
    # munge's socket folder must be enterable by everyone (it checks).
    for path in (state, state / "munge"):
        path.chmod(0o755)
    cluster = SlurmCluster(state)
    try:
        _start(cluster)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _start(c: SlurmCluster) -> None:
    s = c.state
    ctld, slurmd, n1, n2, dbd, db = free_ports(6)
    munge = s / "munge"
    subprocess.run(["mungekey", "--create", f"--keyfile={munge / 'munge.key'}", "--bits=1024"], check=True)
    subprocess.run(["munged", f"--socket={munge / 'munge.sock'}", f"--key-file={munge / 'munge.key'}",
                    f"--pid-file={munge / 'munged.pid'}", f"--log-file={munge / 'munged.log'}",
                    f"--seed-file={munge / 'munged.seed'}", "--num-threads=4"], check=True)
    subprocess.run(["mariadb-install-db", "--no-defaults", f"--datadir={s / 'db'}", "--user=root",
                    "--auth-root-authentication-method=normal", "--skip-test-db"], check=True, capture_output=True)
    c.daemon("mariadb", ["mariadbd", "--no-defaults", f"--datadir={s / 'db'}", f"--socket={s / 'db' / 'mysql.sock'}",
                         f"--port={db}", "--bind-address=127.0.0.1", "--user=root", f"--pid-file={s / 'run' / 'mariadb.pid'}",
                         "--skip-log-bin", "--skip-name-resolve", "--innodb-buffer-pool-size=32M",
                         "--innodb-log-file-size=16M"])
    wait_for(lambda: subprocess.run(["mariadb-admin", "--no-defaults", f"--socket={s / 'db' / 'mysql.sock'}", "-uroot",
                                     "ping"], capture_output=True).returncode == 0, 60, "MariaDB")
    for node in NODES:
        for i in range(GPUS_PER_NODE):
            (s / "dev" / node / f"nvidia{i}").symlink_to("/dev/null")
    host = socket.gethostname().split(".")[0]
    nodes = "\n".join(
        f"NodeName={node} NodeHostname={host} NodeAddr=127.0.0.1 Port={port} CPUs=8 RealMemory=8000 "
        f"Gres=gpu:a100:{GPUS_PER_NODE} State=UNKNOWN" for node, port in zip(NODES, (n1, n2)))
    (s / "etc" / "slurm.conf").write_text(f"""\
ClusterName={CLUSTER}
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld}
SlurmdPort={slurmd}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge / 'munge.sock'}
StateSaveLocation={s / 'state'}
SlurmdSpoolDir={s / 'spool'}/%n
SlurmctldPidFile={s / 'run'}/slurmctld.pid
SlurmdPidFile={s / 'run'}/slurmd-%n.pid
SlurmctldLogFile={s / 'log'}/slurmctld.log
SlurmdLogFile={s / 'log'}/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=100
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
GresTypes=gpu
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort={dbd}
AccountingStoragePass={munge / 'munge.sock'}
AccountingStorageEnforce=associations,limits,qos
AccountingStorageTRES=gres/gpu,gres/gpu:a100
JobCompType=jobcomp/none
MinJobAge=300
KillWait=1
OverTimeLimit=0
InactiveLimit=0
MessageTimeout=5
{nodes}
PartitionName=gpu Nodes={','.join(NODES)} Default=YES MaxTime=INFINITE State=UP
PartitionName=debug Nodes={','.join(NODES)} MaxTime=60 State=UP
""")
    (s / "etc" / "gres.conf").write_text("".join(
        f"NodeName={node} Name=gpu Type=a100 File={s / 'dev' / node}/nvidia[0-{GPUS_PER_NODE - 1}]\n" for node in NODES))
    dbd_conf = s / "etc" / "slurmdbd.conf"
    dbd_conf.write_text(f"""\
AuthType=auth/munge
AuthInfo=socket={munge / 'munge.sock'}
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort={dbd}
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={db}
StorageUser=root
StorageLoc=slurm_acct_db
PidFile={s / 'run'}/slurmdbd.pid
LogFile={s / 'log'}/slurmdbd.log
""")
    dbd_conf.chmod(0o600)
    c.daemon("slurmdbd", ["slurmdbd", "-D"])
    wait_for(lambda: c.run("sacctmgr", "-n", "list", "cluster", check=False).returncode == 0, 60, "slurmdbd")
    c.run("sacctmgr", "-i", "add", "cluster", CLUSTER)
    c.daemon("slurmctld", ["slurmctld", "-D", "-i"])
    for node in NODES:
        c.daemon(f"slurmd-{node}", ["slurmd", "-D", "-N", node])
    wait_for(lambda: c.run("sinfo", "-h", "-N", "-p", "gpu", "-o", "%N %T", check=False).stdout.split().count("idle")
             == len(NODES), 60, "both nodes idle")
    # gres/gpu is a TRES once slurmctld registered with slurmdbd: limits come after.
    wait_for(lambda: "gpu" in c.run("sacctmgr", "-n", "-P", "list", "tres", "type=gres", check=False).stdout, 30,
             "the gres/gpu TRES")
    for account, gpus in ACCOUNTS.items():
        c.run("sacctmgr", "-i", "add", "account", account, f"GrpTRES=gres/gpu={gpus}")
    c.run("sacctmgr", "-i", "add", "user", "root", f"Account={','.join(ACCOUNTS)}", f"DefaultAccount={next(iter(ACCOUNTS))}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--state", type=Path, required=True)
    args = ap.parse_args()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    cluster = start(args.state.resolve())
    print(f"export SLURM_CONF={cluster.conf}", flush=True)
    try:
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
