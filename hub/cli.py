"""The portal's own commands: `podbay config check`, `podbay doctor`, `podbay gpus`, `podbay up`. The `podbay`
command itself is the client's (podbay.tui.cli): these join it through the `podbay.commands`
entry points when podbay is installed with its hub (`pip install 'podbay[hub]'`)."""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

# The hub-side modules (pydantic schemas, NVML) load inside the commands that need them:
# `podbay tui` and the client commands start faster without them.


def cmd_config_check(args) -> int:
    from .config import ConfigError, load_config

    try:
        cfg = load_config(args.file, args.backend)
    except ConfigError as e:
        print(e.render(), file=sys.stderr)
        return 1
    n_dev = sum(len(n.gpus) for n in cfg.nodes)
    print(f"{args.file}: valid — backend {args.backend or cfg.backend} (its section checked), {len(cfg.images)} images, "
          f"{len(cfg.profiles)} profiles, "
          f"{len(cfg.nodes)} nodes ({n_dev} GPUs declared), {len(cfg.volumes)} volumes, {len(cfg.teams)} teams")
    return 0


def cmd_doctor(args) -> int:
    """Every check of hub/doctor.py and the backend's own, against the real systems."""
    import asyncio

    from .backends import BackendError, chosen, load
    from .config import ConfigError, load_config
    from .doctor import Finding, diagnose, render

    try:
        cfg = load_config(args.config, args.backend)
        plugin = load(chosen(cfg, args.backend))
    except ConfigError as e:
        print(e.render(), file=sys.stderr)
        return 1
    except BackendError as e:
        print(render([Finding.fail(str(e), "install the backend's extra (pip install 'podbay[hub,<backend>]')")],
                     args.json))
        return 1
    hub_url = args.hub_url or os.environ.get("PODBAY_HUB_API_URL") or os.environ.get("JUPYTERHUB_API_URL")
    findings = asyncio.run(diagnose(cfg, plugin, hub_url=hub_url, token=os.environ.get("JUPYTERHUB_API_TOKEN")))
    print(render(findings, args.json))
    return 1 if any(f.level == "fail" for f in findings) else 0


def cmd_gpus(args) -> int:
    import yaml

    from . import discovery
    from .discovery import DiscoveryError, parse_smi_output
    from .inventory import gpus_to_decls

    try:
        if args.from_file:
            gpus = parse_smi_output(Path(args.from_file).read_text())
        else:
            gpus = discovery.discover_nvml()
    except (DiscoveryError, OSError) as e:
        print(f"podbay gpus: {e}", file=sys.stderr)
        if not args.from_file:
            print("Give saved output instead: podbay gpus --from-file nvidia-smi-L.txt", file=sys.stderr)
        return 1
    if args.as_inventory:
        missing = [g.index for g in gpus if not g.uuid] + [
            f"{g.index}:{m.index}" for g in gpus for m in g.mig_devices if not m.uuid]
        decls = gpus_to_decls(gpus)
        node = {"name": args.node, "pool": args.pool,
                "gpus": [d.model_dump(exclude_none=True) for d in decls]}
        print(yaml.safe_dump({"nodes": [node]}, sort_keys=False), end="")
        if missing:
            print(f"# MIG devices without UUIDs were left out ({', '.join(map(str, missing))}): "
                  "nvidia-smi -q -x does not print them; use nvidia-smi -L output.", file=sys.stderr)
        return 0
    if args.json:
        print(json.dumps([g.to_dict() for g in gpus], indent=2))
        return 0
    for g in gpus:
        mem = f", {g.memory_mib} MiB" if g.memory_mib else ""
        mig = ", MIG on" if g.mig_enabled else ""
        print(f"GPU {g.index}: {g.model}{mem}{mig}  {g.uuid or ''}")
        for m in g.mig_devices:
            print(f"  MIG {m.profile or '?':<12} device {m.index}  {m.uuid or '(no UUID in this output)'}")
    if not gpus:
        print("no GPUs found")
    return 0


def _wait_for_hub(url: str, proc: subprocess.Popen, timeout: float) -> bool:
    import ssl

    # Our own proxy on this machine: its certificate names the public host, not 127.0.0.1.
    context = ssl._create_unverified_context() if url.startswith("https:") else None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(f"{url}/hub/api", timeout=2, context=context):
                return True
        except OSError:
            time.sleep(0.2)
    return False


