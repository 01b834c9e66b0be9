"""Moving files out of the exports directory: to the archive once applied, to quarantine (with a
``.reason.json`` sidecar) once refused. Plain blocking file operations; the daemon runs them in a
thread. A file another importer moved first is simply gone: never an error."""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import orjson

from exchange.reader import RejectedFile

log = logging.getLogger(__name__)


def printable(name: str) -> str:
    """A directory entry name as text PostgreSQL accepts (names need not be valid UTF-8)."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")[:255]


@dataclass(frozen=True)
class FileMover:
    exports_dir: Path
    archive_dir: Path
    quarantine_dir: Path

    def archive(self, name: str, *, duplicate: bool) -> None:
        target = self.archive_dir / name
        if duplicate and target.exists():
            target = self.archive_dir / f"{name}.duplicate-{uuid.uuid4().hex[:8]}"
        with contextlib.suppress(FileNotFoundError):  # another importer archived it first
            os.replace(self.exports_dir / name, target)

    def archive_many(self, moves: list[tuple[str, bool]]) -> None:
        for name, duplicate in moves:
            self.archive(name, duplicate=duplicate)

    def move_to_quarantine(self, name: str, rejected: RejectedFile) -> tuple[str, int] | None:
        """Move the entry (whatever it is: file, symlink, fifo, directory), write its sidecar,
        and return the name it is stored under and its size; ``None`` if it was gone."""
        source = self.exports_dir / name
        target = self.quarantine_dir / name
        if os.path.lexists(target):
            target = self.quarantine_dir / f"{name}.{uuid.uuid4().hex[:8]}"
        try:
            size = os.lstat(source).st_size
            os.replace(source, target)
        except FileNotFoundError:
            return None
        sidecar = {
            "file": name,
            "stored_as": target.name,
            "reason": rejected.reason.value,
            "detail": rejected.detail,
            "size": size,
            "quarantined_at": datetime.now(UTC).isoformat(),
        }
        try:
            Path(f"{target}.reason.json").write_bytes(
                orjson.dumps(sidecar, option=orjson.OPT_INDENT_2)
            )
        except OSError as exc:
            log.error("could not write a sidecar", extra={"file": name, "error": repr(exc)})
        return target.name, size
