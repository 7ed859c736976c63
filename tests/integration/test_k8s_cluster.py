"""The kubernetes backend against an emulated API server (tests/standins/k8s_emulator.py): the real
kubernetes_asyncio client, podbay's watches, capacity and job backend; the tests play the
kubelet, the Job controller and Kueue's admission, which nothing here runs."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading

import pytest
import yaml

from tests.standins.k8s_emulator import emulated_cluster
from tests.unit.test_k8s import K8S_CONFIG, MIXED_H100, mixed_allocatable

NS = "ml"
# The emulator and the client live in the fixtures' loop: the tests run in the same one.
pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest.fixture
async def cluster():
    from kubernetes_asyncio import client

    async with emulated_cluster() as (url, emu):
        async with client.ApiClient(client.Configuration(host=url)) as api:
            yield api, emu


def gpu_node(name: str, pool: str, labels: dict, allocatable: dict) -> dict:
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {**labels, "podbay.io/pool": pool}},
            "status": {"allocatable": {"cpu": "64", "memory": "512Gi", **allocatable}}}


def gpu_pod(name: str, node: str, limits: dict, namespace: str = "other-team") -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "x", "resources": {"limits": limits}}]},
            "status": {"phase": "Running"}}


async def until(predicate, timeout: float = 10):
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "not reached in time"
        await asyncio.sleep(0.05)


def config(tmp_path, **kubernetes):
    data = json.loads(json.dumps(K8S_CONFIG))
    data["kubernetes"].update(kubernetes)
    (tmp_path / "podbay.yaml").write_text(yaml.safe_dump(data))
    return tmp_path / "podbay.yaml"


async def test_capacity_follows_the_cluster_through_the_watch(cluster, kubernetes_installed, tmp_path):
    from kubernetes_asyncio import client

    from podbay.hub.config import load_config, parse_profile_id
    from podbay.hub.backends.kubernetes.capacity import ClusterCapacity
    from podbay.hub.backends.kubernetes.watch import ClusterView, ClusterWatch
    from podbay.hub.quota import Snapshot

    api, emu = cluster
    await emu.add_object("v1/nodes", gpu_node("h100-a", "dev", MIXED_H100, mixed_allocatable(MIXED_H100)))
    await emu.add_object("v1/nodes", gpu_node("dgx-1", "training", {}, {"nvidia.com/gpu": "8"}))
    await emu.add_object("v1/pods", gpu_pod("busy", "dgx-1", {"nvidia.com/gpu": "6"}))
    cfg = load_config(config(tmp_path))
    view = ClusterView()
    watcher = asyncio.create_task(ClusterWatch(view, client.CoreV1Api(api), watch_timeout=5).run())
    capacity = ClusterCapacity(cfg, cfg.kubernetes, view)
    nothing = Snapshot(0, frozenset(), {}, {}, {})

    def free(profile, pool):
        return capacity.counts(parse_profile_id(profile), [pool], nothing)[1]

    try:
        await until(view.ready.is_set)
        assert free("mig-1g.10gb", "dev") == 2 and free("gpu-2", "training") == 1 and free("gpu-8", "training") == 0
        # A workspace of another namespace takes a slice; the busy training pod ends.
        await emu.add_object("v1/pods", gpu_pod("ws", "h100-a", {"nvidia.com/mig-1g.10gb": "1"}))
        await emu.patch_object("v1/pods", "other-team", "busy", {"status": {"phase": "Succeeded"}})
        await until(lambda: free("mig-1g.10gb", "dev") == 1 and free("gpu-8", "training") == 1)
        await emu.delete_object("v1/pods", "other-team", "ws")
        await until(lambda: free("mig-1g.10gb", "dev") == 2)
        await emu.delete_object("v1/nodes", None, "dgx-1")
        await until(lambda: capacity.most_gpus_per_node("training") == 0)
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)


class Controllers:
    """What a cluster runs and the emulator does not: Kueue admits a suspended Job, the Job
    controller makes its pods (`<job>-<index>` for an Indexed Job), the kubelet runs them."""

    def __init__(self, emu):
        self.emu = emu

    async def admit(self, name: str) -> None:
        await self.emu.patch_object("batch/v1/jobs", NS, name, {"spec": {"suspend": False}})

    async def run_pods(self, name: str, log: str = "") -> None:
        job = self.emu.get_object("batch/v1/jobs", NS, name)
        for index in range(job["spec"].get("completions") or 1):
            pod = f"{name}-{index}"
            await self.emu.add_object("v1/pods", {
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": pod, "namespace": NS, "labels": {"job-name": name},
                             "annotations": {"batch.kubernetes.io/job-completion-index": str(index)}},
                "spec": job["spec"]["template"]["spec"], "status": {"phase": "Running"}})
            self.emu.pod_logs[NS, pod] = log if index == 0 else "another rank\n"
        await self.emu.patch_object("batch/v1/jobs", NS, name, {"status": {"active": job["spec"].get("parallelism") or 1}})

    async def end(self, name: str, code: int) -> None:
        job = self.emu.get_object("batch/v1/jobs", NS, name)
        n = job["spec"].get("completions") or 1
        for index in range(n):
            await self.emu.patch_object("v1/pods", NS, f"{name}-{index}", {"status": {
                "phase": "Succeeded" if code == 0 else "Failed",
                "containerStatuses": [{"name": "job", "ready": False, "restartCount": 0, "image": "x", "imageID": "",
                                       "state": {"terminated": {"exitCode": code}}}]}})
        status = {"succeeded": n} if code == 0 else {"failed": 1}
        await self.emu.patch_object("batch/v1/jobs", NS, name, {"status": {**status, "active": 0}})


@pytest.fixture
async def k8s_jobs(cluster, kubernetes_installed, tmp_path):
    from podbay.hub.jobs import JobManager
    from podbay.hub.portal import Portal
    from podbay.hub.backends.kubernetes.jobs import KubernetesJobs

    api, emu = cluster
    async with watched(api, emu):
        path = config(tmp_path, kueue=True,
                      home={"storage_class": "nfs-homes", "size": "20Gi", "access_mode": "ReadWriteMany"})
        portal = Portal.open(path, f"sqlite:///{tmp_path / 'ledger.sqlite'}", tmp_path)

        def manager():
            return JobManager(portal, KubernetesJobs(portal.cfg, api))
        yield manager, Controllers(emu), emu
        portal.book.dispose()


@contextlib.asynccontextmanager
async def watched(api, emu):
    """Two DGX nodes in the training pool, watched into the backend's view as the hub does."""
    from kubernetes_asyncio import client

    from podbay.hub.backends.kubernetes.plugin import KubernetesBackend
    from podbay.hub.backends.kubernetes.watch import ClusterWatch

    for n in (1, 2):
        await emu.add_object("v1/nodes", gpu_node(f"dgx-{n}", "training", {}, {"nvidia.com/gpu": "8"}))
    view = KubernetesBackend.view
    view.ready.clear()
    task = asyncio.create_task(ClusterWatch(view, client.CoreV1Api(api), watch_timeout=5).run())
    try:
        await until(view.ready.is_set)
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_two_node_job_waits_for_kueue_runs_and_succeeds(k8s_jobs):
    from podbay.hub.jobs import JobRequest

    make, controllers, emu = k8s_jobs
    m = make()
    job = m.submit("alice", [], JobRequest(name="llm", gpus_per_node=8, nodes=2, pool="training",
                                           command=["torchrun", "train.py"]))
    await m.tick()
    name = f"podbay-job-{job.id}"
    created = emu.get_object("batch/v1/jobs", NS, name)
    assert created["spec"]["completionMode"] == "Indexed" and created["spec"]["suspend"] is True
    assert created["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "podbay-vision"
    assert emu.get_object("v1/services", NS, name)["spec"]["clusterIP"] == "None"
    shown = m.get(job.id)
    assert shown.state == "queued" and shown.message == "queued in kubernetes: waiting for Kueue to admit it"
    # Kueue's own reason, from the Workload it made for the Job.
    await emu.add_object("kueue.x-k8s.io/v1beta1/workloads", {
        "apiVersion": "kueue.x-k8s.io/v1beta1", "kind": "Workload",
        "metadata": {"name": f"job-{name}-1a2b3", "namespace": NS,
                     "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": name,
                                          "uid": created["metadata"]["uid"]}]},
        "status": {"conditions": [{"type": "QuotaReserved", "status": "False", "reason": "Pending",
                                   "message": "couldn't assign flavors to pod set main: insufficient quota for "
                                              "nvidia.com/gpu in flavor podbay-training"}]}})
    await m.tick()
    assert m.get(job.id).message == ("queued in kubernetes: not admitted by Kueue: couldn't assign flavors to pod set "
                                     "main: insufficient quota for nvidia.com/gpu in flavor podbay-training")
    assert m.portal.book.snapshot().job_gpus_of("vision", "alice") == 0
    await controllers.admit(name)
    await controllers.run_pods(name, log="rank 0: epoch 1\n")
    await m.tick()
    assert m.get(job.id).state == "running"
    assert m.portal.book.snapshot().job_gpus_of("vision", "alice") == 16, "8 GPUs on each of 2 nodes"
    data, cursor = await m.read_logs(job.id)
    assert data == b"rank 0: epoch 1\n" and cursor.startswith(f"{name}-0:16:")
    emu.pod_logs[NS, f"{name}-0"] += "rank 0: epoch 2\n"
    data, cursor = await m.read_logs(job.id, cursor)
    assert data == b"rank 0: epoch 2\n" and cursor.startswith(f"{name}-0:32:")
    assert await m.read_logs(job.id, cursor) == (b"", cursor), "nothing new"
    # The kubelet rotates the log (containerLogMaxSize): the API serves the new file only.
    emu.pod_logs[NS, f"{name}-0"] = "rank 0: epoch 3\n"
    data, cursor = await m.read_logs(job.id, cursor)
    assert data.endswith(b"rank 0: epoch 3\n") and b"rotated" in data, data
    # Rotated again into a file longer than the old offset: not read from the middle either.
    emu.pod_logs[NS, f"{name}-0"] = "rank 0: epoch 4, a line longer than all that came before\n"
    data, cursor = await m.read_logs(job.id, cursor)
    assert data.endswith(b"rank 0: epoch 4, a line longer than all that came before\n") and b"rotated" in data
    # Rotated into a file whose bytes before the old offset happen to repeat the old ones (a
    # warning printed again and again): the file's start tells.
    warning = "NCCL WARN: the same long warning line, printed again and again by every step\n"
    emu.pod_logs[NS, f"{name}-0"] = "step 1\n" + warning * 3
    data, cursor = await m.read_logs(job.id, cursor)
    emu.pod_logs[NS, f"{name}-0"] = "step 9\n" + warning * 4  # the same bytes before the old offset
    data, cursor = await m.read_logs(job.id, cursor)
    assert b"rotated" in data and data.endswith(warning.encode() * 4), data
    # A cursor of an older podbay (no fingerprint) still reads on.
    emu.pod_logs[NS, f"{name}-0"] += "rank 0: epoch 5\n"
    offset = len(emu.pod_logs[NS, f"{name}-0"]) - len("rank 0: epoch 5\n")
    assert (await m.read_logs(job.id, f"{name}-0:{offset}"))[0] == b"rank 0: epoch 5\n"
    await controllers.end(name, 0)
    await m.tick()
    done = m.get(job.id)
    assert (done.state, done.exit_code) == ("succeeded", 0)
    assert m.portal.book.allocations(kind="job") == []


