"""The house rules of the code's layout: the TUI and the client stay free of jupyterhub (they
run on laptops and in workspaces), podbay's modules import one another without cycles and
never back up the layering (tests/tools/imports.py says which layer is which), and no engine
is named outside its own package."""

import importlib
import re
import subprocess
import sys
from pathlib import Path

from tests.tools import imports

HUB = Path(__file__).resolve().parents[2] / "hub"


def test_tui_never_imports_jupyterhub():
    # Every module of the client, those its commands and dialogs import when first used too.
    code = ("import sys, importlib, pkgutil, podbay.tui; "
            "[importlib.import_module(m.name) for m in pkgutil.walk_packages(podbay.tui.__path__, 'podbay.tui.')]; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('jupyterhub', 'sqlalchemy') or m.startswith('podbay.hub')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_client_command_names_a_function_that_exists():
    """The client's commands are imported when they run (tui/cli.py's _command): each one's
    module and function are there, so a misspelt name fails here, not in a user's terminal."""
    import argparse

    from podbay.tui.cli import build_parser

    def functions(parser):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    yield from functions(sub)
        if parser._defaults.get("func") is not None:
            yield parser._defaults["func"]

    targets = [f.target for f in functions(build_parser(portal=False))]
    assert len(targets) >= 25 and ("workspaces", "cmd_tui") in targets
    for module, name in targets:
        assert callable(getattr(importlib.import_module(f"podbay.tui.commands.{module}"), name)), (module, name)


def test_no_import_cycles():
    assert imports.cycles(imports.imports()) == []


def test_every_module_has_a_layer_and_none_imports_upwards():
    graph = imports.imports()
    unplaced = [m for m in imports.modules() if m.startswith("podbay.hub") and imports.layer(m) is None]
    assert unplaced == [], "give these a layer in tests/tools/imports.py"
    assert imports.upward(graph) == []


def test_the_import_graph_is_read_as_python_reads_it(tmp_path, monkeypatch):
    """The checks above see cycles and upward imports where there are some (relative imports
    of every depth, function-level ones), and not in TYPE_CHECKING blocks."""
    pkg = tmp_path / "hub"
    (pkg / "backends" / "docker").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "config.py").write_text("def f():\n    from .backends.docker import plugin\n")
    (pkg / "backends" / "__init__.py").write_text("")
    (pkg / "backends" / "docker" / "__init__.py").write_text("")
    (pkg / "backends" / "docker" / "plugin.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ...service import app\nfrom ...config import f\n")
    (pkg / "service.py").write_text("")
    monkeypatch.setattr(imports, "PACKAGES", {"podbay.hub": pkg})
    graph = imports.imports()
    assert "podbay.hub.service" not in graph["podbay.hub.backends.docker.plugin"]
    assert imports.cycles(graph) == [["podbay.hub.backends.docker.plugin", "podbay.hub.config"]]
    assert ("podbay.hub.config", "podbay.hub.backends.docker.plugin", 2) in imports.upward(graph)


ENGINES = ("docker", "kubernetes", "k8s", "slurm")


def test_no_engine_is_imported_outside_its_package():
    """The core reaches an engine only through its plugin (base.Backend): an import of an
    engine's modules anywhere else is one more `if backend == …` waiting to happen."""
    found = []
    for path in HUB.rglob("*.py"):
        rel = path.relative_to(HUB).as_posix()
        if rel.startswith("backends/") or "migrations" in rel:
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"\bfrom \S*backends\.(local|docker|kubernetes|slurm)\b|import \S*backends\.(local|docker|kubernetes|slurm)\b", line):
                found.append(f"{rel}:{n}: {line.strip()}")
    assert found == []


def test_every_import_of_podbays_own_names_resolves():
    """Each module loads, and every `from <podbay module> import name` names something there,
    function-level imports included (they run only when called: a move can break them
    unseen)."""
    import ast
    import importlib
    import importlib.util

    mods = imports.modules()
    broken = []
    for name, (path, is_pkg) in sorted(mods.items()):
        if name.endswith("__main__"):
            continue
        importlib.import_module(name)
        base = name if is_pkg else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom) or not (node.level or (node.module or "").startswith("podbay.")):
                continue
            parts = base.split(".")[: len(base.split(".")) - node.level + 1] if node.level else []
            module = ".".join(parts + ([node.module] if node.module else [])) if node.level else node.module
            if module not in mods:
                broken.append(f"{path.name}:{node.lineno}: no module {module}")
                continue
            loaded = importlib.import_module(module)
            for alias in node.names:
                if alias.name != "*" and not hasattr(loaded, alias.name) and f"{module}.{alias.name}" not in mods:
                    broken.append(f"{path.name}:{node.lineno}: {module} has no {alias.name}")
    assert broken == []


def test_a_long_module_says_why_at_its_top():
    """A module over 400 lines has a reason written in its docstring ("Long because: …"), or
    is split: a newcomer finds one behaviour in a file they can read."""
    import ast

    long = []
    for name, (path, _) in imports.modules().items():
        text = path.read_text()
        if text.count("\n") > 400 and "Long because:" not in (ast.get_docstring(ast.parse(text)) or ""):
            long.append(f"{path} ({text.count(chr(10))} lines)")
    assert long == []


def test_the_tests_and_benchmarks_import_what_exists():
    """`from tests… import` in the tests and the benchmarks names modules and names that exist
    (a stand-in moved once, and only the tests that used its fixture found out)."""
    import ast
    import importlib
    import importlib.util

    root = HUB.parent
    broken = []
    for path in [*(root / "tests").rglob("*.py"), *(root / "benchmarks").glob("*.py")]:
        if {"node_modules", "data"} & set(path.parts):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "tests":
                try:
                    module = importlib.import_module(node.module)
                except ImportError as e:
                    broken.append(f"{path.name}:{node.lineno}: {e}")
                    continue
                broken += [f"{path.name}:{node.lineno}: {node.module} has no {a.name}" for a in node.names
                           if not hasattr(module, a.name) and importlib.util.find_spec(f"{node.module}.{a.name}") is None]
    assert broken == []


def test_every_package_is_in_the_wheel():
    """pyproject.toml lists podbay's packages by hand (the two source folders map onto one
    namespace): a package missing there works in the editable checkout and is absent from
    an installed podbay."""
    import tomllib

    root = HUB.parent
    tool = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = set()
    for name, folder in tool["package-dir"].items():
        for init in (root / folder).rglob("__init__.py"):
            parts = init.parent.relative_to(root / folder).parts
            found.add(".".join((name, *parts)))
    assert sorted(found - set(tool["packages"])) == [], "add these to [tool.setuptools] packages"
