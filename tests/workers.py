"""arq's real Worker run in burst mode on a test's queue, and the job functions tests give it."""

from __future__ import annotations

from typing import Any

from arq import Retry
from arq.worker import Function, Worker

from app.queue import serialization
from jobs.worker import worker_redis
from tests.support import FLAG, Sandbox


def burst_worker(sandbox: Sandbox, queue_name: str, functions: list[Function]) -> Worker:
    """arq's real Worker that runs until its queue is empty (deferred retries included)."""
    return Worker(
        functions=functions,
        queue_name=queue_name,
        redis_pool=worker_redis(sandbox.services.redis_url, queue_name=queue_name),
        **serialization.OPTIONS,
        burst=True,
        poll_delay=0.01,
        keep_result=3600,
        handle_signals=False,
    )


async def run_burst(worker: Worker) -> None:
    try:
        await worker.main()
    finally:
        await worker.close()


async def flaky(ctx: dict[str, Any], name: str, *, times: int) -> str:
    """Fails (asking for a retry) until the test sets its flag; then succeeds."""
    if await ctx["redis"].get(FLAG + ctx["queue"]):
        return f"done {name} x{times}"
    raise Retry(defer=0.01) from ConnectionError(f"{name} is unreachable")


async def broken(ctx: dict[str, Any]) -> None:
    raise ValueError("this job cannot work")