async def test_failure_cancel_and_a_restart_lose_nothing_and_start_nothing_twice(k8s_jobs):
    from podbay.hub.jobs import JobRequest

    make, controllers, emu = k8s_jobs
    m = make()
    bad = m.submit("alice", [], JobRequest(name="bad", gpus_per_node=1, pool="training", command=["false"]))
    long = m.submit("alice", [], JobRequest(name="long", gpus_per_node=1, pool="training", command=["sleep", "1d"]))
    waiting = m.submit("alice", [], JobRequest(name="waiting", gpus_per_node=1, pool="training", command=["true"]))
    await m.tick()
    for job in (bad, long):
        await controllers.admit(f"podbay-job-{job.id}")
        await controllers.run_pods(f"podbay-job-{job.id}")
    await controllers.end(f"podbay-job-{bad.id}", 3)
    await m.tick()
    assert (m.get(bad.id).state, m.get(bad.id).exit_code) == ("failed", 3)
    assert m.get(long.id).state == "running"

    # The service restarts: a new manager finds every job by its name.
    again = make()
    await again.reconcile()
    await again.tick()
    assert again.get(long.id).state == "running" and again.get(waiting.id).state == "queued"
    jobs = [k for k in emu.objects if k[0].plural == "jobs" and not emu.objects[k].deleted]
    assert len(jobs) == 3, "nothing handed over twice"
    # A second hand-over of the same job (a restart between create and record) finds it.
    spec = again.scheduler._spec(again.get(waiting.id), None)
    assert await again.backend.submit(spec) == {"name": f"podbay-job-{waiting.id}", "namespace": NS}

    cancelled = await again.cancel(waiting.id)
    assert cancelled.state == "cancelled"
    assert emu.get_object("batch/v1/jobs", NS, f"podbay-job-{waiting.id}") is None
    assert again.portal.book.snapshot().job_gpus_of("vision", "alice") == 1, "only the long one holds GPUs"
    await again.cancel(long.id)
    assert again.portal.book.allocations(kind="job") == []


