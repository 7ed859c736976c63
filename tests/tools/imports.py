"""podbay's own import graph, read from the source (nothing is imported): which modules
import which, cycles among them, and imports that run back up the layering. Used by
tests/unit/test_layout.py; `python tests/tools/imports.py` prints the figures."""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {"podbay.hub": ROOT / "hub", "podbay.tui": ROOT / "tui"}

# Lower layers know nothing of higher ones. A module's layer is that of the longest prefix
# listed; the REST service, the hub's set-up and the command line sit on top.
LAYERS = [
    # 0: facts and helpers with no podbay imports of note
    {"podbay.hub.gpu", "podbay.hub.environment", "podbay.hub.procs", "podbay.hub.launch",
     "podbay.hub.browser", "podbay.hub.backends", "podbay.hub.workspace",
     "podbay.hub.migrations"},
    # 1: podbay.yaml and what a machine has
    {"podbay.hub.config", "podbay.hub.identity", "podbay.hub.usage.settings", "podbay.hub.discovery", "podbay.hub.inventory"},
    # 2: the quota book and the stores beside it, the training engines' base
    {"podbay.hub.quota", "podbay.hub.secrets", "podbay.hub.sshkeys", "podbay.hub.training",
     "podbay.hub.settings", "podbay.hub.mig"},
    # 3: the decisions
    {"podbay.hub.portal"},
    # 4: what the decisions drive: the spawner mixin, jobs, usage, advice
    {"podbay.hub.spawner", "podbay.hub.jobs", "podbay.hub.usage", "podbay.hub.doctor", "podbay.hub.advice"},
    # 5: the engines
    {"podbay.hub.backends.base", "podbay.hub.backends.local", "podbay.hub.backends.docker",
     "podbay.hub.backends.kubernetes", "podbay.hub.backends.slurm"},
    # 6: what people and JupyterHub talk to
    {"podbay.hub.service", "podbay.hub.hubconfig",
     "podbay.hub.cli", "podbay.hub.auth", "podbay.hub.oidc", "podbay.hub"},
]


def modules() -> dict[str, tuple[Path, bool]]:
    found = {}
    for pkg, root in PACKAGES.items():
        for path in root.rglob("*.py"):
            if "migrations" in path.parts:
                continue
            parts = list(path.relative_to(root).with_suffix("").parts)
            is_pkg = parts[-1] == "__init__"
            if is_pkg:
                parts = parts[:-1]
            found[".".join([pkg, *parts])] = (path, is_pkg)
    return found


def imports() -> dict[str, dict[str, int]]:
    """module -> {imported podbay module: line}, at run time (TYPE_CHECKING blocks left out:
    they never run), function-level imports included (they are dependencies all the same)."""
    mods = modules()
    edges: dict[str, dict[str, int]] = defaultdict(dict)
    for name, (path, is_pkg) in mods.items():
        tree = ast.parse(path.read_text(), str(path))
        skip = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                skip.update(id(x) for stmt in node.body for x in ast.walk(stmt))
        base = name if is_pkg else name.rpartition(".")[0]
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    parts = base.split(".")
                    parts = parts[: len(parts) - node.level + 1]
                    module = ".".join(parts + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                targets = [module] + [f"{module}.{a.name}" for a in node.names]
            else:
                continue
            for target in targets:
                while target and target not in mods:
                    target = target.rpartition(".")[0]
                if target and target != name and target.startswith("podbay."):
                    edges[name].setdefault(target, node.lineno)
    return edges


def cycles(edges) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    sys.setrecursionlimit(10000)
    for v in list(edges):
        if v not in index:
            visit(v)
    return out


def layer(module: str) -> int | None:
    best, rank = "", None
    for i, names in enumerate(LAYERS):
        for prefix in names:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > len(best):
                best, rank = prefix, i
    return rank


def upward(edges) -> list[tuple[str, str, int]]:
    """(module, what it imports, line) where the import runs to a higher layer."""
    out = []
    for src, targets in edges.items():
        for dst, line in targets.items():
            a, b = layer(src), layer(dst)
            if a is not None and b is not None and b > a:
                out.append((src, dst, line))
    return sorted(out)


if __name__ == "__main__":
    graph = imports()
    print("cycles:", cycles(graph) or 0)
    for src, dst, line in upward(graph):
        print(f"up: {src}:{line} -> {dst}")
    unplaced = sorted(m for m in modules() if m.startswith("podbay.hub") and layer(m) is None)
    print("unplaced:", unplaced or 0)
