"""The slurm backend's pure parts: the batch script (Pyxis's flags included, which cannot run
here), Slurm's node lines, end states and reasons."""

from __future__ import annotations

import shlex

import pytest

from podbay.hub.config import parse_config
from podbay.hub.backends.slurm.nodes import parse_nodes
from podbay.hub.training import JobSpec
from podbay.hub.backends.slurm.jobs import SlurmJobs, account_gpus, enroot_image, exit_code, reason_words


@pytest.fixture
def jobs(tmp_path):
    cfg = parse_config({
        "backend": "slurm",
        "images": [{"name": "pytorch", "display_name": "PyTorch", "image": "nvcr.io/nvidia/pytorch:25.08-py3"}],
        "profiles": [{"id": "cpu"}],
        "pools": {"dev": {}, "training": {"queue": "batch"}},
        "teams": {"vision": {"members": ["alice"]}},
        "slurm": {"accounts": {"vision": "cv-lab"}, "qos": "normal", "gpu_type": "h100", "time_limit": "2-00:00:00"},
    })
    return SlurmJobs(cfg, tmp_path / "homes")


def job(**kw) -> JobSpec:
    base = dict(id=17, name="resnet", user="alice", image="pytorch",
                command=["torchrun", "--nproc-per-node=8", "train.py", "--lr", "3e-4; rm -rf /"],
                workdir="/home/alice/projects/resnet", env={"HOME": "/home/alice", "SECRET": "x"},
                volumes=[("/data/imagenet", "/home/alice/data/imagenet", True), ("/scratch/a", "/home/alice/data/scratch", False)],
                gpus_per_node=8, nodes=4, pool="training", queue="batch", team="vision")
    return JobSpec(**{**base, **kw})


def test_the_batch_script_as_slurm_and_pyxis_read_it(jobs, tmp_path):
    out = tmp_path / "out.log"
    assert jobs.sbatch_args(job(), out, 7) == [
        "--job-name=podbay-17", "--partition=batch", "--nodes=4", "--ntasks-per-node=1", "--time=2-00:00:00",
        "--account=cv-lab", "--qos=normal", "--gres=gpu:h100:8", "--chdir=/home/alice/projects/resnet",
        f"--output={out}", f"--error={out}", "--open-mode=append", "--dependency=singleton", "--export=ALL",
        "--export-file=7", "--comment=podbay job 17 of alice: resnet", "--parsable"]
    script = jobs.script(job(), out)
    # Nothing sbatch would read as an option (the command line carries them all).
    assert not [line for line in script.splitlines() if line.startswith("#SBATCH")]
    srun = shlex.split(script.splitlines()[-1])
    assert srun[:3] == ["srun", "--ntasks-per-node=1", "--chdir=/home/alice/projects/resnet"]
    assert "--container-image=nvcr.io#nvidia/pytorch:25.08-py3" in srun
    assert ("--container-mounts=/home/alice:/home/alice,/data/imagenet:/home/alice/data/imagenet:ro,"
            "/scratch/a:/home/alice/data/scratch") in srun
    assert "--container-workdir=/home/alice/projects/resnet" in srun
    # The command, word for word (a shell never re-reads it), after the per-node rank.
    assert srun[-5:] == ["torchrun", "--nproc-per-node=8", "train.py", "--lr", "3e-4; rm -rf /"]
    assert 'export NODE_RANK="$SLURM_NODEID"' in srun[srun.index("bash") + 2]
    assert 'MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"' in script
    assert "SECRET" not in script  # the environment goes to sbatch through a file descriptor
    assert jobs.export_env(job()).split(b"\0")[1:3] == [b"HOME=/home/alice", b"SECRET=x"]


def test_a_jobs_environment_cannot_change_what_sbatch_is_told(jobs, tmp_path, monkeypatch):
    """SBATCH_* variables override #SBATCH lines: podbay's options are on the command line,
    and sbatch's own environment is the service's few, never the job's."""
    monkeypatch.setenv("LANGSMITH_API_KEY", "service-secret")
    monkeypatch.setenv("SBATCH_ACCOUNT", "someone-elses")
    env = jobs.commands.env
    assert "LANGSMITH_API_KEY" not in env and "SBATCH_ACCOUNT" not in env and "PATH" in env
    hostile = job(env={"HOME": "/home/alice", "SBATCH_ACCOUNT": "other", "LD_PRELOAD": "/tmp/x.so"})
    args = jobs.sbatch_args(hostile, tmp_path / "o", 3)
    assert "--account=cv-lab" in args
    # They reach the job (it is the person's own environment), not sbatch.
    assert b"SBATCH_ACCOUNT=other\0" in jobs.export_env(hostile)


def test_a_job_with_no_gpus_and_no_team_asks_for_none(jobs, tmp_path):
    args = jobs.sbatch_args(job(gpus_per_node=0, team=None, nodes=1), tmp_path / "o", 3)
    assert not [a for a in args if a.startswith(("--gres", "--account", "--cpus-per-gpu"))]


@pytest.mark.parametrize("image, enroot", [
    ("nvcr.io/nvidia/pytorch:25.08-py3", "nvcr.io#nvidia/pytorch:25.08-py3"),
    ("registry.example.org:5000/team/img:1", "registry.example.org:5000#team/img:1"),
    ("ubuntu:24.04", "ubuntu:24.04"), ("library/ubuntu", "library/ubuntu")])
def test_images_as_enroot_names_them(image, enroot):
    assert enroot_image(image) == enroot


