"""Workers stop within a bound after SIGTERM or SIGINT, whatever is down.

arq's own shutdown waits for running jobs (``job_completion_wait``), then closes: it deletes the
worker's health key and closes its pool. Our Redis connections retry forever during an outage
(``jobs.worker.worker_redis``: an outage pauses a worker instead of killing it), so with Redis
gone that close never ended: the process logged "wait complete" and lived on. Here:

* on the first signal, reconnecting stops being infinite (``OutageRetry.give_up``): every Redis
  call tries once more and then fails, so the wake-up listener, the heartbeats and the close
  give up instead of waiting for a Redis that may never come back;
* the close is arq's, made tolerant: a Redis that does not answer is logged and skipped, and
  ``on_shutdown`` (which disposes the database pool) still runs;
* a watchdog ends the process ``GRACE_S`` after the wait for jobs, whatever still hangs (a
  database that does not answer either), and a second signal ends it at once, as uvicorn and
  arq users expect.

A job cut short is not lost: its change is still in the outbox (``export_seq`` unset) and the
sweeper exports it after the restart, exactly as after a kill -9; arq's retry covers the rest.
The bound per process is ``job_completion_wait + GRACE_S`` (``docs/reliability.md``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from typing import ClassVar

from arq import worker as arq_worker
from redis.asyncio.retry import Retry
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

#: What the close may take once the jobs are done or cut short, before the process ends anyway.
GRACE_S = 10.0
#: Exit status when the watchdog or a second signal ends the process.
FORCED_EXIT = 1


class OutageRetry(Retry):
    """redis-py's retry, infinite while the worker runs and finite once it is stopping.

    redis-py copies the retry object into every client and connection, so the switch is one
    the class holds: every copy, and every retry loop already running, sees it at its next turn.
    """

    _stopping: ClassVar[bool] = False

    @property
    def _retries(self) -> int:
        return 1 if OutageRetry._stopping else self._configured

    @_retries.setter
    def _retries(self, value: int) -> None:
        self._configured = value

    @classmethod
    def give_up(cls) -> None:
        """Every copy, in every client of this process, tries once more and then fails."""
        OutageRetry._stopping = True


class BoundedShutdownWorker(arq_worker.Worker):
    """arq's Worker with a shutdown that ends within ``job_completion_wait + GRACE_S``."""

    _stopping = False
    _waited = False

    def _begin_stop(self, signum: signal.Signals) -> None:
        """First signal: give up reconnecting, arm the watchdog; a second one exits now."""
        if self._stopping:
            log.warning("second %s: exiting now", signum.name)
            os._exit(FORCED_EXIT)
        self._stopping = True
        OutageRetry.give_up()
        bound = float(self._job_completion_wait or 0) + GRACE_S
        self.loop.call_later(bound, self._watchdog, bound)

    def _watchdog(self, bound: float) -> None:
        log.error("shutdown took longer than %.0f s: exiting now", bound)
        logging.shutdown()
        os._exit(FORCED_EXIT)

    def handle_sig_wait_for_completion(self, signum: signal.Signals) -> None:
        self._begin_stop(signal.Signals(signum))
        super().handle_sig_wait_for_completion(signum)

    def handle_sig(self, signum: signal.Signals) -> None:
        # called by the signal (no job_completion_wait), or by arq itself once the wait is over
        if signal.Signals(signum) in (signal.SIGINT, signal.SIGTERM) and not self._waited:
            self._begin_stop(signal.Signals(signum))
        super().handle_sig(signum)

    async def _wait_for_tasks_to_complete(self, signum: signal.Signals) -> None:
        self._waited = True  # the handle_sig arq calls at the end is not a second signal
        await super()._wait_for_tasks_to_complete(signum)

    async def main(self) -> None:
        """arq's loop; once stopping, a Redis that no longer answers ends it quietly (the poll
        in flight fails fast now that reconnecting has been given up): that is the stop."""
        try:
            await super().main()
        except (RedisError, OSError) as exc:
            if not self._stopping:
                raise
            log.info("stopped while Redis was unreachable", extra={"error": repr(exc)[:200]})

    async def close(self) -> None:
        """arq's close, tolerant of a Redis that does not answer."""
        if not self._handle_signals:
            self.handle_sig(signal.SIGUSR1)
        if not self._pool:
            return
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        try:
            await asyncio.wait_for(self.pool.delete(self.health_check_key), GRACE_S / 2)
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("Redis did not answer at shutdown", extra={"error": repr(exc)[:200]})
        if self.on_shutdown:
            await self.on_shutdown(self.ctx)
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            await asyncio.wait_for(self.pool.close(close_connection_pool=True), GRACE_S / 2)
        self._pool = None


def install() -> None:
    """Make ``arq``'s command line (``arq jobs.WorkerSettings``) build our worker class: arq
    offers no setting for it, and ``create_worker`` looks the class up in its module."""
    arq_worker.Worker = BoundedShutdownWorker  # type: ignore[misc]
