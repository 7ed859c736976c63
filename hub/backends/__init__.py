"""Where workspaces and jobs run: one package per engine (local, docker, kubernetes, slurm),
each found through the `podbay.backends` entry points, so a new engine is one package and one
entry point, never another `if backend == …` in the hub configuration, the service or the
command line. What a plugin is (every member the core calls) is `base.Backend`.

This module is only the registry: it imports nothing of podbay's, so the config schema (which
asks each plugin for its settings model and rules) may use it without a cycle.
"""

from __future__ import annotations

from functools import lru_cache
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config import PodbayConfig
    from .base import Backend

GROUP = "podbay.backends"


class BackendError(RuntimeError):
    """A backend that cannot be used (unknown, or its engine is not there); the message
    says what to do."""


@lru_cache(maxsize=1)
def available() -> dict[str, object]:
    """Installed backends by name (their entry points, not loaded yet)."""
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def load(name: str) -> "Backend":
    found = available().get(name)
    if found is None:
        raise BackendError(f"unknown backend {name!r}: the installed ones are {', '.join(sorted(available()))}")
    plugin = found.load()
    return plugin() if isinstance(plugin, type) else plugin


def chosen(cfg: "PodbayConfig", override: str | None = None) -> str:
    """The backend of this run: the override (PODBAY_BACKEND, --backend), else podbay.yaml's."""
    return override or cfg.backend


def runs_as_people(cfg: "PodbayConfig", backend: str) -> bool:
    """Whether an engine of this deployment (the backend, or one running a pool's jobs) runs
    people's jobs as their own cluster accounts: the workspaces beside it are theirs too."""
    return any(load(engine).runs_as_person(cfg) for engine in {backend, *cfg.pool_engines(backend).values()})
