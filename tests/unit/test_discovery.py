"""Discovery on every saved nvidia-smi output in shared/fixtures/gpu/ that podbay reads:
`-L` listings, `-q -x` XML, and whole captured sessions (which contain `-L`)."""

from __future__ import annotations

import json
import sys

import pytest

from podbay.hub.cli import main
from podbay.hub.discovery import DiscoveryError, parse_smi_output

from tests.harness import FIXTURES

H100 = "NVIDIA H100 80GB HBM3"
A100_40 = "A100-SXM4-40GB"

# file → [(index, model, memory MiB or None, GPU UUID, [MIG profiles], first MIG UUID or None)]
EXPECTED = {
    "nvidia-smi-L/cloud-native-docs_h100_7x1g.10gb_nvidia-smi-L.txt": [
        (0, H100, None, "GPU-b4895dbf-9350-2524-a89b-98161ddd9fe4", ["1g.10gb"] * 7,
         "MIG-3f6f389f-b0cc-5e5c-8e32-eaa8fd067902")],
    "nvidia-smi-L/cloud-native-docs_h100_all-balanced_nvidia-smi-L.txt": [
        (0, H100, None, "GPU-b4895dbf-9350-2524-a89b-98161ddd9fe4",
         ["3g.40gb", "2g.20gb", "1g.10gb", "1g.10gb"], "MIG-7089d0f3-293f-58c9-8f8c-5ea666eedbde")],
    "nvidia-smi-L/cloud-native-docs_kubernetes-index_a100-40gb_7x1g.5gb_legacy-R450-uuid-format.txt": [
        (0, A100_40, None, "GPU-4200ccc0-2667-d4cb-9137-f932c716232a", ["1g.5gb"] * 7,
         "MIG-GPU-4200ccc0-2667-d4cb-9137-f932c716232a/7/0")],
    "nvidia-smi-L/mig-user-guide-v580_8xA100-40GB_R470.txt": [
        (0, A100_40, None, "GPU-5d5ba0d6-d33d-2b2c-524d-9e3d8d2b8a77", ["1g.5gb"] * 7,
         "MIG-c6d4f1ef-42e4-5de3-91c7-45d71c87eb3f"),
        (1, A100_40, None, "GPU-0aa11ebd-627f-af3f-1a0d-4e1fd92fd7b0", ["2g.10gb"] * 3,
         "MIG-0c757cd7-e942-5726-a0b8-0e8fb7067135"),
        (2, A100_40, None, "GPU-08279800-1cbe-a71d-f3e6-8f67e15ae54a", ["3g.20gb"] * 2,
         "MIG-aa232436-d5a6-5e39-b527-16f9b223cc46"),
        (3, A100_40, None, "GPU-71086aca-c858-d1e0-aae1-275bed1008b9", ["7g.40gb"],
         "MIG-3e209540-03e2-5edb-8798-51d4967218c9"),
        (4, A100_40, None, "GPU-74fa9fb7-ccf6-8234-e597-7af8ace9a8f5", ["1c.3g.20gb"] * 6,
         "MIG-79c62632-04cc-574b-af7b-cb2e307120d8"),
        (5, A100_40, None, "GPU-3301e6dd-d38f-0eb5-4665-6c9659f320ff", ["4g.20gb"],
         "MIG-6d96b9f9-960e-5057-b5da-b8a35dc63aa8"),
        (6, A100_40, None, "GPU-bb40ed7d-cbbb-d92c-50ac-24803cda52c5", ["1c.7g.40gb", "2c.7g.40gb", "3c.7g.40gb"],
         "MIG-66dd01d7-8cdb-5a13-a45d-c6eb0ee11810"),
        (7, A100_40, None, "GPU-95fac899-e21a-0e44-b0fc-e4e3bf106feb", ["4g.20gb", "2g.10gb", "1g.5gb"],
         "MIG-219c765c-e07f-5b85-9c04-4afe174d83dd"),
    ],
    "nvidia-smi-L/mig-user-guide-v580_A100-40GB_2x3g.20gb.txt": [
        (0, A100_40, None, "GPU-e86cb44c-6756-fd30-cd4a-1e6da3caf9b0", ["3g.20gb"] * 2,
         "MIG-c7384736-a75d-5afc-978f-d2f1294409fd")],
    "nvidia-smi-L/mig-user-guide-v580_H100-80GB_R570_compute-instances.txt": [
        (0, H100, None, "GPU-c08d91cb-e324-655c-71ba-7570956445bc",
         ["1c.3g.40gb"] * 3 + ["1g.10gb"] * 2, "MIG-c788539f-c1ea-5a36-8b4d-9b07d024b1bb")],
    "nvidia-smi-captures/linux-x86_64__nvidia-h100-80gb-hbm3__590.48.01.txt": [
        (0, H100, None, "GPU-00000000-0000-0000-0000-000000000000", [], None)],
    "nvidia-smi-captures/linux-x86_64__nvidia-h100-mig__590.48.01.txt": [
        (0, H100, None, "GPU-00000000-0000-0000-0000-000000000000",
         ["3g.40gb", "2g.20gb", "1g.10gb", "1g.10gb"], "MIG-00000000-0000-0000-0000-000000000000")],
    "nvidia-smi-captures/linux-x86_64__nvidia-h200__590.48.01.txt": [
        (0, "NVIDIA H200", None, "GPU-00000000-0000-0000-0000-000000000000", [], None)],
    "nvidia-smi-captures/linux-x86_64__nvidia-l40s__595.80.txt": [
        (0, "NVIDIA L40S", None, "GPU-00000000-0000-0000-0000-000000000000", [], None)],
    # -q -x has no MIG UUIDs; profiles are inferred from SMs and memory.
    "nvidia-smi-xml/telegraf-a100-sxm4-v12.xml": [
        (1, "NVIDIA A100-SXM4-80GB", 81920, "GPU-513536b6-7d19-9063-b049-1e69664bb298", ["1g.20gb"] * 4, None)],
    "nvidia-smi-xml/netdata-rtx-pro-6000-driver-580.xml": [
        (0, "NVIDIA RTX PRO 6000 Blackwell", None, "GPU-11111111-2222-3333-4444-555555555555", [], None)],
    "nvidia-smi-xml/telegraf-a10g.xml": [
        (0, "NVIDIA A10G", 23028, "GPU-9a9a6c50-2a47-2f51-a902-b82c3b127e94", [], None)],
    "nvidia-smi-xml/telegraf-rtx-3080-v13.xml": [
        (0, "NVIDIA GeForce RTX 3080", 10240, "GPU-19d6d965-2acc-f646-00f8-4c76979aabb4", [], None)],
    "nvidia-smi-xml/telegraf-tesla-t4.xml": [
        (0, "Tesla T4", 15360, "GPU-d37e67a5-91dd-3774-a5cb-99096249601a", [], None)],
}


