"""Training jobs: `podbay job submit|ls|show|logs|cancel`."""

from __future__ import annotations

import os
import sys
from typing import Any

from ..client import PodbayClient
from .common import print_json, print_table, run, visible


def _print_jobs(jobs: list[dict]) -> None:
    print_table([[j["id"], j["name"], j["user"], j["state"], _gpus(j),
                 "" if j["exit_code"] is None else j["exit_code"], j["message"]] for j in jobs],
                ["id", "name", "user", "state", "gpus", "exit", "message"])


def _gpus(job: dict) -> str:
    """`2`, or `8×4` for a job across nodes (GPUs per node × nodes)."""
    nodes = job.get("nodes", 1)
    return f"{job.get('gpus_per_node', job['gpus'])}×{nodes}" if nodes > 1 else str(job["gpus"])


def cmd_job_submit(args) -> int:
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        print("podbay: give the command after --: podbay job submit --gpus 2 -- python train.py", file=sys.stderr)
        return 2
    env = {}
    for item in args.env or []:
        key, sep, value = item.partition("=")
        if not sep:
            print(f"podbay: --env takes KEY=VALUE, not {item!r}", file=sys.stderr)
            return 2
        env[key] = value
    body: dict[str, Any] = {"name": args.name or _default_job_name(command), "command": command,
                            "gpus_per_node": args.gpus, "nodes": args.nodes, "env": env}
    for key in ("image", "workdir", "from_workspace", "pool", "time_limit"):
        if getattr(args, key):
            body[key] = getattr(args, key)
    if args.volume is not None:
        body["volumes"] = args.volume

    async def go(c: PodbayClient) -> int:
        job = await c.submit_job(body)
        if args.json:
            print_json(job)
        else:
            print(f"job {job['id']} ({job['name']}) {job['state']}: podbay job logs -f {job['id']}")
        return 0
    return run(args, go)


def _default_job_name(command: list[str]) -> str:
    import re
    # `python train.py …` is named after the script; anything else after the program.
    script = next((a for a in command[1:2] if a.endswith(".py")), None)
    base = os.path.basename(script or command[0])
    name = re.sub(r"[^a-z0-9-]+", "-", base.lower().rsplit(".", 1)[0]).strip("-")
    return (name or "job")[:63]


def cmd_job_ls(args) -> int:
    async def go(c: PodbayClient) -> int:
        jobs = await c.jobs(user=args.user, team=args.team, state=args.state)
        if args.json:
            print_json(jobs)
        else:
            _print_jobs(jobs)
        return 0
    return run(args, go)


def cmd_job_show(args) -> int:
    async def go(c: PodbayClient) -> int:
        job = await c.job(args.id)
        if args.json:
            print_json(job)
        else:
            for key, value in job.items():
                print(f"{key:>15}: {visible(str(value))}")
        return 0
    return run(args, go)


def cmd_job_logs(args) -> int:
    async def go(c: PodbayClient) -> int:
        if args.follow:
            async for chunk in c.follow_logs(args.id):
                sys.stdout.write(chunk)
                sys.stdout.flush()
        else:
            sys.stdout.write(await c.logs(args.id))
        return 0
    return run(args, go)


def cmd_job_cancel(args) -> int:
    async def go(c: PodbayClient) -> int:
        job = await c.cancel_job(args.id)
        print(f"job {job['id']} ({job['name']}): {job['state']}")
        return 0
    return run(args, go)
