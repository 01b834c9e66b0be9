"""A file system that really fills up: the exports directory on a small tmpfs (root only).

"Disk full" is injected by filling that tmpfs with a filler file until writes fail, then deleting
it; a quota of the project's own making would only test the project's own check.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import uuid
from pathlib import Path


def fill(path: Path) -> None:
    """Write zeros to ``path`` until the file system refuses (ENOSPC)."""
    with contextlib.suppress(OSError), open(path, "wb") as fh:
        while True:
            fh.write(b"\0" * 65536)


def mount_tmpfs(path: Path, size: str = "64M") -> bool:
    """A small file system for the exports directory, so "disk full" can really happen."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
    )
    return result.returncode == 0


def unmount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


def unique_dir(prefix: str) -> Path:
    """A short directory name under /tmp: an embedded Redis's socket path must stay short."""
    return Path("/tmp") / f"{prefix}-{uuid.uuid4().hex[:8]}"
