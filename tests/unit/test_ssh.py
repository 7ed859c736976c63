"""The SSH pieces without a hub: podbay's block in ~/.ssh/config (read back by the real
`ssh -G`), the ProxyCommand's quoting, targets and URLs, and the workspace sshd's command
line (read back by the real `sshd -T`)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from podbay.hub.workspace import podbay_sshd
from podbay.tui import ssh
from tests.conftest import require

HUB = "https://podbay.example.org"


def ssh_effective(config: Path, host: str) -> dict[str, str]:
    """What the real OpenSSH client makes of a config for one host (`ssh -G` connects nowhere)."""
    require(shutil.which("ssh"), "OpenSSH's client is not installed")
    out = subprocess.run(["ssh", "-G", "-F", str(config), host], capture_output=True, text=True, check=True).stdout
    return dict(line.split(" ", 1) for line in out.splitlines() if " " in line)


def test_the_block_gives_each_workspace_its_proxy_login_and_key_alias(tmp_path):
    config = tmp_path / "config"
    config.write_text(ssh.config_block(HUB, "alice", "jovyan", ["train", "dev"]))
    dev = ssh_effective(config, "podbay.dev")
    assert dev["user"] == "jovyan"
    assert dev["proxycommand"].endswith("ssh-proxy dev")
    assert dev["hostkeyalias"] == "podbay-podbay.example.org-alice-dev"
    assert dev["stricthostkeychecking"] == "accept-new"
    # One made after the block was written goes through the catch-all, named as typed.
    later = ssh_effective(config, "podbay.later")
    assert later["user"] == "jovyan" and later["proxycommand"].endswith("ssh-proxy %h")
    assert "hostkeyalias" not in later
    text = config.read_text()
    assert text.index("Host podbay.dev") < text.index("Host podbay.train") < text.index("Host podbay.*")


def test_the_proxy_command_survives_the_shell_and_percent_tokens(tmp_path, monkeypatch):
    """ssh runs it: a stand-in podbay at an awkward path records what it was given."""
    odd = tmp_path / "my tools 100%" / "bin"
    odd.mkdir(parents=True)
    record = tmp_path / "argv"
    (odd / "podbay").write_text(f'#!/bin/sh\nprintf "%s\\n" "$0" "$@" > "{record}"\n')
    (odd / "podbay").chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(odd / "python"))
    config = tmp_path / "config"
    config.write_text(ssh.config_block(HUB, "alice", "jovyan", ["dev"]))
    for host, given in (("podbay.dev", "dev"), ("podbay.later", "podbay.later")):
        subprocess.run(["ssh", "-F", str(config), "-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={tmp_path}/kh",
                        host, "true"], capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
        assert record.read_text().splitlines() == [str(odd / "podbay"), "ssh-proxy", given]


def test_writing_keeps_everything_else_and_twice_changes_nothing(tmp_path):
    own = "Include ~/.ssh/work\n\nHost bastion\n    User me\n\nHost *\n    ProxyCommand nc %h %p\n"
    path = tmp_path / ".ssh" / "config"
    path.parent.mkdir()
    path.write_text(own)
    path.chmod(0o640)
    block = ssh.config_block(HUB, "alice", "jovyan", ["dev"])
    assert ssh.write_config(path, block) is True
    assert path.read_text() == block + "\n" + own
    # First, so the person's `Host *` ProxyCommand cannot take over podbay's hosts.
    assert ssh_effective(path, "podbay.dev")["proxycommand"].endswith("ssh-proxy dev")
    assert ssh_effective(path, "bastion")["proxycommand"] == "nc %h %p"
    assert ssh.write_config(path, block) is False
    assert path.stat().st_mode & 0o777 == 0o640
    # New workspaces replace the block in place; the rest is untouched.
    newer = ssh.config_block(HUB, "alice", "jovyan", ["dev", "big"])
    assert ssh.write_config(path, newer) is True
    assert path.read_text() == newer + "\n" + own
    assert path.read_text().count(ssh.BEGIN) == 1


def test_a_new_config_is_private(tmp_path):
    path = tmp_path / "home" / ".ssh" / "config"
    assert ssh.write_config(path, ssh.config_block(HUB, "alice", "jovyan", []))
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    assert not list(path.parent.glob(".config.podbay-*"))


@pytest.mark.parametrize("target, user, name", [
    ("dev", "alice", "dev"), ("podbay.dev", "alice", "dev"), ("bob/train", "bob", "train")])
def test_targets(target, user, name):
    assert ssh.parse_target(target, "alice") == (user, name)


def test_an_empty_target_is_refused():
    with pytest.raises(ssh.SshRefused, match="name a workspace"):
        ssh.parse_target("bob/", "alice")


def test_websocket_urls_follow_the_hub():
    assert ssh.websocket_url("https://h.example.org/prefix", "al ice", "dev") == \
        "wss://h.example.org/prefix/user/al%20ice/dev/sshd/"
    assert ssh.websocket_url("http://127.0.0.1:8000", "alice", "a/b") == "ws://127.0.0.1:8000/user/alice/a%2Fb/sshd/"


def test_sshd_reads_the_settings_and_the_sessions_environment_as_meant(tmp_path, capsys):
    """The real sshd's own reading (-T prints the settings it would run with)."""
    sshd = podbay_sshd.find("sshd")
    require(sshd, "OpenSSH's server is not installed")
    key = tmp_path / "host"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    env = {"WANDB_API_KEY": 'a "quoted" \\ value', "SPACED": "two  spaces", "HASH": "$HOME#not-a-comment",
           "MULTI": "one\ntwo", "HOME": "/elsewhere", "PATH": "/opt/podbay/bin:/usr/bin", "SSH_AUTH_SOCK": "/x"}
    keys_command = f'/usr/bin/python3 "-I" "/opt/my tools/podbay_sshd.py" keys %u {tmp_path}'
    args = podbay_sshd.sshd_command(sshd, 2222, "jovyan", str(key), keys_command, env)
    assert "MULTI has a line break" in capsys.readouterr().err  # said why that one is left out
    run = subprocess.run([args[0], "-T", *args[1:]], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    settings: dict[str, list[str]] = {}
    for line in run.stdout.splitlines():
        name, _, value = line.partition(" ")
        settings.setdefault(name, []).append(value)
    assert settings["listenaddress"] == ["127.0.0.1:2222"]
    assert settings["allowusers"] == ["jovyan"] and settings["authorizedkeysfile"] == ["none"]
    assert settings["passwordauthentication"] == ["no"] and settings["authenticationmethods"] == ["publickey"]
    assert settings["authorizedkeyscommand"] == [keys_command]
    assert sorted(settings["setenv"]) == sorted([
        'HASH=$HOME#not-a-comment', 'PATH=/opt/podbay/bin:/usr/bin', 'SPACED=two  spaces',
        'WANDB_API_KEY=a "quoted" \\ value'])


def test_keys_are_read_only_for_the_workspaces_own_account(tmp_path, capsys):
    assert podbay_sshd.keys("someone-else-entirely", str(tmp_path)) == 1
    assert capsys.readouterr().out == ""
