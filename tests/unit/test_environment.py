"""One environment for workspaces and jobs, built in hub/environment.py for every backend."""

from __future__ import annotations

from podbay.hub.environment import gpu_env, job_env, workspace_env

MIG = "MIG-11111111-0003-4000-8000-000000000003"
GPUS = ["GPU-22222222-0000-4000-8000-000000000000", "GPU-22222222-0000-4000-8000-000000000001"]


def test_workspaces_and_jobs_see_the_same_names():
    ws = workspace_env(profile="mig-1g.10gb", image="pytorch", team="vision", units="1/7",
                       volumes=["imagenet"], devices=[MIG], service_url="http://10.0.0.1:8003")
    job = job_env(job_id=7, name="resnet", image="pytorch", team="vision", volumes=["imagenet"], devices=GPUS,
                  gpus=2, home="/home/jovyan")
    shared = {"CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "PODBAY_IMAGE", "PODBAY_TEAM",
              "PODBAY_GPU_UNITS", "PODBAY_VOLUMES"}
    assert shared <= ws.keys() and shared <= job.keys()
    assert ws["CUDA_VISIBLE_DEVICES"] == ws["NVIDIA_VISIBLE_DEVICES"] == MIG
    assert job["CUDA_VISIBLE_DEVICES"] == ",".join(GPUS) and job["PODBAY_GPU_UNITS"] == "2"
    assert (ws["PODBAY_TEAM"], job["PODBAY_TEAM"]) == ("vision", "vision")
    assert ws["PODBAY_SERVICE_URL"] == "http://10.0.0.1:8003" and ws["JUPYTER_VSCODE_PROXY_USE_SOCKET"] == "1"
    assert (job["PODBAY_JOB_ID"], job["PODBAY_JOB_NAME"], job["HOME"]) == ("7", "resnet", "/home/jovyan")


def test_no_gpu_hides_every_gpu_and_a_device_is_named_once():
    assert gpu_env([]) == {"CUDA_VISIBLE_DEVICES": "", "NVIDIA_VISIBLE_DEVICES": "void"}
    # Two shared slots of one GPU are one device to CUDA.
    assert gpu_env([GPUS[0], GPUS[0]])["CUDA_VISIBLE_DEVICES"] == GPUS[0]
    assert workspace_env(profile="cpu", image="base", team=None, units="0", volumes=[], devices=[])["PODBAY_TEAM"] == ""


def test_podbays_names_win_over_the_users():
    job = job_env(job_id=1, name="j", image="base", team=None, volumes=[], devices=[], gpus=0, home="/h",
                  user_env={"EPOCHS": "3", "CUDA_VISIBLE_DEVICES": "0"})
    assert job["EPOCHS"] == "3" and job["CUDA_VISIBLE_DEVICES"] == ""


def test_where_the_engine_places_devices_podbay_sets_no_gpu_variable():
    """Kubernetes' device plugin and Slurm's GRES set CUDA_VISIBLE_DEVICES themselves: a
    value from podbay would hide the devices the engine gave."""
    ws = workspace_env(profile="gpu-1", image="base", team="vision", units="1", volumes=[], devices=None)
    job = job_env(job_id=3, name="j", image="base", team="vision", volumes=[], devices=None, gpus=16, home="/h",
                  user_env={"EPOCHS": "3"})
    for env in (ws, job):
        assert not {"CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES"} & env.keys()
        assert env["PODBAY_TEAM"] == "vision"
    assert job["PODBAY_GPU_UNITS"] == "16"
