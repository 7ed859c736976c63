"""SSH through the hub against plain SSH on loopback, in the same run.

Through the hub: the real OpenSSH client with `ProxyCommand podbay ssh-proxy`, over
configurable-http-proxy and the workspace's Jupyter server (jupyter-server-proxy's raw
socket proxy) to the workspace's sshd, on the local backend. Plain: the same sshd binary,
started with the same settings by the same launcher (workspace/podbay_sshd.py), reached
directly at its loopback port. Both measure:

- scp of one file (500 MB by default) into the workspace's home: MB/s;
- 1,000 small commands (`true`) over one SSH connection (ControlMaster: each command is a
  new channel on the one connection, as VS Code's Remote-SSH runs its many): per-command
  round trip p50/p95.

Prints both ratios hub/plain (throughput: plain/hub time; a tunnel costing more than 2×
plain SSH is worth a look). `--layers` also copies along the way, to see what each part
costs: straight to the workspace's sshd port (its settings, no tunnel), over the WebSocket
to the workspace's Jupyter server (no configurable-http-proxy), and through the hub.

    .venv/bin/python benchmarks/ssh_throughput.py --mb 500 -n 1000 --layers
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.harness import TEST_CONFIG, Hub, free_port_block  # noqa: E402
from tests.integration.test_ssh import Person, free_port  # noqa: E402

WS = "bench"


def plain_sshd(person: Person, home: Path, keys: Path) -> tuple[subprocess.Popen, int]:
    """The launcher's own sshd settings, with the keys in a local file."""
    import pwd

    from podbay.hub.workspace import podbay_sshd

    port = free_port()
    login = pwd.getpwuid(os.getuid()).pw_name
    config = home.parent / "plain_sshd_config"
    podbay_sshd.private_file(str(config), podbay_sshd.sshd_config(
        port, login, {"AuthorizedKeysFile": str(keys), "StrictModes": "no"}, {"PATH": os.environ["PATH"]}))
    args = [podbay_sshd.find("sshd"), "-D", "-e", "-f", str(config), "-h", podbay_sshd.host_key(str(home))]
    if os.getuid() == 0:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    # Sessions in the same kind of home as the workspace's (not the account's own, whose
    # shell start-up files would be timed too).
    env = {"PATH": os.environ["PATH"], **podbay_sshd.wrapped_passwd(str(home.parent), pwd.getpwuid(os.getuid()),
                                                                    str(home))}
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        probe = subprocess.run(["ssh", "-p", str(port), *person.ssh_options(), "-o", "StrictHostKeyChecking=no",
                                f"{login}@127.0.0.1", "true"], capture_output=True, env=person.env)
        if probe.returncode == 0:
            return proc, port
        time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"the plain sshd did not come up: {probe.stderr.decode()}")


