"""OpenSSH's sshd inside a workspace, reachable only through the workspace's Jupyter server.

jupyter-server-proxy starts it (the `sshd` server of the `jupyter_serverproxy_servers`
entry point below, `raw_socket_proxy`: the WebSocket at /user/<name>/<workspace>/sshd/
carries raw TCP to it) on a port on 127.0.0.1 of the workspace, so no SSH port is open
anywhere, and the hub's login guards it like the rest of the workspace. It runs as the
workspace's own user; only that user may log in, and only with a key the person
registered with podbay (`podbay keys add`):

- sshd asks podbay's service for the person's keys at every login (`AuthorizedKeysCommand`,
  with the workspace's own token), so a key added or removed reaches a running workspace
  at once, and nothing else in the workspace, ~/.ssh/authorized_keys included, grants a
  login. No passwords. Where sshd would refuse to run that command (it must be a
  root-owned program in root-owned folders, which a user namespace does not show: the local
  backend's volumes as a non-root hub), the keys are a file this launcher refreshes every
  few seconds instead.
- The host key lives on the persistent home (~/.ssh/podbay_host_ed25519_key): a restarted
  workspace keeps it, and clients are not told the host changed.
- Sessions get the workspace's environment (its GPU variables, team and image settings,
  secrets, PATH) through `SetEnv` in a configuration file only this account can read,
  never on a command line (which every process list shows).
- Where the account's home in the password database is not the workspace's home (the
  local backend: homes under podbay's data directory), nss_wrapper shows sshd the
  workspace's home, so sessions, scp and sftp start there.
- When the workspace stops, sshd and every session it started end with it.

Run by the workspace's Python, which need not have podbay (images copy this one file and
register its entry point), so standard library only. Usage:

    python3 -I podbay_sshd.py serve PORT
    python3 -I podbay_sshd.py keys USER RUNTIME_DIR     (sshd's AuthorizedKeysCommand)
"""

from __future__ import annotations

import ctypes
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

HOST_KEY = os.path.join("~", ".ssh", "podbay_host_ed25519_key")
# Never handed to sessions: sshd sets them per session, or they belong to this launcher.
NOT_FOR_SESSIONS = {"HOME", "USER", "LOGNAME", "SHELL", "MAIL", "TERM", "PWD", "OLDPWD", "SHLVL", "_",
                    "LD_PRELOAD", "NSS_WRAPPER_PASSWD", "NSS_WRAPPER_GROUP", "TMUX", "TMUX_PANE"}
NSS_WRAPPER = ["/usr/lib/x86_64-linux-gnu/libnss_wrapper.so", "/usr/lib/aarch64-linux-gnu/libnss_wrapper.so",
               "/usr/lib64/libnss_wrapper.so", "/usr/lib/libnss_wrapper.so"]
# How often the keys file is refreshed where sshd cannot ask at each login.
KEYS_REFRESH = 5.0


def setup_sshd() -> dict:
    """jupyter-server-proxy's `sshd` server (entry point `jupyter_serverproxy_servers`):
    raw TCP over the WebSocket at <workspace>/sshd/, no launcher tile. An entry point, not
    `ServerProxy.servers` configuration, which a person's own would replace."""
    # The server's own Python (standard library only is needed), or python3 on PATH where
    # this account may not run that one again.
    python = sys.executable if os.access(sys.executable, os.X_OK) else "python3"
    return {"command": [python, "-I", os.path.abspath(__file__), "serve", "{port}"],
            "raw_socket_proxy": True, "timeout": 60, "launcher_entry": {"enabled": False}}


def log(message: str) -> None:
    print(f"podbay-sshd: {message}", file=sys.stderr, flush=True)


def fail(message: str):
    log(message)
    sys.exit(1)