async def test_without_kueue_a_job_waits_with_the_schedulers_reason(cluster, kubernetes_installed, tmp_path):
    from podbay.hub.jobs import JobManager
    from podbay.hub.portal import Portal
    from podbay.hub.backends.kubernetes.jobs import KubernetesJobs

    api, emu = cluster
    async with watched(api, emu):
        portal = Portal.open(config(tmp_path, kueue=False), f"sqlite:///{tmp_path / 'ledger.sqlite'}", tmp_path)
        m = JobManager(portal, KubernetesJobs(portal.cfg, api))
        await scheduler_reason(m, emu)
        portal.book.dispose()


async def scheduler_reason(m, emu):
    from podbay.hub.jobs import JobRequest

    job = m.submit("alice", [], JobRequest(name="j", gpus_per_node=8, pool="training", command=["true"]))
    await m.tick()
    name = f"podbay-job-{job.id}"
    assert "suspend" not in emu.get_object("batch/v1/jobs", NS, name)["spec"]
    await emu.add_object("v1/pods", {"apiVersion": "v1", "kind": "Pod",
                                     "metadata": {"name": f"{name}-x", "namespace": NS, "labels": {"job-name": name}},
                                     "spec": {"containers": [{"name": "job", "image": "x"}]},
                                     "status": {"phase": "Pending", "conditions": [
                                         {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                          "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."}]}})
    await m.tick()
    assert m.get(job.id).message == ("queued in kubernetes: not scheduled: 0/3 nodes are available: "
                                     "3 Insufficient nvidia.com/gpu.")


async def test_the_plugin_reconciles_watches_and_runs_jobs_through_its_kubeconfig(cluster, kubernetes_installed,
                                                                                 tmp_path):
    """What the hub and the service do with the backend: at hub start, release what the
    book holds for workspace pods that are gone; while serving, keep the view current; run
    jobs with a client of their own loop. All through the kubeconfig in podbay.yaml."""
    from sqlalchemy import update

    from podbay.hub.backends import BackendError, load
    from podbay.hub.portal import Portal
    from podbay.hub.quota.database import AllocationRow
    from podbay.hub.training import JobSpec

    api, emu = cluster
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "emulated",
        "clusters": [{"name": "emulated", "cluster": {"server": api.configuration.host}}],
        "contexts": [{"name": "emulated", "context": {"cluster": "emulated", "user": "tester"}}],
        "users": [{"name": "tester", "user": {}}]}))
    portal = Portal.open(config(tmp_path, kubeconfig=str(kubeconfig)), f"sqlite:///{tmp_path / 'ledger.sqlite'}",
                         tmp_path)
    plugin = load("kubernetes")
    for user, server in (("alice", "dev"), ("bob", "old")):
        request = portal.validate(user, [], {"profile": "cpu"})
        portal.claim(key=f"workspace:{user}/{server}", kind="workspace", user=user, team=request.team,
                     demand=request.demand, quota=request.quota)
    with portal.book.write_session() as s, s.begin():  # both started long before this hub
        s.execute(update(AllocationRow).values(created=AllocationRow.created - 3600))
    await emu.add_object("v1/pods", {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "jupyter-alice--dev", "namespace": NS,
                     "labels": {"podbay.io/component": "workspace"},
                     "annotations": {"hub.jupyter.org/username": "alice", "hub.jupyter.org/servername": "dev"}},
        "spec": {"containers": [{"name": "notebook", "image": "x"}]}, "status": {"phase": "Running"}})
    side = await asyncio.to_thread(plugin.start_hub, portal.cfg, portal, 8081)
    assert side.released == ["workspace:bob/old"]
    assert [a.key for a in portal.book.allocations("workspace")] == ["workspace:alice/dev"]

    await emu.add_object("v1/nodes", gpu_node("dgx-1", "training", {}, {"nvidia.com/gpu": "8"}))
    plugin.view.ready.clear()
    serving = asyncio.create_task(plugin.serve(portal))
    try:
        await until(lambda: portal.capacity.most_gpus_per_node("training") == 8)
        jobs = plugin.training(portal)
        ref = await jobs.submit(JobSpec(id=5, name="t", user="alice", image="pytorch", command=["true"],
                                        workdir="/home/jovyan", env={}, gpus_per_node=8, pool="training",
                                        team="vision"))
        assert ref == {"name": "podbay-job-5", "namespace": NS}
        assert (await jobs.status({"job_id": 5})).state == "pending"
        await jobs.aclose()
    finally:
        serving.cancel()
        await asyncio.gather(serving, return_exceptions=True)

    broken = config(tmp_path, kubeconfig=str(tmp_path / "missing"))
    cfg = Portal.open(broken, f"sqlite:///{tmp_path / 'ledger.sqlite'}", tmp_path).cfg
    with pytest.raises(BackendError, match=r"refusing to start the kubernetes backend: podbay is not in a cluster "
                                           r"and cannot use the kubeconfig .*missing"):
        await asyncio.to_thread(plugin.start_hub, cfg, portal, 8081)
    portal.book.dispose()


