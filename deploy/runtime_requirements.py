"""Print the part of ``requirements.lock`` that the running services need.

The lock is compiled with the ``dev`` extra, so installing all of it would put the test and lint
tools (playwright alone is ~165 MB) into every image. This keeps the lock as the one source of
versions and hashes and selects from it: the project's runtime dependencies, then every locked
package that one of the selected packages pulls in, following the lock's ``# via`` annotations.

Each selected entry is copied verbatim, hashes and markers included, so the image still installs
with ``pip install --require-hashes``. A package the selection missed is not silently dropped:
pip refuses to install a hash-checked set with an unpinned dependency, so the build fails.

    python deploy/runtime_requirements.py > runtime.lock
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROJECT = "netsync"
_NAME = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)")


def normalize(name: str) -> str:
    """PEP 503 name normalization, so ``PyYAML`` and ``pyyaml`` are one package."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass
class LockEntry:
    name: str
    lines: list[str] = field(default_factory=list)
    required_by: set[str] = field(default_factory=set)


def parse_lock(text: str) -> dict[str, LockEntry]:
    """Entries of a ``uv pip compile --generate-hashes`` file, with who requires each."""
    entries: dict[str, LockEntry] = {}
    current: LockEntry | None = None
    for line in text.splitlines():
        match = _NAME.match(line)
        if match:
            current = LockEntry(normalize(match[1]), [line])
            entries[current.name] = current
            continue
        if current is None:
            continue
        stripped = line.strip()
        if stripped.startswith("--hash") or (stripped and not stripped.startswith("#")):
            current.lines.append(line)
            continue
        via = stripped.removeprefix("#").strip().removeprefix("via").strip()
        if via:
            current.required_by.add(PROJECT if via.startswith(PROJECT) else normalize(via))
    return entries


def runtime_roots(pyproject: str) -> set[str]:
    """The names of ``[project].dependencies``, without extras, versions or markers."""
    deps: list[str] = tomllib.loads(pyproject)["project"]["dependencies"]
    roots = set()
    for dep in deps:
        match = _NAME.match(dep)
        if match is None:
            raise ValueError(f"cannot read a package name from {dep!r}")
        roots.add(normalize(match[1]))
    return roots


def select(entries: dict[str, LockEntry], roots: set[str]) -> list[LockEntry]:
    """The roots and everything the lock says a selected package requires, in lock order."""
    missing = roots - entries.keys()
    if missing:
        raise ValueError(f"not in the lock: {', '.join(sorted(missing))}")
    chosen = set(roots)
    grew = True
    while grew:
        grew = False
        for entry in entries.values():
            if entry.name not in chosen and entry.required_by & chosen:
                chosen.add(entry.name)
                grew = True
    return [entry for entry in entries.values() if entry.name in chosen]


def render(selected: list[LockEntry]) -> str:
    header = "# Runtime subset of requirements.lock, selected by deploy/runtime_requirements.py\n"
    return header + "".join("\n".join(entry.lines) + "\n" for entry in selected)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lock", type=Path, default=ROOT / "requirements.lock")
    parser.add_argument("--pyproject", type=Path, default=ROOT / "pyproject.toml")
    args = parser.parse_args()
    roots = runtime_roots(args.pyproject.read_text())
    sys.stdout.write(render(select(parse_lock(args.lock.read_text()), roots)))


if __name__ == "__main__":
    main()
