"""OpenSSH's sshd inside a workspace, reachable only through the workspace's Jupyter server.

jupyter-server-proxy starts it (as the `sshd` server, `raw_socket_proxy`: the WebSocket at
/user/<name>/<workspace>/sshd/ carries raw TCP to it) on a port on 127.0.0.1 of the
workspace, so no SSH port is open anywhere, and the hub's login guards it like the rest
of the workspace. It runs as the workspace's own user; only that user may log in, and
only with a key the person registered with podbay (`podbay keys add`):

- `AuthorizedKeysCommand` asks podbay's service for the person's keys at every connection
  (with the workspace's own token), so a key added or removed reaches a running workspace
  at once, and nothing else in the workspace, ~/.ssh/authorized_keys included, grants a
  login. No passwords.
- The host key lives on the persistent home (~/.ssh/podbay_host_ed25519_key): a restarted
  workspace keeps it, and clients are not told the host changed.
- Sessions get the workspace's environment (its GPU variables, team and image settings,
  secrets, PATH) through `SetEnv`: sshd would otherwise give them a bare one.
- Where the account's home in the password database is not the workspace's home (the
  local backend: homes under podbay's data directory), nss_wrapper shows sshd the
  workspace's home, so sessions, scp and sftp start there.

Run by the workspace's Python with no podbay installed (images copy this one file), so
standard library only. Usage:

    python3 -I podbay_sshd.py serve PORT
    python3 -I podbay_sshd.py keys USER RUNTIME_DIR     (sshd's AuthorizedKeysCommand)
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request

HOST_KEY = os.path.join("~", ".ssh", "podbay_host_ed25519_key")
# Never handed to sessions: sshd sets them per session, or they belong to this launcher.
NOT_FOR_SESSIONS = {"HOME", "USER", "LOGNAME", "SHELL", "MAIL", "TERM", "PWD", "OLDPWD", "SHLVL", "_",
                    "LD_PRELOAD", "NSS_WRAPPER_PASSWD", "NSS_WRAPPER_GROUP", "TMUX", "TMUX_PANE"}
NSS_WRAPPER = ["/usr/lib/x86_64-linux-gnu/libnss_wrapper.so", "/usr/lib/aarch64-linux-gnu/libnss_wrapper.so",
               "/usr/lib64/libnss_wrapper.so", "/usr/lib/libnss_wrapper.so"]


def fail(message: str):
    print(f"podbay-sshd: {message}", file=sys.stderr, flush=True)
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
            print(f"podbay-sshd: {name} has a line break, SSH sessions do not get it", file=sys.stderr)
            continue
        out.append(quoted(f"{name}={value}"))
    return out


def host_key(home: str) -> str:
    path = HOST_KEY.replace("~", home, 1)
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        keygen = find("ssh-keygen") or fail("ssh-keygen is not installed (openssh-client)")
        subprocess.run([keygen, "-q", "-t", "ed25519", "-N", "", "-C", "podbay workspace", "-f", path], check=True)
    return path


def wrapped_passwd(runtime: str, user: pwd.struct_passwd, home: str) -> dict[str, str]:
    """nss_wrapper settings that show sshd `home` as the user's home, or {} where the
    password database says so already."""
    if os.path.realpath(user.pw_dir) == os.path.realpath(home):
        return {}
    library = next((p for p in NSS_WRAPPER if os.path.exists(p)), None)
    if library is None:
        print("podbay-sshd: nss_wrapper is not installed (libnss-wrapper): SSH sessions start in "
              f"{user.pw_dir}, not in {home}", file=sys.stderr)
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


def sshd_command(sshd: str, port: int, login: str, host_key: str, keys_command: str,
                 env: dict[str, str]) -> list[str]:
    """sshd's command line: no configuration file of the system's, only these settings."""
    options = {
        "ListenAddress": f"127.0.0.1:{port}",
        "AllowUsers": login,
        "AuthenticationMethods": "publickey",
        "PubkeyAuthentication": "yes",
        "PasswordAuthentication": "no",
        "KbdInteractiveAuthentication": "no",
        "AuthorizedKeysFile": "none",
        "AuthorizedKeysCommand": keys_command,
        "AuthorizedKeysCommandUser": login,
        "PidFile": "none",
        "PrintMotd": "no",
        "PrintLastLog": "no",
        "X11Forwarding": "no",
        "Subsystem": "sftp internal-sftp",
        "ClientAliveInterval": "30",
        "LogLevel": "INFO",
    }
    args = [sshd, "-D", "-e", "-f", "none", "-h", host_key]
    for name, value in options.items():
        args += ["-o", f"{name} {value}"]
    pairs = session_env(env)
    if pairs:
        args += ["-o", "SetEnv " + " ".join(pairs)]
    return args


def serve(port: int) -> int:
    sshd = find("sshd") or fail("the OpenSSH server is not installed in this workspace (openssh-server)")
    service = os.environ.get("PODBAY_SERVICE_URL") or fail("PODBAY_SERVICE_URL is not set: cannot read keys")
    token = os.environ.get("JUPYTERHUB_API_TOKEN") or fail("JUPYTERHUB_API_TOKEN is not set: cannot read keys")
    user = pwd.getpwuid(os.getuid())
    home = os.environ.get("HOME") or user.pw_dir
    runtime = tempfile.mkdtemp(prefix="podbay-sshd-")  # 0700: the token is in it
    try:
        with open(os.open(os.path.join(runtime, "token"), os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
            f.write(token)
        with open(os.path.join(runtime, "url"), "w") as f:
            f.write(service.rstrip("/") + "/services/podbay/api/v1/keys/authorized_keys")
        # The keys command's complaints reach the workspace's log through the launcher's
        # own standard error (sshd drops the command's).
        os.symlink(f"/proc/{os.getpid()}/fd/2", os.path.join(runtime, "log"))
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **wrapped_passwd(runtime, user, home)}
        if os.getuid() == 0:
            # Root's sshd separates privileges into this directory (a package's boot script
            # makes it; nothing has in a workspace).
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        # The command must be a root-owned file in root-owned directories (sshd checks):
        # the system's Python, running this file.
        python = os.path.realpath(sys.executable)
        keys_command = " ".join([python, *(quoted(a) for a in ("-I", os.path.abspath(__file__), "keys", "%u", runtime))])
        args = sshd_command(sshd, port, user.pw_name, host_key(home), keys_command, dict(os.environ))
        child = subprocess.Popen(args, env=env)

        def forward(signum, frame):
            child.send_signal(signum)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, forward)
        return child.wait()
    finally:
        shutil.rmtree(runtime, ignore_errors=True)


def keys(user: str, runtime: str) -> int:
    """Print the person's registered keys; sshd reads them from standard output."""
    if user != pwd.getpwuid(os.getuid()).pw_name:
        return 1
    with open(os.path.join(runtime, "url")) as f:
        url = f.read().strip()
    with open(os.path.join(runtime, "token")) as f:
        token = f.read().strip()
    request = urllib.request.Request(url, headers={"Authorization": f"token {token}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            sys.stdout.write(r.read().decode())
    except (urllib.error.URLError, OSError) as e:
        # sshd drops this command's stderr: say why logins are refused in the launcher's, which
        # is the workspace's log.
        try:
            with open(os.path.join(runtime, "log"), "a") as log:
                log.write(f"podbay-sshd: could not read the person's keys from {url}: {e}\n")
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