async def test_the_charts_hub_runs_podbays_part_of_the_configuration(tmp_path, monkeypatch, capsys):
    """config/helm/values.yaml's hub.config, then its extraConfig (configure_on_cluster), on
    the hub's loop, against the stand-in cluster in a process of its own: podbay.yaml's teams
    become groups, the quota book is reconciled, the cluster watch runs, the service gets the
    API server's address; a wrong spawner or a broken podbay.yaml stop the hub with a reason."""
    from traitlets.config import Config

    from podbay.hub import hubconfig
    from podbay.hub.backends.kubernetes.plugin import KubernetesBackend
    from tests.harness import ROOT, stand_in_cluster_running

    values = yaml.safe_load((ROOT / "config" / "helm" / "values.yaml").read_text())

    def chart_config(podbay_yaml) -> Config:
        c = Config(json.loads(json.dumps(values["hub"]["config"])))
        c.PodbaySpawnerMixin.config_file = str(podbay_yaml)
        c.PodbaySpawnerMixin.data_dir = str(tmp_path / "srv")
        c.PodbaySpawnerMixin.db_url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
        c.JupyterHub.services = [{"name": "podbay", **values["hub"]["services"]["podbay"]}]
        c.CryptKeeper.keys = ["chart-key"]
        return c

    from sqlalchemy import update

    from jupyterhub.app import JupyterHub

    from podbay.hub.portal import Portal
    from podbay.hub.quota.database import AllocationRow

    # The chart gives the hub's key as CryptKeeper.keys only (its values set no environment).
    # configure_on_cluster sets PODBAY_SECRETS_KEY: set first, so that the teardown removes it.
    for name in ("PODBAY_SECRETS_KEY", "JUPYTERHUB_CRYPT_KEY"):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    with stand_in_cluster_running(tmp_path, ROOT / "tests" / "data" / "k8s-contract-nodes.yaml") as (_, kubeconfig):
        podbay_yaml = config(tmp_path, kubeconfig=str(kubeconfig))
        data = yaml.safe_load(podbay_yaml.read_text())
        data["admins"] = ["ops"]
        podbay_yaml.write_text(yaml.safe_dump(data))
        # A workspace claimed long before this hub, whose pod is gone: the start releases it.
        portal = Portal.open(podbay_yaml, f"sqlite:///{tmp_path / 'ledger.sqlite'}", tmp_path)
        request = portal.validate("alice", [], {"profile": "cpu"})
        portal.claim(key="workspace:alice/gone", kind="workspace", user="alice", team=request.team,
                     demand=request.demand, quota=request.quota)
        with portal.book.write_session() as session, session.begin():
            session.execute(update(AllocationRow).values(created=AllocationRow.created - 3600))
        c = chart_config(podbay_yaml)
        c.JupyterHub.load_groups = {"staff": {"users": ["carol"]}}  # the deployment's own group stays
        c.GenericOAuthenticator.admin_users = {"root"}  # an authenticator's own admins, beside podbay's
        c.JupyterHub.subdomain_host = "https://hub.example.org"
        KubernetesBackend.view.ready.clear()
        # Only this test's background work (an earlier test's may belong to a loop now closed).
        hubconfig._serving.clear()
        hubconfig.configure_on_cluster(c)
        try:
            assert c.JupyterHub.load_groups == {"staff": {"users": ["carol"]}, "vision": {"users": ["alice"]}}
            # A later extraConfig whose authenticator manages groups: JupyterHub loads the
            # deployment's own only (it refuses to start with podbay's teams beside it).
            c.GenericOAuthenticator.manage_groups = True
            assert JupyterHub(config=c).load_groups == {"staff": {"users": ["carol"]}}
            del c.GenericOAuthenticator.manage_groups
            assert c.GenericOAuthenticator.admin_users == {"root", "ops"} and c.Authenticator.admin_users == {"ops"}
            assert portal.book.get("workspace:alice/gone") is None, "reconciled with the pods that run"
            # A secret set through the service (its key passed on) opens in the hub's spawns.
            from podbay.hub.secrets import SecretStore
            from podbay.hub.spawner import shared_portal

            SecretStore(portal.book, c.JupyterHub.services[0]["environment"]["PODBAY_SECRETS_KEY"]).put(
                "alice", "TOKEN", "s3cret")
            hubs = shared_portal(os.path.abspath(podbay_yaml), c.PodbaySpawnerMixin.db_url,
                                 os.path.abspath(tmp_path / "srv"), "kubernetes")
            assert hubs.secrets.values("alice") == {"TOKEN": "s3cret"}
            (service,) = c.JupyterHub.services
            assert service["environment"]["KUBERNETES_SERVICE_HOST"] == "10.96.0.1"
            assert service["environment"]["PODBAY_SERVICE_BIND"] == "0.0.0.0"
            # The service reaches the hub in its own pod, not through the hub's Service (a
            # hairpin that not every CNI passes).
            assert service["environment"]["PODBAY_HUB_API_URL"] == "http://127.0.0.1:8081/hub/api"
            # The service knows workspaces have origins of their own (hub/browser.py: shares_origin).
            assert service["environment"]["PODBAY_SUBDOMAIN_HOST"] == "https://hub.example.org"
            # The chart's hub pages keep no opener.
            assert c.JupyterHub.tornado_settings["headers"]["Cross-Origin-Opener-Policy"] == "noopener-allow-popups"
            await until(KubernetesBackend.view.ready.is_set)
            assert {n["metadata"]["name"] for n in KubernetesBackend.view()[0]} >= {"dev-01", "train-01"}
        finally:
            for task in hubconfig._serving:
                task.cancel()
            await asyncio.gather(*hubconfig._serving, return_exceptions=True)
            hubconfig._serving.clear()

        # An authenticator that manages groups (from the provider's claims): no load_groups, or
        # JupyterHub would refuse to start.
        managed = chart_config(podbay_yaml)
        managed.GenericOAuthenticator.manage_groups = True
        hubconfig.configure_on_cluster(managed)
        for task in hubconfig._serving:
            task.cancel()
        await asyncio.gather(*hubconfig._serving, return_exceptions=True)
        hubconfig._serving.clear()
        assert "load_groups" not in managed.JupyterHub
        portal.book.dispose()

        wrong = chart_config(config(tmp_path, kubeconfig=str(kubeconfig)))
        wrong.JupyterHub.spawner_class = "kubespawner.KubeSpawner"
        with pytest.raises(SystemExit):
            hubconfig.configure_on_cluster(wrong)
        assert "podbay's kubernetes backend needs 'podbay-kubernetes'" in capsys.readouterr().err
        broken = tmp_path / "broken.yaml"
        broken.write_text("profiles: [{id: gpu-x}]\nkubernetes: {namespace: Not_A_Name}\n")
        with pytest.raises(SystemExit):
            hubconfig.configure_on_cluster(chart_config(broken))
        err = capsys.readouterr().err
        assert "refusing to start: the configuration is invalid" in err and "namespace" in err, err