def scp_seconds(person: Person, dest: list[str], payload: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(["scp", *dest[:-1], str(payload), dest[-1]], check=True, env=person.env, capture_output=True)
    return time.perf_counter() - t0


def command_latencies(person: Person, target: list[str], n: int, control: Path) -> list[float]:
    master = ["-o", "ControlMaster=auto", "-o", f"ControlPath={control}", "-o", "ControlPersist=120"]
    subprocess.run(["ssh", *master, *target, "true"], check=True, env=person.env, capture_output=True)
    times = []
    try:
        for _ in range(n):
            t0 = time.perf_counter()
            subprocess.run(["ssh", *master, *target, "true"], check=True, env=person.env, capture_output=True)
            times.append(time.perf_counter() - t0)
    finally:
        subprocess.run(["ssh", *master, "-O", "exit", *target], env=person.env, capture_output=True)
    return times


def layers(hub: Hub, person: Person, payload: Path, mb: int) -> None:
    """The same copy along parts of the way (ports read from `ss`)."""
    listening = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout.splitlines()
    sshd_port = next(re.search(r":(\d+) ", line).group(1) for line in listening if '"sshd"' in line)
    pid = hub.workspace_pid("alice", WS)
    jupyter_port = next(re.search(r"127\.0\.0\.1:(\d+) ", line).group(1) for line in listening if f"pid={pid}," in line)
    token = hub.token("alice")

    def bridge_to(port: int) -> str:
        code = (f"from podbay.tui.ssh import bridge; "
                f"bridge('ws://127.0.0.1:{port}/user/alice/{WS}/sshd/', '{token}')")
        return f"{sys.executable} -c \"{code}\""

    ways = {"the workspace's sshd, no tunnel": ["-o", "ProxyCommand=none", "-o", "HostKeyAlias=none",
                                                 "-o", "StrictHostKeyChecking=no", "-P", sshd_port],
            "WebSocket to the Jupyter server": ["-o", f"ProxyCommand={bridge_to(int(jupyter_port))}"],
            "WebSocket through the hub": []}
    for name, extra in ways.items():
        host = "127.0.0.1" if "-P" in extra else f"podbay.{WS}"
        best = min(scp_seconds(person, ["-F", str(person.config), *person.ssh_options(), *extra,
                                        f"{host}:payload.bin"], payload) for _ in range(2))
        print(f"  layers: {name}: {mb / best:.1f} MB/s", flush=True)


def pct(xs: list[float], q: float) -> float:
    return statistics.quantiles(xs, n=100)[int(q) - 1] if len(xs) > 1 else xs[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=int, default=500, help="size of the copied file in MB (default %(default)s)")
    ap.add_argument("-n", type=int, default=1000, help="small commands over one connection (default %(default)s)")
    ap.add_argument("--rounds", type=int, default=2, help="copies per way, alternating (default %(default)s)")
    ap.add_argument("--layers", action="store_true", help="also copy along parts of the way")
    args = ap.parse_args()
    if not shutil.which("ssh"):
        raise SystemExit("OpenSSH's client is not installed")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        hub = Hub(TEST_CONFIG, tmp / "hub", free_port_block(), keep_workspaces=False)
        hub.data_dir.mkdir()
        hub.start()
        plain = None
        try:
            person = Person(hub, tmp / "laptop", "alice")
            assert person.podbay("login", hub.url, "--token", hub.new_token("alice")).returncode == 0
            assert person.podbay("keys", "add", f"{person.key}.pub").returncode == 0
            hub.start_server("alice", WS, {"profile": "cpu"})
            assert person.podbay("ssh-config", "--write").returncode == 0
            via_hub = ["-F", str(person.config), *person.ssh_options(), f"podbay.{WS}"]
            plain_home = tmp / "plain-home"
            plain_home.mkdir()
            keys = tmp / "authorized_keys"
            keys.write_text(Path(f"{person.key}.pub").read_text())
            plain, port = plain_sshd(person, plain_home, keys)
            login = subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
            direct = ["-p", str(port), *person.ssh_options(), "-o", "StrictHostKeyChecking=no", f"{login}@127.0.0.1"]
            scp_direct = ["-P", str(port), *person.ssh_options(), "-o", "StrictHostKeyChecking=no",
                          f"{login}@127.0.0.1:{plain_home}/payload.bin"]
            scp_hub = ["-F", str(person.config), *person.ssh_options(), f"podbay.{WS}:payload.bin"]

            payload = tmp / "payload.bin"
            with payload.open("wb") as f:
                for _ in range(args.mb):
                    f.write(os.urandom(1 << 20))
            copies: dict[str, list[float]] = {"plain": [], "hub": []}
            for i in range(args.rounds):
                order = [("plain", scp_direct), ("hub", scp_hub)]
                for name, dest in (order if i % 2 == 0 else order[::-1]):
                    copies[name].append(scp_seconds(person, dest, payload))
                    print(f"  scp {name}: {args.mb / copies[name][-1]:.1f} MB/s", flush=True)
            if args.layers:
                layers(hub, person, payload, args.mb)
            lat = {"plain": command_latencies(person, direct, args.n, tmp / "cm-plain"),
                   "hub": command_latencies(person, via_hub, args.n, tmp / "cm-hub")}
        finally:
            if plain is not None:
                plain.terminate()
                plain.wait(10)
            hub.stop()
    best = {k: min(v) for k, v in copies.items()}
    print(f"scp of {args.mb} MB (best of {args.rounds}): plain {args.mb / best['plain']:.1f} MB/s, "
          f"through the hub {args.mb / best['hub']:.1f} MB/s; time ratio hub/plain {best['hub'] / best['plain']:.2f} "
          "(worth a look above 2)")
    for k in ("plain", "hub"):
        print(f"{args.n} commands over one connection, {k}: p50 {pct(lat[k], 50) * 1000:.1f} ms, "
              f"p95 {pct(lat[k], 95) * 1000:.1f} ms, total {sum(lat[k]):.1f} s")
    print(f"command round trip ratio hub/plain: p50 {pct(lat['hub'], 50) / pct(lat['plain'], 50):.2f}, "
          f"p95 {pct(lat['hub'], 95) / pct(lat['plain'], 95):.2f}")


if __name__ == "__main__":
    main()
