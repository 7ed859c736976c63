"""Reading podbay.yaml: YAML, then the shape (pydantic, with each installed backend's section),
then what refers to what (checks.py); every error with its place and line, all at once."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, create_model

from .errors import ConfigError, ConfigIssue
from .models import PodbayConfig


def _line_index(text: str) -> dict[tuple, int]:
    """Map each path in a YAML document to its 1-based line."""
    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return {}
    out: dict[tuple, int] = {}

    def walk(node, path):
        out[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                out[path + (k.value,)] = k.start_mark.line + 1
                walk(v, path + (k.value,))
                out[path + (k.value,)] = k.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                walk(v, path + (i,))

    if root is not None:
        walk(root, ())
    return out


def _located(issues: list[ConfigIssue], lines: dict[tuple, int]) -> list[ConfigIssue]:
    out = []
    for issue in issues:
        loc = issue.loc
        while loc and loc not in lines:
            loc = loc[:-1]
        out.append(ConfigIssue(issue.loc, issue.message, lines.get(loc)))
    return sorted(out, key=lambda i: i.line or 0)


# What a pattern asks for, in words (any other is quoted as it is).
_PATTERN_WORDS = {
    r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$": "must be lower-case letters, digits and '-' (at most 63)",
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$":
        "must be a Kubernetes object name: lower-case letters, digits, '-' and '.'",
    r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+$": "must be a Docker name: letters, digits, '_', '.' and '-' (2 or more, "
                                    "starting with a letter or digit), not a path",
    r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$": "must be a Docker name: letters, digits, '_', '.' and '-', starting "
                                    "with a letter or digit",
}


def _pydantic_issues(err: ValidationError) -> list[ConfigIssue]:
    issues = []
    for e in err.errors():
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key (a typo?)"
            if len(e["loc"]) == 1:
                msg += ("; a backend's settings go under its name, for an installed backend only "
                        f"(here: {', '.join(sections()) or 'none'}): install its package or remove the section")
        elif e["type"] == "missing":
            msg = "required, but missing"
        elif e["type"] == "string_pattern_mismatch":
            pattern = (e.get("ctx") or {}).get("pattern", "")
            msg = f"{e['input']!r} " + _PATTERN_WORDS.get(pattern, f"does not have the form {pattern}")
        issues.append(ConfigIssue(tuple(e["loc"]), msg))
    return issues


@lru_cache(maxsize=1)
def config_model() -> type[PodbayConfig]:
    """PodbayConfig with one section per installed backend that has settings, named after
    the backend (`docker:`) and validated by the model it declares (`Backend.settings_model`):
    a new backend brings its section with its entry point, config.py does not change."""
    from ..backends import available, load

    sections: dict[str, Any] = {}
    for name in sorted(available()):
        try:
            model = load(name).settings_model()
        except Exception:  # noqa: BLE001 - a broken plugin: said in its words if it is chosen
            continue
        if model is not None:
            sections[name] = (model, Field(default_factory=model,
                                           description=f"The {name} backend's settings (below)."))
    return create_model("PodbayConfig", __base__=PodbayConfig, **sections)


def sections() -> list[str]:
    """The backends whose settings podbay.yaml may hold, by name."""
    return sorted(set(config_model().model_fields) - set(PodbayConfig.model_fields))


def parse_config(data: Any, path: str | Path = "<config>", text: str | None = None,
                 backend: str | None = None) -> PodbayConfig:
    """Validate a podbay.yaml's data. `backend` is the one the run uses, when it overrides
    the file's `backend:` (PODBAY_BACKEND, --backend): its checks run, not the file's."""
    lines = _line_index(text) if text else {}
    if not isinstance(data, dict):
        raise ConfigError(path, [ConfigIssue((), "the file must be a mapping (images:, profiles:, …)")])
    try:
        cfg = config_model().model_validate(data)
    except ValidationError as e:
        raise ConfigError(path, _located(_pydantic_issues(e), lines)) from None
    from .checks import check_semantics

    issues = check_semantics(cfg, backend or cfg.backend)
    if issues:
        raise ConfigError(path, _located(issues, lines))
    return cfg


def load_config(path: str | Path, backend: str | None = None) -> PodbayConfig:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError(path, [ConfigIssue((), f"cannot read the file: {e.strerror}")]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(
            path, [ConfigIssue((), f"not valid YAML: {problem}", mark.line + 1 if mark else None)]
        ) from None
    return parse_config(data, path, text, backend)
