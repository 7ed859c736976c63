"""GPU utilisation through a real Prometheus (Debian's), scraping a DCGM exporter in
Kubernetes mode as kube-prometheus-stack does: a ServiceMonitor's target labels
(namespace, pod, container, service, endpoint of the exporter's own pod) and honor_labels
false, its default, which renames the exporter's pod labels to exported_*. The same
exporter is scraped a second time with honor_labels true, as some sites configure it:
podbay must attribute the workspace's GPU to the workspace's pod either way."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time

import httpx
import pytest
import yaml

from tests.harness import free_port_block, require
from tests.standins.dcgm_exporter import Exporter

BUSY = "GPU-33333333-0000-4000-8000-000000000002"
FREE = "GPU-33333333-0000-4000-8000-000000000003"
WORKSPACE_POD = ("podbay", "jupyter-alice--train")
# What a ServiceMonitor's relabelling gives every series of the exporter's target.
EXPORTER_TARGET = {"namespace": "gpu-operator", "pod": "nvidia-dcgm-exporter-x7k2p",
                   "container": "nvidia-dcgm-exporter", "service": "nvidia-dcgm-exporter", "endpoint": "gpu-metrics"}


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory):
    require(shutil.which("prometheus") is not None, "prometheus is not installed (scripts/dev.sh installs it)")
    exporter = Exporter([BUSY, FREE], default=0.0, pods={BUSY: WORKSPACE_POD})
    exporter.util[BUSY] = 87.0
    state = tmp_path_factory.mktemp("prometheus")
    target = exporter.url.removeprefix("http://").removesuffix("/metrics")
    jobs = [{"job_name": name, "honor_labels": honor, "scrape_interval": "1s", "scrape_timeout": "1s",
             "static_configs": [{"targets": [target], "labels": EXPORTER_TARGET}]}
            for name, honor in (("servicemonitor", False), ("honored", True))]
    (state / "prometheus.yml").write_text(yaml.safe_dump({"global": {"scrape_interval": "1s"}, "scrape_configs": jobs}))
    port = free_port_block(1)
    log = (state / "prometheus.log").open("wb")
    proc = subprocess.Popen(["prometheus", f"--config.file={state / 'prometheus.yml'}",
                             f"--storage.tsdb.path={state / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        # Until both jobs' series of the busy GPU are in (each scrape is an event we wait for).
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (state / "prometheus.log").read_text()[-2000:]
            try:
                found = httpx.get(f"{url}/api/v1/query", params={"query": f'DCGM_FI_DEV_GPU_UTIL{{UUID="{BUSY}"}}'},
                                  timeout=5).json()["data"]["result"]
            except (httpx.HTTPError, KeyError, ValueError):
                found = []
            if len({s["metric"]["job"] for s in found}) == 2:
                break
            assert time.monotonic() < deadline, f"Prometheus never scraped the exporter: {found}"
            time.sleep(0.2)
        yield url, found
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()
        exporter.close()


def test_a_servicemonitor_renames_the_exporters_pod_labels(prometheus):
    """What kube-prometheus-stack stores: the workspace's pod as exported_pod, and pod naming
    the exporter (the reason to read exported_* first)."""
    _, series = prometheus
    (renamed,) = [s["metric"] for s in series if s["metric"]["job"] == "servicemonitor"]
    assert (renamed["exported_namespace"], renamed["exported_pod"]) == WORKSPACE_POD
    assert (renamed["namespace"], renamed["pod"]) == (EXPORTER_TARGET["namespace"], EXPORTER_TARGET["pod"])
    (honored,) = [s["metric"] for s in series if s["metric"]["job"] == "honored"]
    assert (honored["namespace"], honored["pod"]) == WORKSPACE_POD and "exported_pod" not in honored


@pytest.mark.parametrize("job", ["servicemonitor", "honored"])
def test_the_workspaces_gpu_is_measured_as_its_pods_either_way(prometheus, job):
    from podbay.hub.usage.policy import Matcher
    from podbay.hub.usage.settings import UsageSource
    from podbay.hub.usage.sources import Source
    from podbay.hub.usage.store import Holding

    url, _ = prometheus

    async def read():
        source = Source(UsageSource(type="prometheus", url=url, selector=f'job="{job}"'), window=30)
        try:
            return await source.read()
        finally:
            await source.aclose()

    readings = asyncio.run(read())
    busy = [r for r in readings if r.uuid == BUSY]
    assert [r.pod for r in busy] == ["/".join(WORKSPACE_POD)], readings
    # The idle policy's matcher finds the workspace (the spawner's claim names its pod).
    holding = Holding(id=1, key="workspace:alice/train", kind="workspace", user="alice", team="vision",
                      profile="gpu-1", pool="dev", units=1, gpus=1, devices=[],
                      ref={"pod": "/".join(WORKSPACE_POD)}, started=0.0, ended=None)
    matcher = Matcher(None)
    assert matcher.measure(holding, matcher.index(readings)) == (87.0, 87.0)


def test_podbay_doctor_finds_the_pods_behind_a_servicemonitor(prometheus, tmp_path):
    """`podbay doctor`'s utilisation check through the same Prometheus: the series name the
    workspace's pod (as exported_pod), so nothing is reported to fix."""
    from podbay.hub.config import load_config
    from podbay.hub.doctor import utilisation
    from tests.harness import ROOT

    url, _ = prometheus
    data = yaml.safe_load((ROOT / "tests" / "data" / "podbay-contract.yaml").read_text())
    data["usage"] = {"source": {"type": "prometheus", "url": url, "selector": 'job="servicemonitor"'}}
    (tmp_path / "podbay.yaml").write_text(yaml.safe_dump(data))
    findings = asyncio.run(utilisation(load_config(tmp_path / "podbay.yaml", "kubernetes"), True))
    assert [f.level for f in findings] == ["ok", "ok"], findings
    assert findings[1].what.startswith("utilisation series name their pods")