def cmd_up(args) -> int:
    from .config import ConfigError, default_config_path, load_config
    from .settings import Podbay

    defaults = Podbay()
    args.ip = args.ip or defaults.ip
    args.port = args.port or defaults.port
    args.data_dir = args.data_dir or defaults.data_dir
    args.keep_workspaces = args.keep_workspaces or defaults.keep_workspaces
    args.allow_unisolated = args.allow_unisolated or defaults.allow_unisolated
    args.backend = args.backend or defaults.backend or None
    config = Path(args.config or default_config_path()).absolute()
    try:
        # Checked for the backend the hub will run (PODBAY_BACKEND, --backend), not the file's.
        cfg = load_config(config, args.backend)
    except ConfigError as e:
        print(f"podbay: refusing to start, the configuration is invalid.\n{e.render()}", file=sys.stderr)
        return 1
    from .backends import BackendError, chosen, load
    from .hubconfig import check_public_ip, find_proxy, is_loopback
    backend = chosen(cfg, args.backend)
    allow_unisolated = args.allow_unisolated
    try:
        plugin = load(backend)
    except BackendError as e:
        print(f"podbay: {e}", file=sys.stderr)
        return 1
    try:
        check_public_ip(args.ip, plugin, allow_unisolated, cfg)
        if os.environ.get("PODBAY_PROXY") != "external":
            find_proxy()
    except SystemExit as e:
        print(e, file=sys.stderr)
        return 1

    taken = _ports_taken(args.ip, args.port, external_proxy=os.environ.get("PODBAY_PROXY") == "external"
                         or _our_proxy_left(Path(args.data_dir)))
    if taken:
        print(f"podbay: {taken} is in use by another program. podbay needs the ports {args.port} to "
              f"{args.port + 3}: choose others with --port (or stop that program).", file=sys.stderr)
        return 1

    data_dir = Path(args.data_dir).absolute()
    data_dir.mkdir(parents=True, exist_ok=True)
    hub_config = data_dir / "jupyterhub_config.py"
    hub_config.write_text("from podbay.hub.hubconfig import configure\n\nconfigure(c)  # noqa: F821\n")
    password = os.environ.get("PODBAY_DEMO_PASSWORD") or secrets.token_urlsafe(9)
    env = {
        **os.environ,
        "PODBAY_CONFIG": str(config),
        "PODBAY_DATA_DIR": str(data_dir),
        "PODBAY_PORT": str(args.port),
        "PODBAY_DEMO_PASSWORD": password,
        "PODBAY_KEEP_WORKSPACES": "1" if args.keep_workspaces else "0",
        "PODBAY_IP": args.ip,
        **({"PODBAY_SSL_CERT": str(Path(args.ssl_cert).absolute())} if args.ssl_cert else {}),
        **({"PODBAY_SSL_KEY": str(Path(args.ssl_key).absolute())} if args.ssl_key else {}),
        "PODBAY_ALLOW_UNISOLATED": "1" if allow_unisolated else "0",
        # The hub finds jupyterhub-singleuser and the proxy beside this Python.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    env["PODBAY_BACKEND"] = backend
    if args.spawner:
        env["PODBAY_PLAIN_SPAWNER"] = args.spawner
    # Asked for on the loopback: an address of all interfaces answers there too.
    local_ip = "127.0.0.1" if args.ip in ("0.0.0.0", "::") or is_loopback(args.ip) else args.ip
    tls = bool(args.ssl_cert or os.environ.get("PODBAY_SSL_CERT"))
    url = f"{'https' if tls else 'http'}://{'[' + local_ip + ']' if ':' in local_ip else local_ip}:{args.port}"
    hub = subprocess.Popen(
        [sys.executable, "-m", "jupyterhub", "-f", str(hub_config)],
        cwd=data_dir, env=env, start_new_session=True,
    )
    stopping = False

    def stop(signum, _frame):
        nonlocal stopping
        if not stopping:
            stopping = True
            print("\npodbay: stopping the hub, its proxy and the workspaces…", file=sys.stderr)
            hub.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    if _wait_for_hub(url, hub, args.start_timeout):
        teams = {m: t for t, team in cfg.teams.items() for m in team.members}
        who = ", ".join(
            f"{u} ({'admin' if u in cfg.admins else 'team ' + teams[u] if u in teams else 'no team'})"
            for u in cfg.demo_users())
        print(f"\npodbay is running at {url}\n"
              f"  log in as {who}\n"
              f"  password: {password}\n"
              f"  REST API: {url}/services/podbay/api/v1/ (OpenAPI: openapi.json)\n"
              f"  config: {config}\n"
              f"  data: {data_dir}\n"
              f"  backend: {plugin.describe(cfg)}\n"
              "  Ctrl-C stops everything.\n", flush=True)
    elif hub.poll() is None and not stopping:
        print(f"podbay: the hub did not answer at {url} within {args.start_timeout:.0f}s", file=sys.stderr)
        stop(signal.SIGTERM, None)
    try:
        code = hub.wait(timeout=None)
    except KeyboardInterrupt:
        code = hub.wait()
    _kill_leftovers(hub, data_dir)
    return 0 if stopping else code


def _our_proxy_left(data_dir: Path) -> bool:
    """A proxy an earlier run of this data directory left (a crash): the hub stops it
    itself at start, so its ports are not another program's."""
    try:
        pid = int((data_dir.absolute() / "proxy.pid").read_text())
        return "configurable-http-proxy" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except (OSError, ValueError):
        return False


def _ports_taken(ip: str, port: int, external_proxy: bool) -> str | None:
    """The first of podbay's ports another program holds: the public one, the hub's (+1),
    the proxy's API (+2) and the service's (+3). Checked before anything starts: otherwise
    the proxy dies, the hub goes on, and whatever holds the port answers for podbay."""
    import socket

    wanted = [(ip, port), ("127.0.0.1", port + 1), ("127.0.0.1", port + 2), ("127.0.0.1", port + 3)]
    if external_proxy:  # the proxy holds its own ports already
        wanted = [wanted[1], wanted[3]]
    for host, p in wanted:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family) as s:
            # As the servers themselves bind: connections of an earlier run in TIME_WAIT
            # do not hold the port, a program listening on it does.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, p))
            except OSError:
                return f"port {p} on {host}"
    return None


