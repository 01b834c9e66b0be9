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


#: The two processes inside ``importer``, and what each may import of the other: nothing. The
#: modules they share (``SHARED``) may import neither; ``python -m importer`` is the daemon's.
SIDES: dict[str, set[str]] = {"importer.daemon": set(), "importer.api": set()}
SHARED = ("importer.config", "importer.db", "importer.models", "importer.views", "importer")
SIDE_OF_MODULE = {"importer.__main__": "importer.daemon"}


def _module_of(root: Path, path: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(path: Path, root: Path) -> set[str]:
    """Every module name ``path`` imports, and for ``from X import y`` also ``X.y`` (``y`` may be
    a module); relative imports resolved against ``path``'s package."""
    names: set[str] = set()
    package = _module_of(root, path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}".lstrip(".") for alias in node.names)
    return names


def imported(path: Path, root: Path) -> set[str]:
    """The top-level packages of ours that ``path`` imports."""
    return {name.split(".")[0] for name in modules(path, root)} & set(ALLOWED)


def _side(module: str) -> str | None:
    if module in SIDE_OF_MODULE:
        return SIDE_OF_MODULE[module]
    return next((s for s in SIDES if module == s or module.startswith(s + ".")), None)


def back_imports(root: Path) -> list[str]:
    found = []
    for package, allowed in ALLOWED.items():
        for path in sorted((root / package).rglob("*.py")):
            for target in sorted(imported(path, root) - allowed - {package}):
                found.append(f"{path.relative_to(root)} imports {target}")
    for path in sorted((root / "importer").rglob("*.py")):
        module = _module_of(root, path)
        side = _side(module)
        if side is None and module not in SHARED:
            continue
        crossing = {_side(m) for m in modules(path, root)} - {None, side}
        found.extend(f"{path.relative_to(root)} imports {o}" for o in sorted(map(str, crossing)))
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
        ("importer/api/probe.py", "from importer import daemon", "importer.daemon"),
        ("importer/api/probe.py", "from ..daemon import ledger", "importer.daemon"),
        ("importer/views.py", "from importer.daemon.ledger import claim", "importer.daemon"),
        ("importer/__main__.py", "from importer.api import app", "importer.api"),
    ],
)
def test_a_back_import_is_caught(tmp_path: Path, where: str, source: str, target: str) -> None:
    for package in ALLOWED:
        (tmp_path / package).mkdir()
    (tmp_path / where).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / where).write_text(source + "\n")
    assert back_imports(tmp_path) == [f"{where} imports {target}"]
