"""Which cluster account a person's jobs run as (hub/identity.py), and how the slurm backend's
commands become the person's (sudo)."""

from __future__ import annotations

import os
import pwd
import shutil

import pytest

from podbay.hub.backends.slurm.commands import Commands, NotPermitted, SlurmError, SlurmSettings
from podbay.hub.config import ConfigError, parse_config
from podbay.hub.identity import NoClusterAccount, account_name, cluster_account


def cfg(**accounts):
    return parse_config({"images": [{"name": "base", "display_name": "Base", "image": "debian:12"}], "profiles": [{"id": "cpu"}],
                         "cluster_accounts": accounts})


def test_the_login_is_the_account_unless_mapped():
    assert account_name(cfg(), "alice") == "alice"
    mapped = cfg(table={"3f2a9c1e-0b6d-4c1e-9a57-2f4b8e6d1c0a": "alice"}, strip_domain="corp.example")
    assert account_name(mapped, "3f2a9c1e-0b6d-4c1e-9a57-2f4b8e6d1c0a") == "alice"
    assert account_name(mapped, "bob@Corp.Example") == "bob"
    # Another domain's bob is not the cluster's bob.
    with pytest.raises(NoClusterAccount, match="not a cluster account name"):
        account_name(mapped, "bob@elsewhere.example")
    # The table wins over the stripped domain.
    assert account_name(cfg(table={"bob@corp.example": "rbob"}, strip_domain="corp.example"),
                        "bob@corp.example") == "rbob"


@pytest.mark.parametrize("login", ["alice@corp.example", "Alice", "-rf", "1000", "a b", "x" * 40, "alice\n"])
def test_a_login_that_is_no_account_name_is_refused_with_the_fix(login):
    with pytest.raises(NoClusterAccount, match=r"not a cluster account name: .*cluster_accounts\.table"):
        account_name(cfg(), login)


def test_the_table_takes_account_names_only():
    with pytest.raises(ConfigError):
        cfg(table={"alice": "root; id"})


def test_no_account_and_system_accounts_are_refused():
    with pytest.raises(NoClusterAccount, match=r"you have no account on the cluster \(podbay looked for "
                                               r"'podbay-no-such-person'\)"):
        cluster_account(cfg(table={"carol": "podbay-no-such-person"}), "carol")
    # root (uid 0), and any account under min_uid: nobody's jobs run as one.
    with pytest.raises(NoClusterAccount, match=r"'root' is a system account \(uid 0\)"):
        cluster_account(cfg(table={"mallory": "root"}), "mallory")
    daemon = pwd.getpwnam("daemon")
    with pytest.raises(NoClusterAccount, match="system account"):
        cluster_account(cfg(), "daemon")
    assert cluster_account(cfg(min_uid=1), "daemon").uid == daemon.pw_uid
    # An account podbay.yaml says never to use (the service's own, admins'), whatever its uid.
    with pytest.raises(NoClusterAccount, match="system account"):
        cluster_account(cfg(min_uid=1, never=["daemon"]), "daemon")
    # nobody, and the service's own account, whatever their uid.
    with pytest.raises(NoClusterAccount, match="system account"):
        cluster_account(cfg(min_uid=1), "nobody")
    with pytest.raises(NoClusterAccount, match="system account"):
        cluster_account(cfg(min_uid=1, table={"svc": pwd.getpwuid(os.geteuid()).pw_name}), "svc")


def test_an_account_comes_with_its_home_from_the_system(monkeypatch):
    entry = pwd.struct_passwd(("alice", "x", 4242, 4243, "", "/gpfs/home/alice", "/bin/bash"))
    monkeypatch.setattr(pwd, "getpwnam", lambda name: entry if name == "alice" else (_ for _ in ()).throw(KeyError))
    found = cluster_account(cfg(), "alice")
    assert (found.name, found.uid, found.gid, str(found.home)) == ("alice", 4242, 4243, "/gpfs/home/alice")


def test_commands_as_the_person_go_through_sudo_keeping_the_descriptor():
    commands = Commands(SlurmSettings(bin_dir="/opt/slurm/bin"))
    assert commands.argv("sbatch", ("--parsable",), "alice", (9,)) == [
        "sudo", "-n", "-C", "10", "-u", "alice", "--", "/opt/slurm/bin/sbatch", "--parsable"]
    # By its full path: sudo's rules name files, and its secure_path may not hold Slurm's.
    assert Commands(SlurmSettings()).argv("sbatch", (), "alice")[-1] == (shutil.which("sbatch") or "sbatch")
    assert commands.argv("scancel", ("12",), None) == ["/opt/slurm/bin/scancel", "12"]
    # mkdir and dd are the system's, never a bin_dir's.
    assert commands.argv("dd", ("if=/h/a/out",), "alice")[-2:] == [shutil.which("dd"), "if=/h/a/out"]
    with pytest.raises(NotPermitted, match=r"podbay may not act as alice on this node \(sudo: a password is "
                                           r"required\): the site's sudoers"):
        commands._result(commands.argv("sbatch", (), "alice"), 1, "", "sudo: a password is required\n")
    # sudo's warnings are not refusals: Slurm's own words come through.
    with pytest.raises(SlurmError) as refused:
        commands._result(commands.argv("scancel", ("7",), "alice"), 1, "",
                         "sudo: unable to resolve host n1: Name or service not known\nscancel: error: Invalid job id 7\n")
    assert not isinstance(refused.value, NotPermitted)
