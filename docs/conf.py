"""Sphinx configuration: MyST Markdown, as JupyterHub, KubeSpawner and Zero to JupyterHub
write their documentation. Built with warnings as errors (tests/unit/test_docs.py);
nothing is fetched from the network (no intersphinx, no link checks in CI)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent / "_ext"))

project = "podbay"
author = "the podbay developers"
extensions = ["myst_parser", "podbay_reference"]
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3
source_suffix = {".md": "markdown"}
exclude_patterns = ["_build"]
html_theme = "alabaster"
# podbay's own words in code blocks are not any one language.
highlight_language = "none"
suppress_warnings = []
