"""The `podbay` command: the client's commands (`login`, `logout`, `ws`, `job`, `ssh`, `keys`,
`secrets`, `usage`, `capacity`, `tui`, …), and those of whatever else is installed through the
`podbay.commands` entry points (the portal's `config`, `gpus`, `up`; an engine's `k8s`,
`images`). `pip install podbay` is the client alone; `pip install 'podbay[hub]'` adds the
portal.

Exit status: 0 success, 1 a refused or failed operation, 2 a usage error (argparse's).
Every listing takes `--json`, which prints exactly what podbay's service (or, for
workspaces, the client's Workspace records) returns.
"""

from __future__ import annotations

import argparse
import sys
from importlib import import_module
from importlib.metadata import entry_points

# httpx imports its own command line (click, pygments) whenever they are installed: half of
# httpx's import time, paid by every `podbay` start (the TUI's first paint, ssh-proxy at each
# connection) for a command podbay never runs. httpx then offers a stub in its place.
if "httpx" not in sys.modules:
    sys.modules.setdefault("httpx._main", None)

# --- wiring --------------------------------------------------------------------------------


def _command(module: str, name: str):
    """A command's function from podbay/tui/commands/<module>.py, imported when it runs: a
    command loads its own module only (`podbay tui`'s first paint, ssh-proxy's start)."""
    def run(args):
        return getattr(import_module(f"podbay.tui.commands.{module}"), name)(args)
    run.__module__, run.__qualname__, run.target = f"podbay.tui.commands.{module}", name, (module, name)
    return run


