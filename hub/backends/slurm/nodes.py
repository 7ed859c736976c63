"""What Slurm says of its nodes (`scontrol show node --oneliner`), read by the capacity
source and by `podbay doctor`."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ...quota.capacity import NodeState

# --- what Slurm says of its nodes ------------------------------------------------------


@dataclass
class SlurmNode(NodeState):
    # state: Slurm's words: IDLE, MIXED, ALLOCATED, DOWN, DRAIN, IDLE+DRAIN, …
    partitions: list[str] = field(default_factory=list)
    # The node's Gres= as Slurm has it: gpu:a100:4(S:0-1), gpu:1g.10gb:7, …
    gres: str = ""

    @property
    def usable(self) -> bool:
        """Takes new jobs: not down, drained, draining, failing or powered off."""
        words = set(re.split(r"[+*~#!%$@^-]", self.state.upper()))
        return not words & {"DOWN", "DRAIN", "DRAINING", "DRAINED", "FAIL", "FAILING", "POWERED_DOWN", "POWERING_DOWN",
                            "NOT_RESPONDING", "INVAL", "FUTURE", "MAINT", "RESERVED", "UNKNOWN"}


def gres_count(tres: str, gres: str) -> int:
    """gres/gpu=N from a TRES list (CfgTRES, AllocTRES); 0 when absent."""
    m = re.search(rf"(?:^|,)gres/{re.escape(gres)}=(\d+)(?:,|$)", tres or "")
    return int(m.group(1)) if m else 0


def parse_nodes(text: str, gres: str = "gpu") -> list[SlurmNode]:
    """`scontrol show node --oneliner`: one node per line of key=value pairs."""
    nodes = []
    for line in text.splitlines():
        fields = dict(re.findall(r"(\w+)=(.*?)(?=\s+\w+=|$)", line.strip()))
        if "NodeName" not in fields:
            continue
        nodes.append(SlurmNode(
            name=fields["NodeName"], state=fields.get("State", "UNKNOWN"),
            partitions=[p for p in fields.get("Partitions", "").split(",") if p],
            gpus=gres_count(fields.get("CfgTRES", ""), gres), gpus_used=gres_count(fields.get("AllocTRES", ""), gres),
            reason=fields.get("Reason", "").split(" [")[0], gres=fields.get("Gres", "")))
    return nodes