async def test_podbay_k8s_check_counts_the_cluster_and_names_the_nodes_it_does_not_know(tmp_path):
    """`podbay k8s check` against the stand-in cluster: what is free per pool and profile, as
    the form counts it, and a node whose GPU Feature Discovery labels say a MIG strategy the
    config does not use is named (and the command fails), not silently counted."""
    import subprocess
    import sys

    from tests.harness import ROOT, stand_in_cluster_running

    contract = yaml.safe_load((ROOT / "tests" / "data" / "podbay-contract.yaml").read_text())
    nodes = (ROOT / "tests" / "data" / "k8s-contract-nodes.yaml").read_text()
    # A MIG node set up with the single strategy in a pool the config says is mixed.
    nodes += "\n---\n" + yaml.safe_dump(gpu_node("odd-1", "dev", {
        "nvidia.com/mig.strategy": "single", "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB-MIG-1g.10gb"},
        {"nvidia.com/gpu": "7"}))
    (tmp_path / "nodes.yaml").write_text(nodes)
    with stand_in_cluster_running(tmp_path, tmp_path / "nodes.yaml") as (_, kubeconfig):
        contract["kubernetes"]["kubeconfig"] = str(kubeconfig)
        (tmp_path / "podbay.yaml").write_text(yaml.safe_dump(contract))
        run = await asyncio.to_thread(subprocess.run, [
            sys.executable, "-m", "podbay.hub.cli", "k8s", "check", "--config", str(tmp_path / "podbay.yaml")],
            capture_output=True, text=True)
    assert run.returncode == 1, run.stdout + run.stderr
    lines = run.stdout.splitlines()
    assert lines[0] == "5 nodes, 0 pods"
    assert "  dev          mig-1g.10gb      2 free of 2" in lines
    assert "  dev          shared-1/2       2 free of 2" in lines
    # The odd node's 7 nvidia.com/gpu are MIG slices: not whole GPUs either.
    assert "  dev          gpu-1            1 free of 1" in lines, run.stdout
    assert ("warning: node odd-1 (pool dev) uses the single MIG strategy, the config says mixed: its MIG devices "
            "are not counted") in lines, run.stdout


async def test_the_stand_in_admits_pods_as_pod_security_restricted_does_and_a_refused_job_says_why(
        kubernetes_installed, tmp_path):
    """The stand-in cluster refuses what the API server's Pod Security admission refuses at
    the `restricted` level (every namespace here, as podbay's docs ask for its own): podbay's
    workspace and job pods pass; a pod below it is refused in the API server's words, and a
    Job whose pods are refused makes none, and podbay says so rather than "waiting"."""
    from kubernetes_asyncio import client
    from kubernetes_asyncio.client.exceptions import ApiException

    from podbay.hub.config import load_config
    from podbay.hub.backends.kubernetes.objects import training_job
    from podbay.hub.backends.kubernetes.jobs import KubernetesJobs
    from tests.standins.k8s_cluster import CLUSTER_RESOURCES, Cluster

    cfg = load_config(config(tmp_path, kueue=False), "kubernetes")
    settings = cfg.kubernetes
    async with emulated_cluster(CLUSTER_RESOURCES) as (url, emu):
        cluster = Cluster(emu, tmp_path)
        async with client.ApiClient(client.Configuration(host=url)) as api:
            core = client.CoreV1Api(api)
            plain = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "plain"},
                     "spec": {"containers": [{"name": "c", "image": "x"}]}}
            with pytest.raises(ApiException) as refused:
                await core.create_namespaced_pod(NS, plain)
            assert refused.value.status == 403
            body = json.loads(refused.value.body)["message"]
            assert body.startswith('pods "plain" is forbidden: violates PodSecurity "restricted:latest": '
                                   "allowPrivilegeEscalation != false")
            assert 'must set securityContext.capabilities.drop=["ALL"]' in body and "runAsNonRoot != true" in body
            # A namespace its operator labelled privileged admits it.
            await emu.add_object("v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {
                "name": "lab", "labels": {"pod-security.kubernetes.io/enforce": "privileged"}}})
            await core.create_namespaced_pod("lab", plain)

            def job(job_id: int) -> dict:
                (made,) = training_job(cfg, settings, job_id=job_id, name="j", user="alice", team="vision",
                                       image="podbay/base:2026.11", command=["true"], workdir="/home/jovyan",
                                       env={}, volumes=[], gpus_per_node=1, nodes=1, pool="training", queue=None)
                return made

            batch = client.BatchV1Api(api)
            await batch.create_namespaced_job(settings.namespace, job(1))
            rooted = job(2)
            rooted["spec"]["template"]["spec"]["securityContext"] = {"runAsUser": 0}
            await batch.create_namespaced_job(settings.namespace, rooted)
            await cluster.job_controller()
            pods = {p["metadata"]["labels"]["job-name"] for p in cluster.objects("v1/pods")
                    if p["metadata"]["namespace"] == settings.namespace}
            assert pods == {"podbay-job-1"}, "podbay's job pod is admitted, the root one is not"
            status = await KubernetesJobs(cfg, api).status({"job_id": 2})
            assert status.state == "pending"
            assert status.message.startswith("the cluster refuses its pods (tell the platform team): Error creating: "
                                             'pods "podbay-job-2-')
            assert "runAsUser=0" in status.message


