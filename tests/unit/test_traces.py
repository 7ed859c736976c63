"""The benchmark's trace tools: the rule that maps Alibaba's pods to podbay profiles, and
the replay benchmark on any trace of the documented shape (behaviour, not speed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]
PODS = """name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time,scheduled_time
openb-pod-0000,1000,1024,0,0,,LS,Running,0,100,0
openb-pod-0001,1000,1024,1,100,,BE,Running,10,110,10
openb-pod-0002,1000,1024,1,143,,LS,Running,20,120,20
openb-pod-0003,1000,1024,1,500,,Burstable,Succeeded,30,130,30
openb-pod-0004,1000,1024,1,600,,Guaranteed,Failed,40,140,40
openb-pod-0005,1000,1024,1,1000,,LS,Running,50,150,50
openb-pod-0006,1000,1024,4,1000,,LS,Pending,60,70,
openb-pod-0007,1000,1024,1,250,,BE,Running,5000000,5000100,5000000
"""


def derive(tmp_path, *args) -> list[list[str]]:
    src = tmp_path / "pods.csv"
    src.write_text(PODS)
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "derive_trace.py"), str(src), *args],
                         capture_output=True, text=True, check=True).stdout
    return [line.split(",") for line in out.splitlines()]


def test_pods_map_to_profiles_by_their_share_of_a_gpu(tmp_path):
    rows = derive(tmp_path)
    assert rows[0] == ["arrival", "duration", "user", "team", "profile"]
    assert [r[4] for r in rows[1:]] == ["mig-1g.10gb", "mig-2g.20gb", "mig-4g.40gb", "gpu-1", "gpu-1", "gpu-4",
                                        "mig-2g.20gb"]
    # No CPU-only pod; arrivals from 0; durations as the trace had them; QoS as team.
    assert [r[0] for r in rows[1:4]] == ["0", "10", "20"] and rows[1][1] == "100"
    assert [r[3] for r in rows[1:6]] == ["research", "serving", "training", "platform", "serving"]
    assert rows[1][2] == "u01"
    # Every 2nd pod by number; the A30's names with --family.
    assert len(derive(tmp_path, "--keep", "2")) == 1 + 3
    assert derive(tmp_path, "--family", "A30-24GB")[1][4] == "mig-1g.6gb"


def test_the_last_days_keep_what_still_ran_at_their_start(tmp_path):
    rows = derive(tmp_path, "--last-days", "1")
    # Only the late pod arrived in the last day; the others had ended long before.
    assert [(r[0], r[1], r[4]) for r in rows[1:]] == [("0", "100", "mig-2g.20gb")]


def test_the_replay_benchmark_takes_any_trace_of_the_shape(tmp_path):
    trace = tmp_path / "t.csv"
    trace.write_text("arrival,duration,user,team,profile\n"
                     + "".join(f"{i * 60},{600},u{i % 3},,{p}\n"
                               for i, p in enumerate(["mig-3g.40gb", "mig-4g.40gb", "mig-4g.40gb", "gpu-2",
                                                      "mig-1g.10gb", "gpu-1", "mig-2g.20gb", "mig-3g.40gb"] * 5)))
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "placement_replay.py"), "--trace", str(trace),
                          "--nodes", "2", "--days", "1", "--json"], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout)
    placement, layouts = result["placement"], result["layouts"]
    assert result["requests"] == 40
    # The bound never refuses more than a placement; podbay never more than first fit here.
    assert placement["offline bound"]["refused"] <= placement["unfragmented"]["refused"] <= placement["podbay"]["refused"]
    assert placement["podbay"]["refused"] <= placement["first-fit"]["refused"]
    # Here the advice refuses fewer than the layout it started from (4g.40gb: none declared).
    assert layouts["advised (in sample)"]["refused"] < layouts["as configured"]["refused"]
    # Two copies of the node; the 40-minute trace tiled over the day, for each.
    assert result["advice_speed"]["nodes"] == 2 and result["advice_speed"]["requests"] > 2 * 40 * 30
