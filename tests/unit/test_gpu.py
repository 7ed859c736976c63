from fractions import Fraction

import pytest

from podbay.hub.gpu import FAMILIES, family_for, layout_fits


@pytest.mark.parametrize(
    "model, memory, family",
    [
        ("NVIDIA A100-SXM4-80GB", 81920, "A100-80GB"),
        ("NVIDIA A100 80GB PCIe", None, "A100-80GB"),
        ("A100-SXM4-40GB", None, "A100-40GB"),
        ("NVIDIA A100-PCIE-40GB", 40960, "A100-40GB"),
        ("NVIDIA H100 80GB HBM3", 81559, "H100-80GB"),
        ("NVIDIA H100 NVL", 95830, "H100-94GB"),
        ("NVIDIA GH200 480GB", 97871, "H100-96GB"),
        ("NVIDIA H200", 143771, "H200-141GB"),
        ("NVIDIA A30", 24576, "A30-24GB"),
        ("NVIDIA B200", None, "B200-180GB"),
        ("NVIDIA RTX PRO 6000 Blackwell", None, "RTX-PRO-6000"),
        ("Tesla T4", 15360, None),
        ("NVIDIA L40S", None, None),
    ],
)
def test_family_for(model, memory, family):
    found = family_for(model, memory)
    assert (found.key if found else None) == family


@pytest.mark.parametrize(
    "family, layout, fits",
    [
        ("A100-80GB", ["1g.10gb"] * 7, True),
        ("A100-80GB", ["1g.10gb"] * 8, False),
        ("A100-80GB", ["3g.40gb", "2g.20gb", "1g.10gb", "1g.10gb"], True),
        ("A100-80GB", ["2g.20gb"] * 3 + ["1g.10gb"], True),
        ("A100-80GB", ["2g.20gb"] * 4, False),  # 2g only starts at 0, 2, 4
        ("A100-80GB", ["4g.40gb", "3g.40gb"], True),
        ("A100-80GB", ["4g.40gb", "4g.40gb"], False),
        ("A100-80GB", ["1g.20gb"] * 4, True),
        ("A100-80GB", ["1g.20gb"] * 4 + ["1g.10gb"], False),  # memory slots all used
        ("A100-80GB", ["1g.10gb+me", "1g.10gb+me"], False),
        ("H200-141GB", ["1g.18gb", "1g.18gb", "2g.35gb", "3g.71gb"], True),
        ("A30-24GB", ["2g.12gb", "2g.12gb"], True),
        ("A30-24GB", ["4g.24gb", "1g.6gb"], False),
    ],
)
def test_layout_fits(family, layout, fits):
    assert layout_fits(FAMILIES[family], layout) is fits


def test_weights_are_compute_slices():
    assert FAMILIES["A100-80GB"].weight("1g.10gb") == Fraction(1, 7)
    assert FAMILIES["H100-80GB"].weight("3g.40gb") == Fraction(3, 7)
    assert FAMILIES["A30-24GB"].weight("1g.6gb") == Fraction(1, 4)
    # Seven 1g slices are exactly one GPU: no float drift in quota sums.
    assert sum([FAMILIES["A100-80GB"].weight("1g.10gb")] * 7) == 1