def add_commands(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add the client commands to the `podbay` parser (`common` carries --url/--token)."""
    p = sub.add_parser("login", parents=[common], help="log in to a podbay portal: approve a code in a browser")
    p.add_argument("login_url", nargs="?", metavar="URL", help="the portal, e.g. https://podbay.example.org")
    p.add_argument("--paste", action="store_true", help="paste a token made at /hub/token instead")
    p.set_defaults(func=_command("login", "cmd_login"))
    p = sub.add_parser("logout", parents=[common], help="forget the stored token")
    p.set_defaults(func=_command("login", "cmd_logout"))

    ws = sub.add_parser("ws", help="workspaces").add_subparsers(dest="ws_command", required=True)
    p = ws.add_parser("ls", parents=[common], help="list your workspaces")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_command("workspaces", "cmd_ws_ls"))
    p = ws.add_parser("new", parents=[common], help="start a workspace (and wait until it is ready)")
    p.add_argument("name")
    p.add_argument("--image")
    p.add_argument("--profile", default="cpu", help="cpu, mig-1g.10gb, shared-1/4, gpu-1, … (default: cpu)")
    p.add_argument("--volume", action="append", help="a volume to mount; repeat for more")
    p.add_argument("--no-wait", action="store_true")
    p.add_argument("--quiet", "-q", action="store_true")
    p.set_defaults(func=_command("workspaces", "cmd_ws_new"))
    p = ws.add_parser("keep", parents=[common], help="keep a workspace's GPU for some hours even while it is idle")
    p.add_argument("name")
    p.add_argument("--hours", type=float, default=2.0, help="how long (default 2; the portal sets the most)")
    p.set_defaults(func=_command("workspaces", "cmd_ws_keep"))
    p = sub.add_parser("notices", parents=[common], help="idle GPU warnings on your workspaces, and what was done")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_command("workspaces", "cmd_notices"))
    p = sub.add_parser("usage", parents=[common], help="GPU-hours held and used, per user, team, profile or pool")
    p.add_argument("--since", help="a date (2026-11-01) or a time ago (7d); default 30 days ago")
    p.add_argument("--until", help="a date, or a time ago; default now")
    p.add_argument("--by", choices=["user", "team", "profile", "pool"], default="user")
    p.add_argument("--user", help="someone else's (admins)")
    p.add_argument("--team", help="a team's (its members, admins)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_command("workspaces", "cmd_usage"))
    for name, fn, text in [("stop", _command("workspaces", "cmd_ws_stop"), "stop a workspace (its home is kept)"),
                           ("rm", _command("workspaces", "cmd_ws_rm"), "delete a stopped or running workspace"),
                           ("open", _command("workspaces", "cmd_ws_open"),
                            "print (and open) a workspace's JupyterLab URL")]:
        p = ws.add_parser(name, parents=[common], help=text)
        p.add_argument("name")
        if name == "open":
            p.add_argument("--vscode", action="store_true",
                           help="print how to open it in desktop VS Code: a token for the Jupyter extension, "
                                "and the Remote-SSH link")
            p.add_argument("--days", type=int, default=30, help="how long that token lasts (1-90, default 30)")
        p.set_defaults(func=fn)

    p = sub.add_parser("ssh", parents=[common], help="a shell, or a command, in a workspace over SSH through the hub")
    p.add_argument("name", metavar="WORKSPACE")
    p.add_argument("--start", action="store_true", help="start it first if it is stopped")
    p.add_argument("-L", dest="local_forward", action="append", metavar="[ADDR:]PORT:HOST:HOSTPORT",
                   help="forward a local port into the workspace (as ssh -L); repeat for more")
    p.add_argument("-i", dest="identity", action="append", metavar="FILE", help="the private key to use (as ssh -i)")
    p.add_argument("-o", dest="option", action="append", metavar="OPTION", help="an ssh option (as ssh -o)")
    # Not REMAINDER: options after the name (podbay ssh dev --start) stay options.
    p.add_argument("command", nargs="*", help="-- then the command line (default: a shell)")
    p.set_defaults(func=_command("ssh", "cmd_ssh"))
    p = sub.add_parser("ssh-proxy", parents=[common],
                       help="ssh's ProxyCommand: the connection over the hub, with your podbay login")
    p.add_argument("workspace", metavar="WORKSPACE", help="NAME or podbay.NAME")
    p.set_defaults(func=_command("ssh", "cmd_ssh_proxy"))
    p = sub.add_parser("ssh-config", parents=[common],
                       help="Host entries for ssh, scp, rsync and VS Code Remote-SSH (podbay.NAME)")
    p.add_argument("--write", action="store_true", help="write them into ~/.ssh/config, in a block podbay owns")
    p.add_argument("--file", default="~/.ssh/config", help="the file --write writes (default: %(default)s)")
    p.set_defaults(func=_command("ssh", "cmd_ssh_config"))

    keys = sub.add_parser("keys", help="your SSH public keys, for SSH into workspaces").add_subparsers(
        dest="keys_command", required=True)
    p = keys.add_parser("ls", parents=[common], help="list them")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_command("ssh", "cmd_keys"))
    p = keys.add_parser("add", parents=[common], help="register a public key (default ~/.ssh/id_ed25519.pub)")
    p.add_argument("file", nargs="?", help="a .pub file")
    p.set_defaults(func=_command("ssh", "cmd_keys"))
    p = keys.add_parser("rm", parents=[common], help="remove one, by its fingerprint (SHA256:…)")
    p.add_argument("fingerprint")
    p.set_defaults(func=_command("ssh", "cmd_keys"))

    sec = sub.add_parser("secrets", help="your secrets for workspaces and jobs (WANDB_API_KEY, …)").add_subparsers(
        dest="secrets_command", required=True)
    p = sec.add_parser("ls", parents=[common], help="their names (never their values)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_command("ssh", "cmd_secrets"))
    p = sec.add_parser("set", parents=[common], help="set one; the value from a prompt or standard input")
    p.add_argument("name", help="an environment variable name, e.g. WANDB_API_KEY")
    p.set_defaults(func=_command("ssh", "cmd_secrets"))
    p = sec.add_parser("rm", parents=[common], help="remove one")
    p.add_argument("name")
    p.set_defaults(func=_command("ssh", "cmd_secrets"))

    job = sub.add_parser("job", help="training jobs").add_subparsers(dest="job_command", required=True)
    p = job.add_parser("submit", parents=[common], help="move a training run to the training pool")
    p.add_argument("--name")
    p.add_argument("--from-workspace", metavar="NAME", help="take image, volumes and working directory from it")
    p.add_argument("--gpus", type=int, default=1, help="whole GPUs on each node (default: %(default)s)")
    p.add_argument("--nodes", type=int, default=1, help="nodes the job spans (default: %(default)s)")
    p.add_argument("--time", dest="time_limit", metavar="LIMIT",
                   help="how long it may run (Slurm's format: 90, 12:00:00, 2-00:00:00; slurm pools only)")
    p.add_argument("--pool", help="the pool to run in (default: training)")
    p.add_argument("--image")
    p.add_argument("--workdir")
    p.add_argument("--volume", action="append")
    p.add_argument("--env", action="append", metavar="KEY=VALUE")
    p.add_argument("--json", action="store_true")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command")
    p.set_defaults(func=_command("jobs", "cmd_job_submit"))
    p = job.add_parser("ls", parents=[common], help="list jobs")
    p.add_argument("--user")
    p.add_argument("--team")
    p.add_argument("--state")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_command("jobs", "cmd_job_ls"))
    p = job.add_parser("show", parents=[common], help="one job")
    p.add_argument("id", type=int)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_command("jobs", "cmd_job_show"))
    p = job.add_parser("logs", parents=[common], help="a job's output")
    p.add_argument("id", type=int)
    p.add_argument("-f", "--follow", action="store_true", help="stream until the job ends")
    p.set_defaults(func=_command("jobs", "cmd_job_logs"))
    p = job.add_parser("cancel", parents=[common], help="cancel a job")
    p.add_argument("id", type=int)
    p.set_defaults(func=_command("jobs", "cmd_job_cancel"))

    p = sub.add_parser("capacity", parents=[common], help="what is free, per pool and profile")
    p.add_argument("--gpus", action="store_true", help="every node's GPUs and who holds each GPU or slice")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_command("workspaces", "cmd_capacity"))
    p = sub.add_parser("quota", parents=[common], help="your team, its quota and what you use of it")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_command("workspaces", "cmd_quota"))
    p = sub.add_parser("advise", parents=[common],
                       help="admins: the MIG / time-slicing layout each node should have, from recorded demand")
    p.add_argument("--days", type=float, default=30, help="the period of demand to replay (default 30)")
    p.add_argument("--pool", action="append", help="only this pool's nodes (repeatable)")
    p.add_argument("--mig-parted", metavar="FILE", help="write the mig-parted config file here")
    p.add_argument("--apply", metavar="NODE", help="have the engine apply NODE's advised layout (Kubernetes)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_command("advice", "cmd_advise"))
    p = sub.add_parser("tui", parents=[common], help="the terminal UI")
    p.add_argument("--first-paint", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=_command("workspaces", "cmd_tui"))

# Commands whose words after `--` are a command line for elsewhere, taken whole: argparse
# cannot put them in a positional after options that follow the other positionals
# (`podbay ssh dev --start -- nvidia-smi`).
PASS_THROUGH = {"ssh"}
# Which extra brings a module the portal's commands need (pyproject.toml's extras).
EXTRA_OF = {"kubernetes_asyncio": "kubernetes", "kubespawner": "kubernetes", "docker": "docker",
            "dockerspawner": "docker", "psycopg": "postgresql"}
# An engine's own commands need that engine's extra, whichever module is missing first.
COMMAND_EXTRA = {"images": "docker", "k8s": "kubernetes"}

def build_parser(portal: bool = True) -> argparse.ArgumentParser:
    """The `podbay` parser; portal=False leaves out the commands other packages add (a client
    command does not wait for every installed distribution's entry points to be read)."""
    p = argparse.ArgumentParser(prog="podbay", description="Self-service GPU workspaces on JupyterHub.")
    sub = p.add_subparsers(dest="command", required=True)
    # The portal's and the engines' commands, where installed. One that cannot load (a broken
    # or half-installed package) costs its own commands only, never `login` or `ssh-proxy`.
    for ep in sorted(entry_points(group="podbay.commands") if portal else (), key=lambda ep: ep.name):
        try:
            ep.load()(sub)
        except Exception as e:  # noqa: BLE001 - whatever the other package raised
            print(f"podbay: the {ep.name} commands are unavailable ({type(e).__name__}: {e}); "
                  "reinstall podbay", file=sys.stderr)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", help="the portal (default: PODBAY_URL, the workspace's hub, or `podbay login`)")
    common.add_argument("--token", help="an API token (default: PODBAY_TOKEN, or `podbay login`)")
    add_commands(sub, common)
    return p

def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    rest: list[str] | None = None
    if argv and argv[0] in PASS_THROUGH and "--" in argv:
        cut = argv.index("--")
        argv, rest = argv[:cut], argv[cut + 1:]
    client = build_parser(portal=False)
    names = next(a for a in client._actions if isinstance(a, argparse._SubParsersAction)).choices
    # `podbay tui` and `podbay ssh-proxy` (run by ssh for every connection) start quicker.
    parser = client if argv and argv[0] in names else build_parser()
    args = parser.parse_args(argv)
    if rest is not None:
        args.command = [*args.command, *rest]
    try:
        return args.func(args)
    except ModuleNotFoundError as e:
        # The portal's commands on a client-only install (`pip install podbay`).
        if not args.func.__module__.startswith("podbay.hub") or (e.name or "").startswith("podbay"):
            raise
        extra = COMMAND_EXTRA.get(args.command) or EXTRA_OF.get((e.name or "").split(".")[0], "hub")
        print(f"podbay {args.command}: this runs the portal, which needs {e.name}: pip install 'podbay[{extra}]'",
              file=sys.stderr)
        return 1