async def test_the_service_believes_forwarded_addresses_from_the_proxy_pods_only(cluster, kubernetes_installed,
                                                                                tmp_path, monkeypatch):
    """On a cluster the proxy is a pod of its own: the service follows the addresses of the
    pods the chart labels as the proxy (PODBAY_TRUSTED_PROXY_PODS), never a workspace pod's."""
    from podbay.hub.browser import TrustedProxies
    from podbay.hub.backends.kubernetes.api import follow_pod_addresses

    api, emu = cluster
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": api.configuration.host}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}], "users": [{"name": "u", "user": {}}]}))
    for name, labels, ip in [("proxy-7d9", {"app": "jupyterhub", "component": "proxy"}, "10.1.0.4"),
                             ("jupyter-bob", {"app": "jupyterhub", "component": "singleuser-server"}, "10.1.0.9")]:
        await emu.add_object("v1/pods", {"apiVersion": "v1", "kind": "Pod",
                                         "metadata": {"name": name, "namespace": NS, "labels": labels},
                                         "spec": {"containers": [{"name": "c", "image": "x"}]},
                                         "status": {"phase": "Running", "podIP": ip}})
    proxies = TrustedProxies.parse("")
    task = asyncio.create_task(follow_pod_addresses("app=jupyterhub,component=proxy", NS, proxies.found,
                                                    interval=0.05, kubeconfig=str(kubeconfig)))
    try:
        await until(lambda: proxies.trusts("10.1.0.4"))
        assert not proxies.trusts("10.1.0.9")
        # A new proxy pod (a rollout): its address, and the old one's no more.
        await emu.delete_object("v1/pods", NS, "proxy-7d9")
        await emu.add_object("v1/pods", {"apiVersion": "v1", "kind": "Pod",
                                         "metadata": {"name": "proxy-8e1", "namespace": NS,
                                                      "labels": {"app": "jupyterhub", "component": "proxy"}},
                                         "spec": {"containers": [{"name": "c", "image": "x"}]},
                                         "status": {"phase": "Running", "podIP": "10.1.0.5"}})
        await until(lambda: proxies.trusts("10.1.0.5") and not proxies.trusts("10.1.0.4"))
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_homes_bind_and_attach_as_a_cloud_cluster_does(kubernetes_installed, tmp_path):
    """The stand-in's storage as a cloud cluster's: no class asks for the default one, "" for
    none, a class cannot offer what its provisioner cannot; a ReadWriteOnce home is attached to
    one node at a time. podbay's pods that mount such a home follow it to its node, so a job
    waits for the person's workspace (and says so) instead of hanging in ContainerCreating,
    and a job across nodes is refused at submit."""
    from kubernetes_asyncio import client

    from podbay.hub.backends.kubernetes.jobs import KubernetesJobs
    from podbay.hub.backends.kubernetes.objects import (
        RESTRICTED_CONTAINER, RESTRICTED_POD, home_claim_name, home_follows, home_pvc, labels, training_job)
    from podbay.hub.config import load_config
    from tests.harness import ROOT, require
    from tests.standins.k8s_cluster import CLUSTER_RESOURCES, PLURALS, Cluster

    require(__import__("os").geteuid() == 0, "the stand-in kubelet mounts volumes (needs root)")
    data = yaml.safe_load((ROOT / "tests" / "data" / "podbay-contract.yaml").read_text())
    data["kubernetes"].update(home={"size": "1Gi"}, kueue=False)  # today's default: RWO, the default class
    for pool in data["pools"].values():
        pool.pop("queue", None)
    (tmp_path / "podbay.yaml").write_text(yaml.safe_dump(data))
    cfg = load_config(tmp_path / "podbay.yaml", "kubernetes")
    settings, ns = cfg.kubernetes, cfg.kubernetes.namespace
    async with emulated_cluster(CLUSTER_RESOURCES) as (url, emu):
        for obj in yaml.safe_load_all((ROOT / "tests" / "data" / "k8s-contract-nodes.yaml").read_text()):
            await emu.add_object(PLURALS[obj["kind"]], obj)
        cluster = Cluster(emu, tmp_path)

        async def settle(rounds: int = 6):
            for _ in range(rounds):
                await cluster.job_controller()
                await cluster.volume_binder()
                await cluster.scheduler()
                await cluster.kubelet()

        def pod_of(prefix: str) -> dict:
            (pod,) = [p for p in cluster.objects("v1/pods") if p["metadata"]["name"].startswith(prefix)]
            return pod

        try:
            async with client.ApiClient(client.Configuration(host=url)) as api:
                core, batch = client.CoreV1Api(api), client.BatchV1Api(api)
                jobs = KubernetesJobs(cfg, api)
                # No class: the default one (block storage, WaitForFirstConsumer).
                home = home_pvc(settings, "alice", "vision")
                await core.create_namespaced_persistent_volume_claim(ns, home)
                claim = home["metadata"]["name"]
                assert emu.get_object("v1/persistentvolumeclaims", ns, claim)["spec"]["storageClassName"] == "standard"
                # "" is no class: nothing provisions it. A class that cannot offer ReadWriteMany fails.
                await core.create_namespaced_persistent_volume_claim(ns, {
                    "metadata": {"name": "no-class"}, "spec": {"storageClassName": "", "accessModes": ["ReadWriteOnce"],
                                                               "resources": {"requests": {"storage": "1Gi"}}}})
                await core.create_namespaced_persistent_volume_claim(ns, {
                    "metadata": {"name": "shared-on-block"}, "spec": {"accessModes": ["ReadWriteMany"],
                                                                      "resources": {"requests": {"storage": "1Gi"}}}})
                await settle(2)
                said = {e["metadata"]["name"]: e["message"] for e in cluster.objects("v1/events")}
                assert said["no-class.failedbinding"].startswith("no persistent volumes available for this claim")
                assert "access mode ReadWriteMany is not supported" in said["shared-on-block.provisioningfailed"]
                assert said[f"{claim}.waitforfirstconsumer"].startswith("waiting for first consumer")

                # Alice's workspace on a dev node, as the spawner makes it: her home's label and
                # the affinity to it.
                home_label, home_terms = home_follows(settings, home_claim_name(settings, "alice"))
                assert home_terms, "a ReadWriteOnce home is followed"
                await core.create_namespaced_pod(ns, {
                    "metadata": {"name": "jupyter-alice", "labels": {
                        **labels(user="alice", team="vision", profile="cpu", component="workspace"), **home_label}},
                    "spec": {"nodeSelector": {"podbay.io/pool": "dev"}, "securityContext": dict(RESTRICTED_POD),
                             "affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": home_terms}},
                             "containers": [{"name": "notebook", "image": "podbay/base:2026.11", "command": ["sleep", "600"],
                                             "securityContext": dict(RESTRICTED_CONTAINER),
                                             "volumeMounts": [{"name": "home", "mountPath": "/home/jovyan"}]}],
                             "volumes": [{"name": "home", "persistentVolumeClaim": {"claimName": claim}}]}})
                await settle()
                workspace = emu.get_object("v1/pods", ns, "jupyter-alice")
                assert workspace["status"]["phase"] == "Running", workspace["status"]
                assert emu.get_object("v1/persistentvolumeclaims", ns, claim)["status"]["phase"] == "Bound"

                def job(job_id: int) -> dict:
                    made, = training_job(cfg, settings, job_id=job_id, name="train", user="alice", team="vision",
                                         image="podbay/base:2026.11", command=["sleep", "600"], workdir="/home/jovyan",
                                         env={}, volumes=[], gpus_per_node=1, nodes=1, pool="training", queue=None)
                    return made

                # Today's job pod (no affinity) lands on the training node and hangs in
                # ContainerCreating, as on a real cluster: the stand-in catches it.
                blind = job(1)
                del blind["spec"]["template"]["spec"]["affinity"]
                await batch.create_namespaced_job(ns, blind)
                await settle()
                hung = pod_of("podbay-job-1")
                assert hung["spec"]["nodeName"] == "train-01"
                assert hung["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] == "ContainerCreating"
                status = await jobs.status({"job_id": 1})
                assert status.message.startswith("waiting for a volume that is attached to one node at a time"), status
                assert "Multi-Attach error" in status.message and "jupyter-alice" in status.message
                await batch.delete_namespaced_job("podbay-job-1", ns, propagation_policy="Background")

                # podbay's job follows the home: it waits for the workspace, and says so.
                await batch.create_namespaced_job(ns, job(2))
                await settle()
                status = await jobs.status({"job_id": 2})
                assert status.state == "pending"
                assert status.message.startswith("waiting for your home: it is attached to one node at a time"), status
                with pytest.raises(ValueError, match="homes are ReadWriteOnce"):
                    jobs.check_submit(team="vision", pool="training", gpus_per_node=1, nodes=2)
                # The workspace stops: the job runs on the training node, with the home.
                await core.delete_namespaced_pod("jupyter-alice", ns)
                await settle(10)
                running = pod_of("podbay-job-2")
                assert running["spec"]["nodeName"] == "train-01" and running["status"]["phase"] == "Running", running
        finally:
            await cluster.shutdown()


async def test_a_finished_job_and_what_it_owns_are_cleaned_up_after_its_ttl(kubernetes_installed, tmp_path):
    """A job across nodes: its Service and NetworkPolicy first, then its Job, which then owns
    them; once finished for kubernetes.job_ttl, the TTL controller deletes the Job and the
    garbage collector what it owned (nothing of it is left on the cluster)."""
    from kubernetes_asyncio import client

    from podbay.hub.backends.kubernetes.jobs import KubernetesJobs
    from podbay.hub.config import load_config
    from podbay.hub.training import JobSpec
    from tests.standins.k8s_cluster import CLUSTER_RESOURCES, Cluster, condition

    cfg = load_config(config(tmp_path, kueue=False, job_ttl="1h",
                             home={"storage_class": "nfs-homes", "size": "20Gi", "access_mode": "ReadWriteMany"}),
                      "kubernetes")
    async with emulated_cluster(CLUSTER_RESOURCES) as (url, emu):
        cluster = Cluster(emu, tmp_path)
        async with client.ApiClient(client.Configuration(host=url)) as api:
            jobs = KubernetesJobs(cfg, api)
            spec = JobSpec(id=7, name="llm", user="alice", image="pytorch", command=["torchrun", "train.py"],
                           workdir="/home/jovyan", env={}, gpus_per_node=8, nodes=2, pool="training", team="vision")
            await jobs.submit(spec)
            job = emu.get_object("batch/v1/jobs", NS, "podbay-job-7")
            assert not job["spec"].get("suspend") and job["spec"]["ttlSecondsAfterFinished"] == 3600
            for res in ("v1/services", "networking.k8s.io/v1/networkpolicies"):
                owned = emu.get_object(res, NS, "podbay-job-7")
                assert owned["metadata"]["ownerReferences"] == [
                    {"apiVersion": "batch/v1", "kind": "Job", "name": "podbay-job-7", "uid": job["metadata"]["uid"]}]
            # Handed over again after a restart: found, not made twice.
            await jobs.submit(spec)
            assert emu.get_object("batch/v1/jobs", NS, "podbay-job-7")["metadata"]["uid"] == job["metadata"]["uid"]
            ended = condition("Complete", "True")
            await cluster.ttl_controller()
            assert emu.get_object("batch/v1/jobs", NS, "podbay-job-7") is not None, "still running: kept"
            await emu.patch_object("batch/v1/jobs", NS, "podbay-job-7", {"status": {"conditions": [ended]}})
            await cluster.ttl_controller()
            assert emu.get_object("batch/v1/jobs", NS, "podbay-job-7") is not None, "finished just now: kept"
            ended["lastTransitionTime"] = "2026-01-01T00:00:00Z"
            await emu.patch_object("batch/v1/jobs", NS, "podbay-job-7", {"status": {"conditions": [ended]}})
            await cluster.ttl_controller()
            await cluster.garbage_collector()
            for res in ("batch/v1/jobs", "v1/services", "networking.k8s.io/v1/networkpolicies"):
                assert emu.get_object(res, NS, "podbay-job-7") is None, res
            status = await jobs.status({"job_id": 7})
            assert status.state == "lost" and "kubernetes.job_ttl" in status.message


async def test_watches_replay_what_changed_since_their_version_or_are_told_410(cluster, kubernetes_installed, tmp_path):
    """The emulated API server as a real one serves watches: from a resourceVersion, every
    change since, a deletion between the list and the watch included (the watch cache); from a
    compacted one, 410 Gone. podbay's cluster watch lists again and its view stays right."""
    from kubernetes_asyncio import client, watch
    from kubernetes_asyncio.client.exceptions import ApiException

    from podbay.hub.backends.kubernetes.api import read_json
    from podbay.hub.backends.kubernetes.watch import ClusterView, ClusterWatch

    api, emu = cluster
    core = client.CoreV1Api(api)
    for name in ("a", "b"):
        await emu.add_object("v1/pods", gpu_pod(name, "dgx-1", {"nvidia.com/gpu": "1"}))
    listed = await read_json(core.list_pod_for_all_namespaces)
    rv = listed["metadata"]["resourceVersion"]
    await emu.delete_object("v1/pods", "other-team", "a")  # between the list and the watch
    async with watch.Watch() as w:
        seen = []
        async for event in w.stream(core.list_pod_for_all_namespaces, resource_version=rv, timeout_seconds=1):
            seen.append((event["type"], event["raw_object"]["metadata"]["name"]))
    assert seen == [("DELETED", "a")], "the deletion is not lost, and nothing listed is sent again"
    emu.compact()
    with pytest.raises(ApiException) as gone:
        async with watch.Watch() as w:
            async for _ in w.stream(core.list_pod_for_all_namespaces, resource_version=rv, timeout_seconds=1):
                pass
    assert gone.value.status == 410 and "too old resource version" in gone.value.reason
    # podbay's watch: a compaction under it changes nothing it shows.
    view = ClusterView()
    watcher = asyncio.create_task(ClusterWatch(view, core, watch_timeout=1).run())
    try:
        await until(view.ready.is_set)
        await until(lambda: {p["metadata"]["name"] for p in view()[1]} == {"b"})
        emu.compact()
        await emu.delete_object("v1/pods", "other-team", "b")
        await emu.add_object("v1/pods", gpu_pod("c", "dgx-1", {"nvidia.com/gpu": "1"}))
        await until(lambda: {p["metadata"]["name"] for p in view()[1]} == {"c"})
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)