def find(program: str) -> str | None:
    # sshd lives in /usr/sbin, which a user's PATH often lacks.
    return shutil.which(program, path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"]))


def quoted(value: str) -> str:
    """One argument for sshd's configuration parser (argv_split): double quotes, with the
    two characters it unescapes inside them escaped."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def session_env(env: dict[str, str]) -> list[str]:
    out = []
    for name, value in sorted(env.items()):
        if name in NOT_FOR_SESSIONS or name.startswith("SSH_") or not name.isidentifier():
            continue
        if "\n" in value or "\r" in value or "\0" in value:
            # A configuration line cannot carry it; sessions go without it.
            log(f"{name} has a line break, SSH sessions do not get it")
            continue
        out.append(quoted(f"{name}={value}"))
    return out


def root_owned(path: str) -> bool:
    """What sshd asks of an AuthorizedKeysCommand: the file and every folder above it owned
    by root and writable by no one else."""
    path = os.path.realpath(path)
    while True:
        try:
            st = os.stat(path)
        except OSError:
            return False
        if st.st_uid != 0 or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            return False
        if path == "/":
            return True
        path = os.path.dirname(path)


def host_key(home: str) -> str:
    path = HOST_KEY.replace("~", home, 1)
    if os.path.exists(path):
        return path
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    keygen = find("ssh-keygen") or fail("ssh-keygen is not installed (openssh-client)")
    # Made beside it and linked into place: two workspaces of one person, starting together
    # on the same home, end up with one key.
    fresh = f"{path}.{os.getpid()}"
    subprocess.run([keygen, "-q", "-t", "ed25519", "-N", "", "-C", "podbay workspace", "-f", fresh], check=True)
    for suffix in ("", ".pub"):
        try:
            os.link(fresh + suffix, path + suffix)
        except FileExistsError:
            pass
        os.unlink(fresh + suffix)
    return path


def wrapped_passwd(runtime: str, user: pwd.struct_passwd, home: str) -> dict[str, str]:
    """nss_wrapper settings that show sshd `home` as the user's home, or {} where the
    password database says so already."""
    if os.path.realpath(user.pw_dir) == os.path.realpath(home):
        return {}
    library = next((p for p in NSS_WRAPPER if os.path.exists(p)), None)
    if library is None:
        log(f"nss_wrapper is not installed (libnss-wrapper): SSH sessions start in {user.pw_dir}, not in {home}")
        return {}
    lines = []
    for entry in pwd.getpwall():
        fields = [entry.pw_name, "x", str(entry.pw_uid), str(entry.pw_gid), entry.pw_gecos,
                  home if entry.pw_uid == user.pw_uid else entry.pw_dir, entry.pw_shell]
        lines.append(":".join(fields))
    path = os.path.join(runtime, "passwd")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return {"LD_PRELOAD": library, "NSS_WRAPPER_PASSWD": path, "NSS_WRAPPER_GROUP": "/etc/group"}


def sshd_config(port: int, login: str, keys: dict[str, str], env: dict[str, str]) -> str:
    """sshd's whole configuration (no file of the system's is read). `keys`: the
    AuthorizedKeys* settings."""
    options = {
        "ListenAddress": f"127.0.0.1:{port}",
        "AllowUsers": login,
        "AuthenticationMethods": "publickey",
        "PubkeyAuthentication": "yes",
        "PasswordAuthentication": "no",
        "KbdInteractiveAuthentication": "no",
        **keys,
        "PidFile": "none",
        "PrintMotd": "no",
        "PrintLastLog": "no",
        "X11Forwarding": "no",
        "Subsystem": "sftp internal-sftp",
        "ClientAliveInterval": "30",
        "LogLevel": "INFO",
    }
    lines = [f"{name} {value}" for name, value in options.items()]
    pairs = session_env(env)
    if pairs:
        lines.append("SetEnv " + " ".join(pairs))
    return "\n".join(lines) + "\n"


def fetch_keys(url: str, token: str) -> str:
    request = urllib.request.Request(url, headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(request, timeout=10) as r:
        return r.read().decode()


def private_file(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def die_with_parent() -> None:
    """End when the Jupyter server ends, even if it is killed without a word (Linux)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def descendants(pid: int) -> list[int]:
    """Every process below pid (sshd's connections and the sessions they started)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def end_everything(child: subprocess.Popen) -> None:
    """The listener and every session: nothing keeps running (or holding a GPU) after the
    workspace stopped."""
    procs = [child.pid, *descendants(child.pid)]
    for signum in (signal.SIGTERM, signal.SIGKILL):
        for pid in procs:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            child.poll()  # reaps the listener; orphaned sessions are reaped by whoever adopts them
            procs = [p for p in procs if running(p)]
            if not procs:
                return
            time.sleep(0.05)


def serve(port: int) -> int:
    die_with_parent()
    sshd = find("sshd") or fail("the OpenSSH server is not installed in this workspace (openssh-server)")
    service = os.environ.get("PODBAY_SERVICE_URL") or fail("PODBAY_SERVICE_URL is not set: cannot read keys")
    token = os.environ.get("JUPYTERHUB_API_TOKEN") or fail("JUPYTERHUB_API_TOKEN is not set: cannot read keys")
    user = pwd.getpwuid(os.getuid())
    home = os.environ.get("HOME") or user.pw_dir
    keys_url = service.rstrip("/") + "/services/podbay/api/v1/keys/authorized_keys"
    runtime = tempfile.mkdtemp(prefix="podbay-sshd-", dir=os.environ.get("XDG_RUNTIME_DIR"))  # 0700
    stop = threading.Event()
    try:
        private_file(os.path.join(runtime, "token"), token)
        with open(os.path.join(runtime, "url"), "w") as f:
            f.write(keys_url)
        # The keys command's complaints reach the workspace's log through this launcher's
        # standard error (sshd drops the command's).
        os.symlink(f"/proc/{os.getpid()}/fd/2", os.path.join(runtime, "log"))
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **wrapped_passwd(runtime, user, home)}
        if os.getuid() == 0:
            # Root's sshd separates privileges into this directory (a package's boot script
            # makes it; nothing has in a workspace).
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        program = "/usr/bin/env"
        if root_owned(program):
            # sshd checks only the program: env, which runs this file with this Python.
            command = " ".join([program, *(quoted(a) for a in (sys.executable, "-I", os.path.abspath(__file__),
                                                                "keys", "%u", runtime))])
            keys = {"AuthorizedKeysFile": "none", "AuthorizedKeysCommand": command,
                    "AuthorizedKeysCommandUser": user.pw_name}
        else:
            # Nothing root-owned in sight (a user namespace): a file, kept fresh from here,
            # in a folder only this account can enter (sshd's own checks would fail on /tmp).
            authorized = os.path.join(runtime, "authorized_keys")
            private_file(authorized, "")
            keys = {"AuthorizedKeysFile": authorized, "StrictModes": "no"}
            log(f"keys are read every {KEYS_REFRESH:g}s (sshd cannot run a command to ask at each login here)")
            threading.Thread(target=refresh_keys, args=(keys_url, token, authorized, stop), daemon=True).start()
        config = os.path.join(runtime, "sshd_config")
        private_file(config, sshd_config(port, user.pw_name, keys, dict(os.environ)))
        child = subprocess.Popen([sshd, "-D", "-e", "-f", config, "-h", host_key(home)], env=env)

        def forward(signum, frame):
            end_everything(child)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, forward)
        return child.wait()
    finally:
        stop.set()
        shutil.rmtree(runtime, ignore_errors=True)


def refresh_keys(url: str, token: str, path: str, stop: threading.Event) -> None:
    last = None
    while True:
        try:
            text = fetch_keys(url, token)
        except (urllib.error.URLError, OSError) as e:
            if last is not None:
                log(f"could not read the person's keys from {url}: {e}")
            text = last if last is not None else ""
        if text != last:
            tmp = f"{path}.new"
            private_file(tmp, text)
            os.replace(tmp, path)
            last = text
        if stop.wait(KEYS_REFRESH):
            return


def keys(user: str, runtime: str) -> int:
    """Print the person's registered keys; sshd reads them from standard output."""
    if user != pwd.getpwuid(os.getuid()).pw_name:
        return 1
    with open(os.path.join(runtime, "url")) as f:
        url = f.read().strip()
    with open(os.path.join(runtime, "token")) as f:
        token = f.read().strip()
    try:
        sys.stdout.write(fetch_keys(url, token))
    except (urllib.error.URLError, OSError) as e:
        # sshd drops this command's stderr: say why logins are refused in the launcher's, which
        # is the workspace's log.
        try:
            with open(os.path.join(runtime, "log"), "a") as log_file:
                log_file.write(f"podbay-sshd: could not read the person's keys from {url}: {e}\n")
        except OSError:
            pass
        return 1
    return 0


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "serve":
        return serve(int(argv[1]))
    if len(argv) == 3 and argv[0] == "keys":
        return keys(argv[1], argv[2])
    print(__doc__.rsplit("Usage:", 1)[1], file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