def _kill_leftovers(hub: subprocess.Popen, data_dir: Path) -> None:
    """The hub stops its proxy and workspaces itself; this only catches what a crash left."""
    try:
        os.killpg(hub.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    pid_file = data_dir / "proxy.pid"
    try:
        pid = int(pid_file.read_text())
        os.kill(pid, signal.SIGTERM)
        pid_file.unlink()
    except (OSError, ValueError):
        pass


def register(sub) -> None:
    """Add the portal's commands to the `podbay` parser's subcommands."""
    cfg = sub.add_parser("config", help="work with podbay.yaml")
    cfg_sub = cfg.add_subparsers(dest="config_command", required=True)
    check = cfg_sub.add_parser("check", help="validate a config file; exit 1 with every error if invalid")
    check.add_argument("file")
    check.add_argument("--backend", default=os.environ.get("PODBAY_BACKEND") or None,
                       help="check for this backend instead of the file's backend: (default: PODBAY_BACKEND)")
    check.set_defaults(func=cmd_config_check)

    doctor = sub.add_parser("doctor", help="check the real engine, hub and utilisation source for what will not "
                                           "work, each with its fix (exit 1 if anything must be fixed)")
    doctor.add_argument("--config", default=os.environ.get("PODBAY_CONFIG", "config/podbay.yaml"),
                        help="podbay.yaml (default: PODBAY_CONFIG or %(default)s)")
    doctor.add_argument("--backend", help="check this backend instead of the file's backend:")
    doctor.add_argument("--hub-url", help="the hub's API as the service reaches it (default: PODBAY_HUB_API_URL "
                                          "or JUPYTERHUB_API_URL), e.g. http://127.0.0.1:8081/hub/api")
    doctor.add_argument("--json", action="store_true", help="print the findings as JSON")
    doctor.set_defaults(func=cmd_doctor)

    gpus = sub.add_parser("gpus", help="list this machine's GPUs (NVML) or those of saved nvidia-smi output")
    gpus.add_argument("--from-file", metavar="FILE", help="saved `nvidia-smi -L` or `nvidia-smi -q -x` output")
    gpus.add_argument("--json", action="store_true", help="print JSON")
    gpus.add_argument("--as-inventory", action="store_true", help="print a nodes: entry for podbay.yaml")
    gpus.add_argument("--node", default=os.uname().nodename.split(".")[0].lower(), help="node name for --as-inventory")
    gpus.add_argument("--pool", default="dev", help="pool for --as-inventory")
    gpus.set_defaults(func=cmd_gpus)

    up = sub.add_parser("up", help="start the portal on this machine (embedded mode)")
    up.add_argument("--config", help="podbay.yaml (default: PODBAY_CONFIG, ./config/podbay.yaml, or the "
                                     "demo that ships with podbay)")
    # Unset options fall back to c.Podbay's defaults (hub/settings.py: PODBAY_* or the default).
    up.add_argument("--port", type=int, help="public port (default: PODBAY_PORT or 8000); the hub uses +1, "
                                             "the proxy API +2 (127.0.0.1 only), the service +3")
    up.add_argument("--ip", help="public address (default: PODBAY_IP or 127.0.0.1); the local backend "
                                 "refuses any but the loopback")
    up.add_argument("--ssl-cert", help="TLS certificate (PEM) for the public port (with --ssl-key)")
    up.add_argument("--ssl-key", help="the certificate's private key")
    up.add_argument("--allow-unisolated", action="store_true",
                    help="let the local backend, whose workspaces are not isolated from each other, listen beyond the loopback")
    up.add_argument("--data-dir", help="quota book, homes, logs (default: PODBAY_DATA_DIR or .podbay)")
    up.add_argument("--keep-workspaces", action="store_true",
                    help="leave workspaces running when the hub stops, for restarts")
    up.add_argument("--backend", help="where workspaces and jobs run, over podbay.yaml's backend: local "
                                      "processes or Docker containers of the catalog's images (installed: "
                                      "see podbay.backends entry points)")
    up.add_argument("--spawner", help=argparse.SUPPRESS)
    up.add_argument("--start-timeout", type=float, default=60, help=argparse.SUPPRESS)
    up.set_defaults(func=cmd_up)


def main(argv: list[str] | None = None) -> int:
    """`python -m podbay.hub.cli`: the same `podbay` command."""
    from podbay.tui.cli import main as podbay

    return podbay(argv)


if __name__ == "__main__":
    sys.exit(main())
