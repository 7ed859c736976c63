"""What is wrong in podbay.yaml: each issue with its place (`profiles[3].pools`) and line."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ConfigIssue:
    loc: tuple[str | int, ...]
    message: str
    line: int | None = None

    @property
    def place(self) -> str:
        out = ""
        for part in self.loc:
            out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
        return out or "(top level)"

    def __str__(self) -> str:
        where = f" (line {self.line})" if self.line else ""
        return f"{self.place}: {self.message}{where}"


class ConfigError(Exception):
    def __init__(self, path: str | Path, issues: list[ConfigIssue]):
        self.path = str(path)
        self.issues = issues
        super().__init__(self.render())

    def render(self) -> str:
        n = len(self.issues)
        lines = [f"{self.path}: {n} error{'s' if n != 1 else ''}"]
        lines += [f"  {i}" for i in self.issues]
        return "\n".join(lines)
