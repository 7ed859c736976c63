from fractions import Fraction

import pytest

from podbay.hub.config import parse_config, parse_profile_id
from podbay.hub.discovery import DiscoveryError, parse_smi_output
from podbay.hub.inventory import Inventory, InventoryError
from podbay.hub.quota import Snapshot
from podbay.hub.quota.capacity import InventoryCapacity

from tests.harness import FIXTURES


def discovered_config(**node):
    return parse_config({
        "images": [{"name": "pt", "display_name": "PyTorch", "image": "pt"}],
        "profiles": [{"id": "cpu"}, {"id": "mig-1g.10gb"}, {"id": "shared-1/3"}],
        "nodes": [{"name": "h100-01", "pool": "dev", "discover": True, **node}],
    })


def from_fixture(name):
    path = FIXTURES / name
    return lambda: parse_smi_output(path.read_text())


def test_discovered_mig_node_becomes_claimable_devices():
    inv = Inventory.from_config(discovered_config(),
                                discover=from_fixture("nvidia-smi-L/cloud-native-docs_h100_all-balanced_nvidia-smi-L.txt"))
    assert [(d.kind, d.mig_profile, d.weight) for d in inv.devices] == [
        ("mig", "3g.40gb", Fraction(3, 7)), ("mig", "2g.20gb", Fraction(2, 7)),
        ("mig", "1g.10gb", Fraction(1, 7)), ("mig", "1g.10gb", Fraction(1, 7))]
    nothing_taken = Snapshot(0, frozenset(), {}, {}, {})
    assert InventoryCapacity(inv).counts(parse_profile_id("mig-1g.10gb"), ["dev"], nothing_taken) == (2, 2)


def test_discovered_gpus_can_be_time_sliced():
    inv = Inventory.from_config(discovered_config(time_slicing={"replicas": 3, "gpus": [0]}),
                                discover=from_fixture("nvidia-smi-xml/telegraf-tesla-t4.xml"))
    assert [d.key for d in inv.devices] == [f"GPU-d37e67a5-91dd-3774-a5cb-99096249601a::{n}" for n in range(3)]
    assert {d.visible_id for d in inv.devices} == {"GPU-d37e67a5-91dd-3774-a5cb-99096249601a"}


def test_compute_instances_weigh_their_own_slices():
    inv = Inventory.from_config(discovered_config(),
                                discover=from_fixture("nvidia-smi-L/mig-user-guide-v580_8xA100-40GB_R470.txt"))
    weights = {d.mig_profile: d.weight for d in inv.devices}
    assert weights["1c.3g.20gb"] == Fraction(1, 7) and weights["3c.7g.40gb"] == Fraction(3, 7)


def test_no_driver_is_a_clear_error():
    def no_driver():
        raise DiscoveryError("NVML is not available on this machine (Driver Not Loaded)")
    with pytest.raises(InventoryError, match="node h100-01: discover is set, but NVML is not available"):
        Inventory.from_config(discovered_config(), discover=no_driver)