def fixture_files() -> list[str]:
    files = []
    for kind in ("nvidia-smi-L", "nvidia-smi-xml", "nvidia-smi-captures"):
        files += [str(p.relative_to(FIXTURES)) for p in sorted((FIXTURES / kind).glob("*"))
                  if p.suffix != ".md"]
    return files


def test_every_fixture_of_a_readable_kind_is_covered():
    assert sorted(fixture_files()) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_parse(name):
    path = FIXTURES / name
    gpus = parse_smi_output(path.read_text())
    got = [(g.index, g.model, g.memory_mib, g.uuid, [m.profile for m in g.mig_devices],
            g.mig_devices[0].uuid if g.mig_devices else None) for g in gpus]
    assert got == EXPECTED[name]
    assert [g.mig_enabled for g in gpus] == [bool(e[4]) for e in EXPECTED[name]]


def test_mig_mode_from_xml_even_with_devices_listed():
    gpu = parse_smi_output((FIXTURES / "nvidia-smi-xml/telegraf-a100-sxm4-v12.xml").read_text())[0]
    assert gpu.mig_enabled
    assert [(m.gpu_instance_id, m.multiprocessors, m.memory_mib) for m in gpu.mig_devices][0] == (3, 14, 19968)


def test_legacy_mig_uuid_carries_instance_ids():
    gpu = parse_smi_output((FIXTURES / "nvidia-smi-L/cloud-native-docs_kubernetes-index_a100-40gb_7x1g.5gb_legacy-R450-uuid-format.txt").read_text())[0]
    assert [(m.gpu_instance_id, m.compute_instance_id) for m in gpu.mig_devices][:2] == [(7, 0), (8, 0)]


@pytest.mark.parametrize("text", ["", "hello\n", "<notxml", "<?xml version='1.0'?><other/>"])
def test_unreadable_input_is_a_clear_error(text):
    with pytest.raises(DiscoveryError):
        parse_smi_output(text)


