"""``netsync inspect …``: the effective configuration, and the jobs and workers Redis knows.

Configuration is printed as every process would read it (environment, ``.netsync/embedded.env``,
defaults), with secrets masked: ``SecretStr`` values and the password of any URL.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

import typer
from pydantic import SecretStr

from app.config import ResponseSettings
from importer.config import RequestSettings
from jobs.client import JobInfo, list_active, list_queued, list_workers, redis_pool
from netsync.cli.output import JsonOption, print_json, print_table, run
from netsync.config import CommonSettings, ConfigurationError

app = typer.Typer(
    help="Look at the configuration, the queues and the workers.", no_args_is_help=True
)

MASK = "********"


def mask_url(url: str) -> str:
    """``postgresql://user:secret@host/db`` → ``postgresql://user:********@host/db``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{user}:{MASK}@{host}"))


def _shown(name: str, value: Any) -> Any:
    if isinstance(value, SecretStr):
        return MASK if value.get_secret_value() else None
    if isinstance(value, str) and name.endswith("_url"):
        return mask_url(value)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def _derived(response: ResponseSettings, request: RequestSettings) -> dict[str, Any]:
    """Paths the processes compute when the variable is unset."""
    derived: dict[str, Any] = {
        "NETSYNC_ARCHIVE_DIR": str(request.archive_path),
        "NETSYNC_QUARANTINE_DIR": str(request.quarantine_path),
        "NETSYNC_TRUSTED_KEYS_DIR": str(request.trusted_keys_path or "") or None,
    }
    try:
        derived["NETSYNC_SIGNING_KEY_FILE"] = str(response.signing_key_path)
    except ConfigurationError as exc:
        derived["NETSYNC_SIGNING_KEY_FILE"] = f"<{exc}>"
    return derived


def effective_config() -> list[dict[str, Any]]:
    response, request = ResponseSettings(), RequestSettings()
    common = set(CommonSettings.model_fields)
    rows: dict[str, dict[str, Any]] = {}
    for settings, used_by in ((response, "response"), (request, "request")):
        for name in type(settings).model_fields:
            variable = f"NETSYNC_{name.upper()}"
            rows[variable] = {
                "variable": variable,
                "value": _shown(name, getattr(settings, name)),
                "used_by": "all" if name in common else f"{used_by} network",
            }
    for variable, value in _derived(response, request).items():
        if rows[variable]["value"] is None:
            rows[variable]["value"] = value
    return sorted(rows.values(), key=lambda r: (r["used_by"] != "all", r["variable"]))


@app.command("config")
def config(as_json: bool = JsonOption) -> None:
    """The effective configuration of every process, secrets masked."""
    rows = effective_config()
    if as_json:
        print_json({r["variable"]: r["value"] for r in rows})
        return
    print_table(
        "effective configuration",
        ["variable", "value", "used by"],
        ([r["variable"], r["value"], r["used_by"]] for r in rows),
    )


def _job_rows(jobs: list[JobInfo]) -> list[list[Any]]:
    return [[j.job_id, j.function, j.enqueued_at, j.tries] for j in jobs]


def _job_json(jobs: list[JobInfo]) -> list[dict[str, Any]]:
    return [
        {
            "job_id": j.job_id,
            "state": j.state,
            "function": j.function,
            "enqueued_at": j.enqueued_at,
            "tries": j.tries,
        }
        for j in jobs
    ]


async def _from_redis(what: str, queue: str | None, limit: int) -> tuple[str, list[Any]]:
    settings = ResponseSettings()
    name = queue or settings.sync_queue
    redis = redis_pool(settings.redis_dsn, queue_name=name)
    try:
        if what == "queued":
            return name, await list_queued(redis, name, limit=limit)
        if what == "active":
            return name, await list_active(redis, limit=limit)
        return name, await list_workers(redis)
    finally:
        await redis.aclose(close_connection_pool=True)


QueueOption = typer.Option(None, "--queue", help="Queue name (default: NETSYNC_SYNC_QUEUE).")
LimitOption = typer.Option(1000, "--limit", min=1, help="Show at most this many jobs.")


@app.command("queued")
def queued(
    queue: str | None = QueueOption, limit: int = LimitOption, as_json: bool = JsonOption
) -> None:
    """Jobs waiting in a queue, next to run first."""
    name, jobs = run(_from_redis("queued", queue, limit))
    if as_json:
        print_json(_job_json(jobs))
        return
    print_table(f"queued on {name}", ["job id", "function", "enqueued", "tries"], _job_rows(jobs))


@app.command("active")
def active(limit: int = LimitOption, as_json: bool = JsonOption) -> None:
    """Jobs a worker is running now (on any queue)."""
    _, jobs = run(_from_redis("active", None, limit))
    if as_json:
        print_json(_job_json(jobs))
        return
    print_table("running", ["job id", "function", "enqueued", "try"], _job_rows(jobs))


@app.command("workers")
def workers(as_json: bool = JsonOption) -> None:
    """Workers alive now, from their heartbeats in Redis."""
    _, found = run(_from_redis("workers", None, 0))
    if as_json:
        print_json(found)
        return
    fields = ("id", "queue", "pid", "started_at", "last_poll_age_s", "jobs_running")
    print_table(
        "live workers",
        ["worker id", "queue", "pid", "started", "last poll age (s)", "running"],
        ([w.get(f) for f in fields] for w in found),
    )
