"""Imports go one way between the top-level packages, so a newcomer reads the code in layers.

From the bottom: ``exchange`` (the file contract) and ``netsync`` (the shared base: settings,
databases, logging, errors, metrics, passwords), ``netsync`` may use ``exchange``; ``app`` (the
Response domain, its API and the job queue interface) on them; ``jobs`` (the Response workers)
on ``app``; ``importer`` (the Request Network) on the base alone, never on ``app`` or ``jobs``;
``ops`` (the operator's tools) on top of everything. Inside ``importer`` the daemon and the
Request API are two processes that share only the models, the database, the settings and the
read-only views of the sync state: neither imports the other. The check reads every module's
imports with ``ast``, including imports inside functions and under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: Which top-level packages each may import (besides itself and the standard library).
ALLOWED: dict[str, set[str]] = {
    "exchange": set(),
    "netsync": {"exchange"},
    "app": {"exchange", "netsync"},
    "jobs": {"exchange", "netsync", "app"},
    "importer": {"exchange", "netsync"},
    "ops": {"exchange", "netsync", "app", "jobs", "importer"},
}


#: The two processes inside ``importer``: what each may import of the other (nothing).
SIDES: dict[str, set[str]] = {"importer.daemon": set(), "importer.api": set()}


def modules(path: Path) -> set[str]:
    """Every module name ``path`` imports."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def imported(path: Path) -> set[str]:
    """The top-level packages of ours that ``path`` imports."""
    return {name.split(".")[0] for name in modules(path)} & set(ALLOWED)


def _side(module: str) -> str | None:
    return next((s for s in SIDES if module == s or module.startswith(s + ".")), None)


def back_imports(root: Path) -> list[str]:
    found = []
    for package, allowed in ALLOWED.items():
        for path in sorted((root / package).rglob("*.py")):
            for target in sorted(imported(path) - allowed - {package}):
                found.append(f"{path.relative_to(root)} imports {target}")
    for side in SIDES:
        for path in sorted((root / side.replace(".", "/")).rglob("*.py")):
            crossing = {_side(m) for m in modules(path)} - {None, side}
            found.extend(
                f"{path.relative_to(root)} imports {o}" for o in sorted(map(str, crossing))
            )
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
        ("importer/api/probe.py", "from importer.daemon.ledger import claim", "importer.daemon"),
        ("importer/daemon/probe.py", "import importer.api.auth", "importer.api"),
    ],
)
def test_a_back_import_is_caught(tmp_path: Path, where: str, source: str, target: str) -> None:
    for package in ALLOWED:
        (tmp_path / package).mkdir()
    (tmp_path / where).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / where).write_text(source + "\n")
    assert back_imports(tmp_path) == [f"{where} imports {target}"]
