"""Supervise one local training job: `python -m podbay.hub.jobrun --dir D -- cmd ...`.

Started in a session of its own by the local backend. It writes its pid, runs the command
with output to D/output.log, and writes the exit code to D/exit_code when the command
ends. It outlives the service (so a service killed with -9 loses nothing), and the
service learns the outcome from the file after a restart. SIGTERM/SIGINT go to the whole
process group; this process notes them and waits for the command to end.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="podbay.hub.jobrun")
    parser.add_argument("--dir", required=True, type=Path)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    d: Path = args.dir
    (d / "supervisor.pid").write_text(str(os.getpid()))

    # A Python handler, not SIG_IGN: handlers reset on exec, so the command still dies.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    with (d / "output.log").open("ab") as log:
        try:
            child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            code = child.wait()
        except OSError as e:
            log.write(f"podbay: cannot start {command[0]!r}: {e.strerror}\n".encode())
            code = 127
    tmp = d / "exit_code.tmp"
    tmp.write_text(str(code))
    tmp.replace(d / "exit_code")
    return 0


if __name__ == "__main__":
    sys.exit(main())
