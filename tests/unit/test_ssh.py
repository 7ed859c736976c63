"""The SSH pieces without a hub: podbay's block in ~/.ssh/config (read back by the real
`ssh -G`), the ProxyCommand's quoting, targets and URLs, and the workspace sshd's command
line (read back by the real `sshd -T`)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from podbay.hub.workspace import podbay_sshd
from podbay.tui import ssh
from tests.harness import require

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
    text = config.read_text()
    assert text.index("Host podbay.dev") < text.index("Host podbay.train")
    # No catch-all: a host name ssh is handed from elsewhere (a repository's submodule URL,
    # say) never reaches a shell through a %h.
    assert "%h" not in text and "proxycommand" not in ssh_effective(config, "podbay.other")


def test_portals_on_one_host_keep_their_keys_apart():
    assert ssh.known_host_name("https://h.example.org/a", "alice", "dev") != \
        ssh.known_host_name("https://h.example.org/b", "alice", "dev")


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
    for host, given in (("podbay.dev", "dev"),):
        subprocess.run(["ssh", "-F", str(config), "-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={tmp_path}/kh",
                        host, "true"], capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
        assert record.read_text().splitlines() == [str(odd / "podbay"), "ssh-proxy", given]


def test_writing_keeps_everything_else_and_twice_changes_nothing(tmp_path):
    # Options at the top apply to every host: they must go on doing so below podbay's block.
    own = ("User corp\nIdentityFile ~/.ssh/work_key\n\nHost bastion\n    HostName 192.0.2.10\n\n"
           "Host *\n    ProxyCommand nc %h %p\n")
    path = tmp_path / ".ssh" / "config"
    path.parent.mkdir()
    path.write_text(own)
    path.chmod(0o640)
    before = {host: ssh_effective(path, host) for host in ("bastion", "example.org")}
    block = ssh.config_block(HUB, "alice", "jovyan", ["dev"])
    assert ssh.write_config(path, block) is True
    assert path.read_text() == block + "\n" + own
    assert {host: ssh_effective(path, host) for host in ("bastion", "example.org")} == before
    assert before["bastion"]["user"] == "corp" and "~/.ssh/work_key" in before["bastion"]["identityfile"]
    # First, so the person's `Host *` ProxyCommand cannot take over podbay's hosts.
    assert ssh_effective(path, "podbay.dev")["proxycommand"].endswith("ssh-proxy dev")
    assert ssh.write_config(path, block) is False
    assert path.stat().st_mode & 0o777 == 0o640
    # New workspaces replace the block in place; the rest is untouched.
    newer = ssh.config_block(HUB, "alice", "jovyan", ["dev", "big"])
    assert ssh.write_config(path, newer) is True
    assert path.read_text() == newer + "\n" + own
    assert path.read_text().count(ssh.BEGIN) == 1


def test_a_linked_config_and_windows_line_ends(tmp_path):
    dotfiles = tmp_path / "dotfiles" / "ssh_config"
    dotfiles.parent.mkdir()
    dotfiles.write_bytes(b"Host bastion\r\n    User me\r\n")
    link = tmp_path / "config"
    link.symlink_to(dotfiles)
    block = ssh.config_block(HUB, "alice", "jovyan", ["dev"])
    assert ssh.write_config(link, block) is True
    assert link.is_symlink() and dotfiles.read_bytes().endswith(b"Host bastion\r\n    User me\r\n")
    # A block written with CRLF line ends (an editor's) is still found, not doubled.
    dotfiles.write_bytes(dotfiles.read_bytes().replace(b"\n", b"\r\n").replace(b"\r\r\n", b"\r\n"))
    assert ssh.write_config(link, block) is True
    assert dotfiles.read_bytes().count(ssh.BEGIN.encode()) == 1
    assert ssh.write_config(link, block) is False


def test_a_new_config_is_private(tmp_path):
    path = tmp_path / "home" / ".ssh" / "config"
    assert ssh.write_config(path, ssh.config_block(HUB, "alice", "jovyan", []))
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    assert not list(path.parent.glob(".config.podbay-*"))


@pytest.mark.parametrize("target, name", [("dev", "dev"), ("podbay.dev", "dev")])
def test_targets(target, name):
    assert ssh.workspace_name(target) == name


@pytest.mark.parametrize("target", ["", "podbay.", "bob/train"])
def test_only_ones_own_workspaces_are_named(target):
    with pytest.raises(ssh.SshRefused, match="name one of your workspaces"):
        ssh.workspace_name(target)


def test_websocket_urls_follow_the_hub():
    assert ssh.websocket_url("https://h.example.org/prefix", "/prefix/user/al%40ice/dev/") == \
        "wss://h.example.org/prefix/user/al%40ice/dev/sshd/"
    assert ssh.websocket_url("http://127.0.0.1:8000", "/user/alice/dev/") == "ws://127.0.0.1:8000/user/alice/dev/sshd/"
    # With subdomain_host the hub gives the workspace's own origin.
    assert ssh.websocket_url("https://hub.example.org", "https://alice.hub.example.org/user/alice/x/") == \
        "wss://alice.hub.example.org/user/alice/x/sshd/"


def test_sshd_reads_the_settings_and_the_sessions_environment_as_meant(tmp_path, capsys):
    """The real sshd's own reading (-T prints the settings it would run with)."""
    sshd = podbay_sshd.find("sshd")
    require(sshd, "OpenSSH's server is not installed")
    key = tmp_path / "host"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    env = {"WANDB_API_KEY": 'a "quoted" \\ value', "SPACED": "two  spaces", "HASH": "$HOME#not-a-comment",
           "MULTI": "one\ntwo", "HOME": "/elsewhere", "PATH": "/opt/podbay/bin:/usr/bin", "SSH_AUTH_SOCK": "/x"}
    command = f'/usr/bin/env "/opt/my tools/python" "-I" "/opt/my tools/podbay_sshd.py" keys %u {tmp_path}'
    config = tmp_path / "sshd_config"
    config.write_text(podbay_sshd.sshd_config(2222, "jovyan", {
        "AuthorizedKeysFile": "none", "AuthorizedKeysCommand": command, "AuthorizedKeysCommandUser": "jovyan"}, env))
    assert "MULTI has a line break" in capsys.readouterr().err  # said why that one is left out
    if os.getuid() == 0:
        # Root's sshd wants its privilege separation directory even for -T; podbay_sshd makes it
        # before it runs sshd (this test runs sshd itself, maybe before anything else made it).
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    run = subprocess.run([sshd, "-T", "-f", str(config), "-h", str(key)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    settings: dict[str, list[str]] = {}
    for line in run.stdout.splitlines():
        name, _, value = line.partition(" ")
        settings.setdefault(name, []).append(value)
    assert settings["listenaddress"] == ["127.0.0.1:2222"]
    assert settings["allowusers"] == ["jovyan"] and settings["authorizedkeysfile"] == ["none"]
    assert settings["passwordauthentication"] == ["no"] and settings["authenticationmethods"] == ["publickey"]
    assert settings["authorizedkeyscommand"] == [command]
    assert sorted(settings["setenv"]) == sorted([
        'HASH=$HOME#not-a-comment', 'PATH=/opt/podbay/bin:/usr/bin', 'SPACED=two  spaces',
        'WANDB_API_KEY=a "quoted" \\ value'])


def test_what_sshd_takes_as_a_keys_command():
    assert podbay_sshd.root_owned("/usr/bin/env")
    assert not podbay_sshd.root_owned("/tmp")  # writable by all
    assert not podbay_sshd.root_owned("/nonexistent/python")


def test_keys_are_read_only_for_the_workspaces_own_account(tmp_path, capsys):
    assert podbay_sshd.keys("someone-else-entirely", str(tmp_path)) == 1
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("user_namespace", [False, True], ids=["command", "file-in-a-user-namespace"])
def test_a_workspace_of_another_account_takes_registered_keys_only(tmp_path, user_namespace):
    """The launcher as a non-root account (nobody), as a local hub run by a person or an
    image's jovyan has it; in a user namespace (a non-root local hub's volumes), where sshd
    would refuse any keys command, from the file it refreshes. nobody's shell refuses every
    session, which says the login itself was accepted."""
    import http.server
    import os
    import socket
    import tempfile
    import threading
    import time

    sshd = podbay_sshd.find("sshd")
    require(sshd and os.geteuid() == 0 and Path("/usr/bin/python3").exists(),
            "needs root (to become nobody), OpenSSH's server and the system's python3")
    key = tmp_path / "id"
    stranger = tmp_path / "stranger"
    for path in (key, stranger):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    registered = Path(f"{key}.pub").read_text()

    class Keys(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            ok = self.path == "/services/podbay/api/v1/keys/authorized_keys" and \
                self.headers.get("Authorization") == "token workspace-token"
            body = registered.encode() if ok else b""
            self.send_response(200 if ok else 403)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    service = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Keys)
    threading.Thread(target=service.serve_forever, daemon=True).start()
    home = Path(tempfile.mkdtemp(prefix="podbay-nobody-"))  # nobody must reach it: not under pytest's 0700 tmp
    home.chmod(0o755)
    os.chown(home, 65534, 65534)
    # The launcher as an image installs it (install -m 0644 into its site-packages): nobody
    # runs a copy in a folder of root's open to all, not the file in this checkout.
    installed = Path(tempfile.mkdtemp(prefix="podbay-sshd-"))
    installed.chmod(0o755)
    shutil.copyfile(podbay_sshd.__file__, installed / "podbay_sshd.py")
    (installed / "podbay_sshd.py").chmod(0o644)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    launcher = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                *(["unshare", "--user", "--map-current-user"] if user_namespace else []),
                "env", f"HOME={home}", f"PODBAY_SERVICE_URL=http://127.0.0.1:{service.server_port}",
                "JUPYTERHUB_API_TOKEN=workspace-token", "/usr/bin/python3", "-I", str(installed / "podbay_sshd.py"), "serve",
                str(port)]
    log = tmp_path / "sshd.log"
    proc = subprocess.Popen(launcher, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60  # a poll's limit: it returns when sshd listens
        while "Server listening" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)

        def login(identity: Path) -> subprocess.CompletedProcess:
            return subprocess.run(["ssh", "-i", str(identity), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
                                   "-o", "UserKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=no",
                                   "-p", str(port), "nobody@127.0.0.1", "true"], capture_output=True, text=True,
                                  timeout=30, stdin=subprocess.DEVNULL)
        accepted = login(key)
        assert "account is currently not available" in accepted.stdout + accepted.stderr, accepted.stderr
        assert "Accepted publickey for nobody" in log.read_text()
        refused = login(stranger)
        assert refused.returncode == 255 and "Permission denied (publickey)" in refused.stderr
        assert ("keys are read every" in log.read_text()) is user_namespace
        assert (home / ".ssh" / "podbay_host_ed25519_key").exists()
    finally:
        proc.terminate()
        proc.wait(10)
        service.shutdown()
        subprocess.run(["rm", "-rf", str(home), str(installed)])
    # The launcher ends its sshd with it: nothing listens on the port any more.
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0


def test_a_workspace_on_an_origin_of_its_own_is_opened_there():
    """With subdomain_host the hub gives each server an absolute URL on its own origin."""
    from podbay.tui.client import PodbayClient, Workspace

    client = PodbayClient("https://hub.example.org", "t", "alice")
    own = Workspace("x", "ready", "base", "cpu", [], None, None, "https://alice.hub.example.org/user/alice/x/", None)
    shared = Workspace("y", "ready", "base", "cpu", [], None, None, "/user/alice/y/", None)
    assert client.server_url(own) == "https://alice.hub.example.org/user/alice/x/"
    assert client.lab_url(own) == "https://alice.hub.example.org/user/alice/x/lab"
    assert client.lab_url(shared) == "https://hub.example.org/user/alice/y/lab"


@pytest.mark.parametrize("own_model_has_servers", [True, False])
def test_one_request_to_the_hub_where_the_logins_own_model_has_its_servers(own_model_has_servers):
    """`ssh-proxy` runs at every connection: a login's GET user has the servers already."""
    import httpx

    from podbay.tui.credentials import Credentials

    asked = []
    servers = {"box": {"ready": True, "url": "/user/alice/box/"}}

    def hub(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.path)
        model = {"name": "alice", "servers": servers}
        if request.url.path == "/hub/api/user":
            model["scopes"] = ["access:servers!user=alice", "read:servers!user=alice"]
            if not own_model_has_servers:
                del model["servers"]
        return httpx.Response(200, json=model)

    creds = Credentials(url=HUB, token="t", source="test")
    assert ssh.preflight(creds, "podbay.box", httpx.MockTransport(hub)) == (
        "alice", "box", "wss://podbay.example.org/user/alice/box/sshd/")
    assert asked == ["/hub/api/user"] + ([] if own_model_has_servers else ["/hub/api/users/alice"])


def test_the_bridge_carries_every_byte_in_order_and_ends_with_its_input():
    """The bridge against a WebSocket server that greets, then keeps what comes: input
    written in pieces of every size (one byte; more than one read takes) arrives whole and
    in order, what the server says reaches the output, and the end of the input closes the
    WebSocket, which ends the bridge."""
    import threading

    from websockets.sync.server import serve

    received = []

    def handler(conn):
        assert conn.request.headers["Authorization"] == "token t0ken"
        conn.send(b"SSH-2.0-test\r\n")
        kept = bytearray()
        for message in conn:  # until the bridge closes
            kept += message
        received.append(bytes(kept))

    payload = os.urandom(3 << 20)
    sizes = [1, 7, 4096, 65536, 300_000, 1 << 20]
    out = bytearray()
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()

    def feed():
        with os.fdopen(in_w, "wb") as f:
            at, i = 0, 0
            while at < len(payload):
                f.write(payload[at:at + sizes[i % len(sizes)]])
                f.flush()
                at += sizes[i % len(sizes)]
                i += 1

    def drain():
        while chunk := os.read(out_r, 1 << 16):
            out.extend(chunk)

    with serve(handler, "127.0.0.1", 0) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        port = server.socket.getsockname()[1]
        threads = [threading.Thread(target=feed), threading.Thread(target=drain)]
        for t in threads:
            t.start()
        try:
            assert ssh.bridge(f"ws://127.0.0.1:{port}/sshd/", "t0ken", in_r, out_w) == 0
        finally:
            os.close(in_r)
            os.close(out_w)
            for t in threads:
                t.join(10)
            os.close(out_r)
            server.shutdown()
    assert received == [payload]
    assert bytes(out) == b"SSH-2.0-test\r\n"