def test_cli_json_and_inventory(capsys):
    path = FIXTURES / "nvidia-smi-L/cloud-native-docs_h100_all-balanced_nvidia-smi-L.txt"
    assert main(["gpus", "--from-file", str(path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data[0]["mig_devices"][0]["profile"] == "3g.40gb"

    assert main(["gpus", "--from-file", str(path), "--as-inventory", "--node", "h100-01"]) == 0
    out = capsys.readouterr().out
    import yaml
    from podbay.hub.config import parse_config
    node = yaml.safe_load(out)["nodes"][0]
    assert node["name"] == "h100-01" and node["gpus"][0]["mig"][1] == {
        "profile": "2g.20gb", "uuid": "MIG-56c30729-347f-5dd6-8da0-c3cc59e969e0"}
    # What it prints is a valid inventory for podbay.yaml.
    parse_config({"images": [{"name": "x", "display_name": "x", "image": "x"}],
                  "profiles": [{"id": "mig-3g.40gb"}], "nodes": [node]})


def test_cli_without_driver_says_what_to_do(capsys, monkeypatch):
    import podbay.hub.discovery as discovery

    def no_driver():
        raise DiscoveryError("NVML is not available on this machine (Driver Not Loaded)")
    monkeypatch.setattr(discovery, "discover_nvml", no_driver)
    assert main(["gpus"]) == 1
    err = capsys.readouterr().err
    assert "NVML is not available" in err and "--from-file" in err


class FakeNvml:
    """NVML's Python API, answering from the all-balanced H100 of the fixtures and the GFD
    labels of the same node (memory per MIG profile). No GPU can be had here."""

    NVML_DEVICE_MIG_ENABLE = 1

    class NVMLError(Exception):
        pass

    class Attrs:
        def __init__(self, g, c, mem, sms):
            self.gpuInstanceSliceCount, self.computeInstanceSliceCount = g, c
            self.memorySizeMB, self.multiprocessorCount = mem, sms

    MIGS = [("MIG-7089d0f3-293f-58c9-8f8c-5ea666eedbde", 3, 40320, 60),
            ("MIG-56c30729-347f-5dd6-8da0-c3cc59e969e0", 2, 20096, 32),
            ("MIG-9d14fb21-4ae1-546f-a636-011582899c39", 1, 9984, 16),
            ("MIG-0f709664-740c-52b0-ae79-3e4c9ede6d3b", 1, 9984, 16)]

    def nvmlInit(self): pass
    def nvmlShutdown(self): pass
    def nvmlDeviceGetCount(self): return 1
    def nvmlDeviceGetHandleByIndex(self, i): return ("gpu", i)
    def nvmlDeviceGetUUID(self, h):
        return "GPU-b4895dbf-9350-2524-a89b-98161ddd9fe4" if h[0] == "gpu" else self.MIGS[h[1]][0]
    def nvmlDeviceGetName(self, h): return b"NVIDIA H100 80GB HBM3"
    def nvmlDeviceGetMemoryInfo(self, h):
        return type("M", (), {"total": 81559 * 1024 * 1024})()
    def nvmlDeviceGetMigMode(self, h): return (1, 1)
    def nvmlDeviceGetMaxMigDeviceCount(self, h): return 7
    def nvmlDeviceGetMigDeviceHandleByIndex(self, h, j):
        if j >= len(self.MIGS):
            raise self.NVMLError("Not Found")
        return ("mig", j)
    def nvmlDeviceGetAttributes(self, m):
        _, g, mem, sms = self.MIGS[m[1]]
        return self.Attrs(g, g, mem, sms)
    def nvmlDeviceGetGpuInstanceId(self, m): return m[1] + 1
    def nvmlDeviceGetComputeInstanceId(self, m): return 0


def test_nvml_path(monkeypatch):
    from podbay.hub.discovery import discover_nvml
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml())
    [gpu] = discover_nvml()
    assert gpu.model == H100 and gpu.memory_mib == 81559 and gpu.mig_enabled
    assert [m.profile for m in gpu.mig_devices] == ["3g.40gb", "2g.20gb", "1g.10gb", "1g.10gb"]
    assert gpu.mig_devices[0].uuid == "MIG-7089d0f3-293f-58c9-8f8c-5ea666eedbde"


def test_nvml_without_driver_is_a_discovery_error():
    from podbay.hub.discovery import discover_nvml
    try:
        import pynvml
        pynvml.nvmlInit()
    except Exception:
        with pytest.raises(DiscoveryError, match="NVML is not available"):
            discover_nvml()
    else:  # a real GPU: the real answer must parse
        pynvml.nvmlShutdown()
        assert all(g.uuid and g.uuid.startswith("GPU-") for g in discover_nvml())

