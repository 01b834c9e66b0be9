"""The Response Network's arq workers: ``arq jobs.WorkerSettings`` (interactive sync queue) and
``arq jobs.BulkWorkerSettings`` (the schedule and exports, on the bulk queue).

Both are built on first access from the environment (``NETSYNC_*``), so importing this package
reads no configuration and opens no connection. Building either also makes arq's command line
use ``jobs.shutdown.BoundedShutdownWorker``, whose shutdown ends within a bound whatever is down.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "WorkerSettings":
        from jobs import shutdown
        from jobs.worker import worker_settings

        shutdown.install()
        return worker_settings()
    if name == "BulkWorkerSettings":
        from jobs import shutdown
        from jobs.bulk import bulk_worker_settings

        shutdown.install()
        return bulk_worker_settings()
    raise AttributeError(name)
