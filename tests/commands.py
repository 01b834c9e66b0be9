"""The installed ``netsync`` command, run as operators run it: the one way tests call it."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.support import Sandbox

BIN = Path(sys.executable).parent


def netsync(sandbox: Sandbox, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    path = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"
    command = shutil.which("netsync", path=path)
    assert command is not None, "the netsync console script is not installed"
    return subprocess.run(
        [command, *args],
        env=sandbox.env(PATH=path, COLUMNS="200", **env),
        cwd=sandbox.root,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def anetsync(sandbox: Sandbox, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``netsync`` from a test whose event loop runs the worker or importer meanwhile."""
    return await asyncio.to_thread(netsync, sandbox, *args, **env)


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.stdout, result.stderr
    return json.loads(result.stdout)