def test_node_lines():
    text = ("NodeName=dgx01 Arch=x86_64 CoresPerSocket=56 State=MIXED Partitions=batch,debug "
            "CfgTRES=cpu=224,mem=2000G,billing=224,gres/gpu=8,gres/gpu:h100=8 AllocTRES=cpu=16,gres/gpu=3,gres/gpu:h100=3\n"
            "NodeName=dgx02 State=IDLE+DRAIN Partitions=batch CfgTRES=cpu=224,gres/gpu=8 AllocTRES= "
            "Reason=bad dimm [root@2026-11-30T10:00:00]\n"
            "NodeName=dgx03 State=DOWN* Partitions=batch CfgTRES=cpu=224,gres/gpu=8 AllocTRES= Reason=Not responding\n"
            "NodeName=cpu01 State=IDLE Partitions=cpu CfgTRES=cpu=64,mem=512G AllocTRES=\n")
    nodes = {n.name: n for n in parse_nodes(text)}
    assert (nodes["dgx01"].gpus, nodes["dgx01"].gpus_used, nodes["dgx01"].usable) == (8, 3, True)
    assert nodes["dgx01"].partitions == ["batch", "debug"]
    assert (nodes["dgx02"].usable, nodes["dgx02"].reason) == (False, "bad dimm")
    assert (nodes["dgx03"].usable, nodes["dgx03"].reason) == (False, "Not responding")
    assert nodes["cpu01"].gpus == 0


def test_reasons_and_exit_codes():
    assert reason_words("Resources") == "Resources: waiting for the nodes it needs to free up"
    assert reason_words("(QOSMaxGRESPerUser)") == "QOSMaxGRESPerUser: the QOS's per-user GPU limit is reached"
    assert reason_words("SomethingNew") == "SomethingNew"
    assert reason_words("None") == "waiting in Slurm's queue"
    assert exit_code("2:0") == (2, 0) and exit_code("0:9") == (0, 9) and exit_code("") == (0, 0)
    assert exit_code("garbled") == (1, 0)


def test_settings_are_checked():
    from podbay.hub.config import ConfigError

    with pytest.raises(ConfigError, match="time_limit"):
        parse_config({"backend": "slurm", "images": [{"name": "a", "display_name": "A", "image": "a"}],
                      "profiles": [{"id": "cpu"}], "pools": {"training": {"queue": "batch"}},
                      "slurm": {"time_limit": "two hours"}})
    with pytest.raises(ConfigError, match="no pool names a Slurm partition"):
        parse_config({"backend": "slurm", "images": [{"name": "a", "display_name": "A", "image": "a"}],
                      "profiles": [{"id": "cpu"}], "pools": {"training": {}}})


ASSOC_MGR = """Current Association Manager state

Association Records

ClusterName=pod Account=cv-lab UserName= Partition= Priority=0 ID=5
    GrpJobs=N(1) GrpJobsAccrue=N(0)
    GrpTRES=cpu=N(1),mem=N(100),node=N(1),billing=N(1),gres/gpu=16(9),gres/gpu:h100=N(9)
    GrpTRESMins=cpu=N(0),gres/gpu=N(0)
ClusterName=pod Account=cv-lab UserName=alice(1000) Partition= Priority=0 ID=8
    GrpTRES=cpu=N(1),gres/gpu=4(2),gres/gpu:h100=N(2)
ClusterName=pod Account=open UserName= Partition= Priority=0 ID=9
    GrpTRES=cpu=N(0),gres/gpu=N(3)
"""


def test_an_accounts_gpu_limit_and_use():
    assert account_gpus(ASSOC_MGR, "cv-lab") == (16, 9)  # the account's own record, not alice's
    assert account_gpus(ASSOC_MGR, "open") == (None, 3)
    assert account_gpus(ASSOC_MGR, "missing") == (None, None)


def test_time_limits(jobs, tmp_path):
    from podbay.hub.backends.slurm.commands import seconds

    assert [seconds(t) for t in ("90", "10:30", "12:00:00", "2-00", "2-01:30", "1-00:00:01")] == \
        [5400, 630, 43200, 172800, 178200, 86401]
    assert "--time=12:00:00" in jobs.sbatch_args(job(time_limit="12:00:00"), tmp_path / "o", 3)
    with pytest.raises(ValueError, match="time_limit 0 would be no limit"):
        jobs.check_submit(team=None, pool="training", gpus_per_node=0, nodes=1, time_limit="0")
    capped = SlurmJobs(parse_config({
        "backend": "slurm", "images": [{"name": "a", "display_name": "A", "image": "a"}], "profiles": [{"id": "cpu"}],
        "pools": {"dev": {}, "training": {"queue": "batch"}}, "slurm": {"time_limit": "60", "time_max": "1-00:00:00"}}),
        tmp_path)
    with pytest.raises(ValueError, match="above the most a job may ask for here, 1-00:00:00"):
        capped.check_submit(team=None, pool="training", gpus_per_node=0, nodes=1, time_limit="2-00:00:00")
    from podbay.hub.config import ConfigError

    with pytest.raises(ConfigError, match="above time_max"):
        parse_config({"backend": "slurm", "images": [{"name": "a", "display_name": "A", "image": "a"}],
                      "profiles": [{"id": "cpu"}], "pools": {"dev": {}, "training": {"queue": "batch"}},
                      "slurm": {"time_limit": "2-00:00:00", "time_max": "1-00:00:00"}})


def test_engines_that_limit_no_time_refuse_a_time_limit(tmp_path):
    from podbay.hub.backends.local.jobs import LocalBackend

    with pytest.raises(ValueError, match="the local backend does not limit a job's time"):
        LocalBackend(tmp_path).check_submit(team=None, pool="training", gpus_per_node=1, nodes=1, time_limit="60")
    LocalBackend(tmp_path).check_submit(team=None, pool="training", gpus_per_node=1, nodes=1)