async def test_advise_apply_labels_an_idle_node_for_mig_manager_as_rbac_allows(kubernetes_installed, tmp_path):
    """`podbay advise --apply`: the real client patches the node's nvidia.com/mig.config through
    the API server's RBAC, only with the permission rbac() grants when apply_mig_layouts is on."""
    from podbay.hub.advice.advise import LayoutNotApplied
    from podbay.hub.backends.kubernetes.layouts import apply
    from podbay.hub.backends.kubernetes.manifests import rbac
    from podbay.hub.config import load_config

    from tests.standins.k8s_emulator import ADMIN, Rbac

    async with emulated_cluster() as (url, emu):
        emu.rbac = Rbac({"hub-token": f"system:serviceaccount:{NS}:hub", "admin": ADMIN})
        await emu.add_object("v1/nodes", gpu_node("h100-a", "dev", MIXED_H100, mixed_allocatable(MIXED_H100)))
        await emu.add_object("v1/nodes", gpu_node("h100-b", "dev", MIXED_H100, mixed_allocatable(MIXED_H100)))
        await emu.add_object("v1/pods", gpu_pod("w-alice", "h100-b", {"nvidia.com/mig-1g.10gb": "1"}))
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "hub",
            "clusters": [{"name": "c", "cluster": {"server": url}}],
            "contexts": [{"name": "hub", "context": {"cluster": "c", "user": "hub"}}],
            "users": [{"name": "hub", "user": {"token": "hub-token"}}]}))
        settings = load_config(config(tmp_path, kubeconfig=str(kubeconfig), apply_mig_layouts=True)).kubernetes

        class View:
            """podbay's view as the watch keeps it; `stale` pods are ones it has not seen yet."""
            ready = threading.Event()
            hidden: set[str] = set()

            def __call__(self):
                return emu.stored("v1/nodes"), [p for p in emu.stored("v1/pods")
                                                if p["metadata"]["name"] not in self.hidden]

        view = View()
        # The watches have not listed everything yet: nothing is applied from half a view.
        with pytest.raises(LayoutNotApplied, match="not complete yet"):
            await apply(settings, view, "h100-a", "all-1g.10gb")
        view.ready.set()

        def label(node):
            return emu.get_object("v1/nodes", None, node)["metadata"]["labels"].get("nvidia.com/mig.config")

        # The hub's roles as they were before the option: the API server refuses the patch.
        for obj in rbac(settings.model_copy(update={"apply_mig_layouts": False}), hub_namespace=NS):
            await emu.add_object(PLURAL[obj["kind"]], obj)
        with pytest.raises(LayoutNotApplied, match="podbay may not patch Nodes"):
            await apply(settings, view, "h100-a", "all-1g.10gb")
        assert label("h100-a") == "all-balanced"
        # With the roles apply_mig_layouts grants: labelled; the busy node is not.
        for obj in rbac(settings, hub_namespace=NS):
            if obj["kind"] == "ClusterRole":
                await emu.patch_object(PLURAL["ClusterRole"], None, obj["metadata"]["name"], {"rules": obj["rules"]})
        said = await apply(settings, view, "h100-a", "all-1g.10gb")
        assert label("h100-a") == "all-1g.10gb" and "nvidia.com/mig.config.state" in said
        assert "already has" in await apply(settings, view, "h100-a", "all-1g.10gb")
        with pytest.raises(LayoutNotApplied, match="h100-b runs pod other-team/w-alice"):
            await apply(settings, view, "h100-b", "all-1g.10gb")
        assert label("h100-b") == "all-balanced"
        # A pod bound to the node that the watch has not brought yet: the API server's own
        # list, asked just before the label, has it.
        view.hidden.add("w-alice")
        with pytest.raises(LayoutNotApplied, match="h100-b runs pod other-team/w-alice"):
            await apply(settings, view, "h100-b", "all-1g.10gb")
        assert label("h100-b") == "all-balanced"


PLURAL = {"ClusterRole": "rbac.authorization.k8s.io/v1/clusterroles",
          "ClusterRoleBinding": "rbac.authorization.k8s.io/v1/clusterrolebindings",
          "Role": "rbac.authorization.k8s.io/v1/roles", "RoleBinding": "rbac.authorization.k8s.io/v1/rolebindings"}
