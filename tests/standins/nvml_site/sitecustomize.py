"""Put on a test hub's PYTHONPATH with PODBAY_TEST_NVML_STATE set: that process's pynvml talks
to the stand-in driver (tests/standins/nvml.py) in that state file, as a process on a GPU
machine talks to the real one. Nothing changes in processes without the variable."""

import os
import sys
from pathlib import Path

if os.environ.get("PODBAY_TEST_NVML_STATE"):
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
    from tests.standins.nvml import install

    install(Path(os.environ["PODBAY_TEST_NVML_STATE"]))
