"""Wake arq workers on enqueue instead of waiting for their next poll.

arq finds new jobs by polling Redis every ``poll_delay``: a latency floor (the default 0.5 s
gives a pickup p50 of ~260 ms) or, polled fast, a steady load on Redis. ``JobQueue.enqueue``
publishes on a per-queue channel; each worker subscribes to it and its poll loop sleeps until the
next poll *or* the next message, whichever comes first. Polling stays as the safety net, so a lost
message costs at most one ``poll_delay``.

arq has no hook for this, so ``install()`` swaps the module-level ``poll`` helper that
``arq.worker.Worker.main`` iterates (looked up at call time, after ``on_startup``). The swap is
checked against the pinned arq version and is a no-op elsewhere; ``tests/jobs/test_relay.py`` proves
the wake-up works.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator

import arq
import arq.worker
from arq.connections import ArqRedis
from redis.exceptions import RedisError

from app.queue.client import wake_channel

log = logging.getLogger(__name__)

_SUPPORTED_ARQ = ("0.28.0",)
_wake = asyncio.Event()
_last_poll: float | None = None


def last_poll() -> float | None:
    """``time.monotonic()`` of the poll loop's last iteration: this worker's liveness signal
    (``jobs.observe``). A loop stuck anywhere, in a job's synchronous code or on Redis, stops
    moving it; ``None`` until the first iteration."""
    return _last_poll


async def _wakeable_poll(step: float = 0.5) -> AsyncGenerator[float, None]:
    global _last_poll
    loop = asyncio.get_running_loop()
    start = loop.time()
    while True:
        _wake.clear()
        _last_poll = time.monotonic()
        yield loop.time() - start
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(_wake.wait(), timeout=step)


def install() -> bool:
    version = getattr(arq, "VERSION", "")
    if version not in _SUPPORTED_ARQ:
        log.warning("arq %s: enqueue wake-up not installed, polling only", version)
        return False
    arq.worker.poll = _wakeable_poll  # type: ignore[attr-defined]
    return True


async def listen(redis: ArqRedis, queue_name: str) -> None:
    """Set the wake event on every message; reconnect with backoff when Redis goes away."""
    delay = 0.1
    while True:
        pubsub = redis.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(wake_channel(queue_name))
            delay = 0.1
            _wake.set()  # anything enqueued while we were not listening
            async for _message in pubsub.listen():
                _wake.set()
        except (RedisError, OSError) as exc:
            log.warning("wake-up channel lost, retrying", extra={"error": repr(exc)})
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
        finally:
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()  # type: ignore[no-untyped-call]
