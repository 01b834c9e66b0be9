"""The Response Network's arq worker: ``arq jobs.WorkerSettings``.

``WorkerSettings`` is built on first access from the environment (``NETSYNC_*``), so importing
this package reads no configuration and opens no connection.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "WorkerSettings":
        from jobs.worker import worker_settings

        return worker_settings()
    raise AttributeError(name)
