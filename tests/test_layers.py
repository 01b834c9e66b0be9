"""Imports go one way between the top-level packages, so a newcomer reads the code in layers.

From the bottom: ``exchange`` (the file contract) and ``netsync`` (the shared base: settings,
databases, logging, errors, metrics, passwords), ``netsync`` may use ``exchange``; ``app`` (the
Response domain, its API and the job queue interface) on them; ``jobs`` (the Response workers)
on ``app``; ``importer`` (the Request Network) on the base alone, never on ``app`` or ``jobs``;
``ops`` (the operator's tools) on top of everything. The check reads every module's imports
with ``ast``, including imports inside functions and under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: Which top-level packages each may import (besides itself and the standard library).
ALLOWED: dict[str, set[str]] = {
    "exchange": set(),
    "netsync": {"exchange"},
    "app": {"exchange", "netsync"},
    "jobs": {"exchange", "netsync", "app"},
    "importer": {"exchange", "netsync"},
    "ops": {"exchange", "netsync", "app", "jobs", "importer"},
}


def imported(path: Path) -> set[str]:
    """The top-level packages of ours that ``path`` imports."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return {name.split(".")[0] for name in names} & set(ALLOWED)


def back_imports(root: Path) -> list[str]:
    found = []
    for package, allowed in ALLOWED.items():
        for path in sorted((root / package).rglob("*.py")):
            for target in sorted(imported(path) - allowed - {package}):
                found.append(f"{path.relative_to(root)} imports {target}")
    return found


def test_imports_go_one_way_between_the_packages() -> None:
    assert back_imports(ROOT) == []


@pytest.mark.parametrize(
    ("where", "source", "target"),
    [
        ("app/queue/probe.py", "from jobs.relay import OutboxRelay", "jobs"),
        ("importer/probe.py", "from app.db import ResponseSession", "app"),
        ("netsync/probe.py", "def f() -> None:\n    import ops.cli", "ops"),
        ("exchange/probe.py", "from netsync import metrics", "netsync"),
    ],
)
def test_a_back_import_is_caught(tmp_path: Path, where: str, source: str, target: str) -> None:
    for package in ALLOWED:
        (tmp_path / package).mkdir()
    (tmp_path / where).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / where).write_text(source + "\n")
    assert back_imports(tmp_path) == [f"{where} imports {target}"]
