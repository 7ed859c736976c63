"""SSH and VS Code's ways into a workspace, through the real hub and proxy, with the real
OpenSSH client: `podbay ssh`, `ssh`/`scp` with `ProxyCommand podbay ssh-proxy`, `ssh -L`,
the host key across restarts, keys added and removed while the workspace runs, refusals,
and the Jupyter extension's REST and WebSocket calls with the token `podbay ws open
--vscode` prints. The local backend here; tests/integration/test_docker.py does the same
against the image's sshd.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests.harness import claimed, end, environ_of, http_client, require

pytestmark = pytest.mark.hub

WS = "sshdev"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Person:
    """One person's laptop: a podbay login, an SSH key pair and their own ~/.ssh, all in a
    folder of the test's (ssh reads ~ from the password database, so every ssh call names
    its config, known_hosts and key)."""

    def __init__(self, hub, root: Path, user: str):
        self.hub, self.root, self.user = hub, root, user
        self.ssh_dir = root / ".ssh"
        self.ssh_dir.mkdir(mode=0o700, parents=True)
        self.key = self.keygen("id_ed25519")
        self.known_hosts = self.ssh_dir / "known_hosts"
        self.config = self.ssh_dir / "config"

    def keygen(self, name: str) -> Path:
        path = self.ssh_dir / name
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"{self.user}@laptop", "-f", str(path)],
                       check=True)
        return path

    @property
    def env(self) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith(("PODBAY_", "JUPYTERHUB_", "SSH_AUTH_SOCK"))}
        return {**base, "HOME": str(self.root), "XDG_CONFIG_HOME": str(self.root / ".config")}

    def podbay(self, *args, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "podbay.hub.cli", *args], capture_output=True, text=True,
                              env={**self.env, **(env or {})}, timeout=timeout, stdin=subprocess.DEVNULL)

    def ssh_options(self, key: Path | None = None) -> list[str]:
        return ["-i", str(key or self.key), "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none",
                "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR"]

    def podbay_ssh(self, *command: str, key: Path | None = None, extra: tuple = (), timeout: float = 120):
        return self.podbay("ssh", *extra, *self.ssh_options(key), WS, "--", *command, timeout=timeout)

    def ssh(self, *args: str, key: Path | None = None, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
        """The plain OpenSSH client with podbay's block in this person's ssh config."""
        return subprocess.run(["ssh", "-F", str(self.config), *self.ssh_options(key), *args], capture_output=True,
                              text=True, env=self.env, timeout=timeout, stdin=subprocess.DEVNULL, **kw)


@pytest.fixture(scope="module")
def alice(hub, tmp_path_factory):
    require(shutil.which("ssh") and shutil.which("sshd") or Path("/usr/sbin/sshd").exists(),
            "OpenSSH (openssh-client, openssh-server) is not installed")
    person = Person(hub, tmp_path_factory.mktemp("alice-laptop"), "alice")
    r = person.podbay("login", hub.url, "--token", hub.new_token("alice"))
    assert r.returncode == 0, r.stderr
    r = person.podbay("keys", "add", str(person.key) + ".pub")
    assert r.returncode == 0, r.stderr
    hub.start_server("alice", WS, {"profile": "mig-1g.10gb", "volumes": ["scratch", "imagenet"]})
    r = person.podbay("ssh-config", "--write")
    assert r.returncode == 0, r.stderr
    return person


def proxies_left(marker: str) -> list[int]:
    """ssh-proxy processes whose command line has `marker` (a workspace name only one test uses)."""
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"ssh-proxy" in cmd and any(marker.encode() in part for part in cmd):
                found.append(int(d.name))
    return found


def test_a_command_sees_the_workspace(hub, alice):
    # As with ssh, the words after -- are one command line for the workspace's shell.
    r = alice.podbay_ssh('id -un; echo "$HOME"; pwd; echo "$CUDA_VISIBLE_DEVICES"; '
                         'echo "$NVIDIA_VISIBLE_DEVICES"; echo "$PODBAY_PROFILE"; '
                         'ls "$HOME/data/imagenet" >/dev/null && echo imagenet-there; '
                         'touch "$HOME/data/imagenet/x" 2>/dev/null || echo imagenet-read-only')
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.splitlines()) == 8, r.stdout
    user, home, cwd, cuda, nvidia, profile, there, ro = r.stdout.splitlines()
    assert user == pwd.getpwuid(os.getuid()).pw_name  # the local backend runs workspaces as the hub's user
    assert home == cwd == str(hub.data_dir / "homes" / "alice")
    assert [cuda] == claimed(hub, f"workspace:alice/{WS}") and cuda.startswith("MIG-")
    assert nvidia == cuda and profile == "mig-1g.10gb"
    assert (there, ro) == ("imagenet-there", "imagenet-read-only")


def test_plain_ssh_and_scp_through_the_written_config(hub, alice, tmp_path):
    r = alice.ssh(f"podbay.{WS}", "echo", "hello from", "$HOSTNAME")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("hello from")
    payload = tmp_path / "data.bin"
    payload.write_bytes(os.urandom(3 * 1024 * 1024))
    scp = ["scp", "-F", str(alice.config), *alice.ssh_options()]
    r = subprocess.run([*scp, str(payload), f"podbay.{WS}:copied.bin"], capture_output=True, text=True,
                       env=alice.env, timeout=60)
    assert r.returncode == 0, r.stderr
    # On the persistent home, where the workspace's JupyterLab sees it.
    assert (hub.data_dir / "homes" / "alice" / "copied.bin").read_bytes() == payload.read_bytes()
    back = tmp_path / "back.bin"
    r = subprocess.run([*scp, f"podbay.{WS}:copied.bin", str(back)], capture_output=True, text=True,
                       env=alice.env, timeout=60)
    assert r.returncode == 0, r.stderr
    assert back.read_bytes() == payload.read_bytes()


def test_a_port_forwarded_into_the_workspace(hub, alice, tmp_path):
    """What VS Code's Remote-SSH does with the server it runs in the workspace."""
    inner, outer = free_port(), free_port()
    marker = uuid.uuid4().hex
    serve = (f"mkdir -p /tmp/fwd-{marker} && echo {marker} > /tmp/fwd-{marker}/index.html && "
             f"exec python3 -m http.server {inner} --bind 127.0.0.1 --directory /tmp/fwd-{marker}")
    tunnel = subprocess.Popen(["ssh", "-F", str(alice.config), *alice.ssh_options(), "-L",
                               f"127.0.0.1:{outer}:127.0.0.1:{inner}", f"podbay.{WS}", serve],
                              env=alice.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline, body = time.monotonic() + 30, None
        while time.monotonic() < deadline and body is None:
            assert tunnel.poll() is None, tunnel.stderr.read().decode()
            try:
                body = httpx.get(f"http://127.0.0.1:{outer}/", timeout=2).text.strip()
            except httpx.HTTPError:
                time.sleep(0.3)
        assert body == marker
    finally:
        # Cleanup, not a check: ssh waits for its ProxyCommand, which waits up to websockets'
        # close timeout (10 s) for the hub's answer to its close, longer on a busy machine.
        end(tunnel, 60)


def test_keys_added_and_removed_reach_the_running_workspace(alice):
    second = alice.keygen(f"second-{uuid.uuid4().hex[:6]}")
    r = alice.podbay_ssh("true", key=second)
    assert r.returncode == 1
    assert "not one you registered" in r.stderr and "podbay keys add" in r.stderr
    added = alice.podbay("keys", "add", str(second) + ".pub")
    assert added.returncode == 0, added.stderr
    fingerprint = added.stdout.split()[3]
    assert alice.podbay_ssh("true", key=second).returncode == 0
    assert alice.podbay("keys", "rm", fingerprint).returncode == 0
    r = alice.podbay_ssh("true", key=second)
    assert r.returncode == 1 and "not one you registered" in r.stderr
    # The first key still works: removing one is not removing all.
    assert alice.podbay_ssh("true").returncode == 0


def test_the_host_key_stays_across_a_restart(hub, alice):
    assert alice.podbay_ssh("true").returncode == 0
    before = alice.known_hosts.read_text()
    hub.stop_server("alice", WS)
    stopped = alice.podbay_ssh("true", timeout=30)
    assert stopped.returncode == 1
    assert f"{WS} is stopped: start it with podbay ssh --start {WS}" in stopped.stderr
    # --start brings it back with the options it had, with podbay ws new's progress.
    # Options after the name are options, and the person's own -o wins over podbay's.
    r = alice.podbay("ssh", WS, "--start", "-o", "StrictHostKeyChecking=yes", *alice.ssh_options(), "--",
                     "echo", "$PODBAY_PROFILE")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "mig-1g.10gb" and "100%]" in r.stderr
    assert alice.known_hosts.read_text() == before  # no new or changed key recorded
    strict = alice.podbay("ssh", WS, "-o", "StrictHostKeyChecking=yes", "-o", "UserKnownHostsFile=/dev/null",
                          *alice.ssh_options(), "--", "true")
    assert strict.returncode == 1 and "Host key verification failed" in strict.stderr


def test_another_persons_registered_key_opens_nothing_here(hub, alice):
    """bob's key, registered with podbay, over a tunnel alice's login opened: the workspace
    asks for alice's keys only."""
    bob_key = alice.keygen(f"bob-{uuid.uuid4().hex[:6]}")
    with http_client(base_url=f"{hub.url}/services/podbay/api/v1",
                      headers={"Authorization": f"token {hub.token('bob')}"}) as bob:
        assert bob.post("/keys", json={"key": Path(f"{bob_key}.pub").read_text()}).status_code == 201
    r = alice.podbay_ssh("true", key=bob_key)
    assert r.returncode == 1 and "not one you registered" in r.stderr


def test_nothing_secret_on_sshds_command_line(hub, alice):
    assert alice.podbay_ssh("true").returncode == 0
    token = environ_of(hub.workspace_pid("alice", WS))["JUPYTERHUB_API_TOKEN"]
    lines = []
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and (d / "comm").read_text().strip() == "sshd":
                lines.append((d / "cmdline").read_bytes().decode(errors="replace"))
        except OSError:
            continue
    assert lines and not [line for line in lines if token in line or "SetEnv" in line]


def test_refusals_are_one_sentence_and_leave_nothing_running(hub, alice, tmp_path):
    def refused(person_env: dict, *args: str) -> str:
        t0 = time.monotonic()
        r = alice.podbay(*args, env=person_env, timeout=30)
        assert r.returncode == 1, (r.stdout, r.stderr)
        assert time.monotonic() - t0 < 25
        lines = [line for line in r.stderr.splitlines() if line.startswith("podbay:")]
        assert lines, r.stderr
        return lines[0]

    nobody = {"XDG_CONFIG_HOME": str(tmp_path / "empty")}
    assert "not logged in" in refused(nobody, "ssh-proxy", WS)
    assert "not logged in" in refused(nobody, "ssh", WS)
    # A token of another person's reaches that person's workspaces only.
    bob = {"PODBAY_URL": hub.url, "PODBAY_TOKEN": hub.token("bob")}
    assert f"you have no workspace named {WS}" in refused(bob, "ssh-proxy", WS)
    assert f"you have no workspace named {WS}" in refused(bob, "ssh", WS)
    assert "you have no workspace named nosuch" in refused({}, "ssh-proxy", "nosuch")
    dead = {"PODBAY_URL": f"http://127.0.0.1:{free_port()}", "PODBAY_TOKEN": hub.token("alice")}
    assert "cannot reach the hub" in refused(dead, "ssh-proxy", WS)
    assert "cannot reach" in refused(dead, "ssh", WS)
    # Through ssh itself: the proxy's sentence, then podbay ssh's exit status 1.
    r = subprocess.run(["ssh", *alice.ssh_options(), "-o", f"ProxyCommand={sys.executable} -m podbay.hub.cli "
                        f"ssh-proxy {WS}", f"podbay.{WS}", "true"], capture_output=True, text=True,
                       env={**alice.env, **bob}, timeout=30, stdin=subprocess.DEVNULL)
    assert r.returncode == 255 and f"you have no workspace named {WS}" in r.stderr
    assert proxies_left(WS) == []


def test_another_persons_token_is_refused_by_the_workspace_itself(hub, alice):
    """Past podbay's own checks: the hub's proxy and the workspace refuse the WebSocket."""
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    url = hub.url.replace("http://", "ws://") + f"/user/alice/{WS}/sshd/"
    with pytest.raises(InvalidStatus) as e:
        connect(url, additional_headers={"Authorization": f"token {hub.token('bob')}"}, open_timeout=10)
    assert e.value.response.status_code in (302, 403)
    with connect(url, additional_headers={"Authorization": f"token {hub.token('alice')}"}, open_timeout=10) as ws:
        assert ws.recv(timeout=10).startswith(b"SSH-2.0-OpenSSH")


def test_ssh_config_write_keeps_the_rest_and_is_idempotent(hub, alice):
    own = "Host bastion\n    HostName 192.0.2.10\n    User me\n\nHost *\n    ServerAliveInterval 60\n"
    path = alice.root / "other-config"
    path.write_text(own)
    first = alice.podbay("ssh-config", "--write", "--file", str(path))
    assert first.returncode == 0 and first.stdout.startswith("Wrote"), first.stderr
    text = path.read_text()
    assert text.endswith(own) and text.index(f"Host podbay.{WS}") < text.index("Host bastion")
    again = alice.podbay("ssh-config", "--write", "--file", str(path))
    assert again.returncode == 0 and again.stdout.startswith("Already up to date"), again.stdout
    assert path.read_text() == text
    assert path.stat().st_mode & 0o777 == 0o644  # as the person had it
    # One it made itself is private to its owner.
    assert alice.config.stat().st_mode & 0o777 == 0o600


def kernel_prints(server: str, token: str, code: str) -> str:
    """What VS Code's Jupyter extension does with a server and a token: list the kernelspecs,
    start a kernel, run code over the kernel's WebSocket, read its output."""
    from websockets.sync.client import connect

    auth = {"Authorization": f"token {token}"}
    specs = httpx.get(f"{server}api/kernelspecs", headers=auth, timeout=30)
    assert specs.status_code == 200 and "python3" in specs.json()["kernelspecs"], specs.text
    kernel = httpx.post(f"{server}api/kernels", headers=auth, json={"name": "python3"}, timeout=60).json()
    try:
        ws_url = server.replace("http://", "ws://") + f"api/kernels/{kernel['id']}/channels"
        with connect(ws_url, additional_headers=auth, open_timeout=30) as ws:
            msg_id = uuid.uuid4().hex
            ws.send(json.dumps({
                "header": {"msg_id": msg_id, "msg_type": "execute_request", "username": "", "session": msg_id,
                           "version": "5.3", "date": ""},
                "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
                "content": {"code": code, "silent": False, "store_history": False, "user_expressions": {},
                            "allow_stdin": False}}))
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                msg = json.loads(ws.recv(timeout=60))
                if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "stream":
                    return msg["content"]["text"].strip()
        raise AssertionError("the kernel printed nothing")
    finally:
        httpx.delete(f"{server}api/kernels/{kernel['id']}", headers=auth, timeout=30)


def test_the_jupyter_extension_path_with_the_printed_token(hub, alice):
    r = alice.podbay("ws", "open", WS, "--vscode")
    assert r.returncode == 0, r.stderr
    fields = dict(line.split(None, 1) for line in r.stdout.splitlines()
                  if line.strip().split(" ", 1)[0] in ("URL", "username", "token"))
    server, token = fields["URL"].strip(), fields["token"].strip()
    assert server == f"{hub.url}/user/alice/{WS}/" and fields["username"].strip() == "alice"
    assert f"vscode://vscode-remote/ssh-remote+podbay.{WS}{hub.data_dir / 'homes' / 'alice'}" in r.stdout
    auth = {"Authorization": f"token {token}"}
    assert [kernel_prints(server, token, "import os; print(os.environ['CUDA_VISIBLE_DEVICES'])")] == \
        claimed(hub, f"workspace:alice/{WS}")
    # Good for reaching this workspace only: not another running one, it starts nothing and
    # makes no tokens.
    hub.start_server("alice", "other", {"profile": "cpu"})
    try:
        assert httpx.get(f"{hub.url}/user/alice/other/api/status", headers=auth).status_code == 403
        assert httpx.get(f"{hub.url}/user/alice/other/api/status",
                         headers={"Authorization": f"token {hub.token('alice')}"}).status_code == 200
    finally:
        hub.stop_server("alice", "other")
    assert httpx.post(f"{hub.url}/hub/api/users/alice/servers/another", headers=auth, json={}).status_code == 403
    assert httpx.post(f"{hub.url}/hub/api/users/alice/tokens", headers=auth, json={}).status_code == 403
    # Code in a workspace, with the workspace's own token, may not make one (nor register keys).
    own = {"Authorization": f"token {environ_of(hub.workspace_pid('alice', WS))['JUPYTERHUB_API_TOKEN']}"}
    service = f"{hub.url}/services/podbay/api/v1"
    assert httpx.post(f"{service}/workspaces/{WS}/jupyter-token", headers=own, json={}).status_code == 403
    assert httpx.post(f"{service}/keys", headers=own,
                      json={"key": Path(f"{alice.key}.pub").read_text()}).status_code == 403
