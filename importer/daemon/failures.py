"""Whose fault a failure is: the file's (quarantine it) or the database's (retry, keep the file).

The distinction is the importer's central safety rule. A file is only ever quarantined for what
is in it; a database that is down, restarting or out of resources must never cost a genuine file
its place in the exports directory, so such errors stop the scan and it is retried with backoff.
"""

from __future__ import annotations

from sqlalchemy.exc import DBAPIError, InterfaceError

#: Errors that mean "the database did not answer", as opposed to "it refused this content".
DB_ERRORS = (DBAPIError, OSError, ConnectionError, TimeoutError)


class RetryLater(Exception):
    """Nothing is wrong with the file: stop the scan, keep every file, retry with backoff."""


class DatabaseUnavailable(RetryLater):
    """The Request database did not answer; retry later, quarantine nothing."""


class LocalFault(RetryLater):
    """The importer's own side failed (its spool or state directory, a transient read error
    such as EIO or ESTALE, out of file descriptors): retry later, quarantine nothing."""


def blames_the_file(exc: Exception) -> bool:
    """Whether a failed apply is the file's fault (its content), not the database's (down,
    restarting, out of resources): only the first quarantines, the second retries."""
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return False
        state = getattr(exc.orig, "sqlstate", None)
        # 21: cardinality violation (a statement given one row twice, an entity listed twice
        # in a snapshot), 22: data exception (too long, out of range), 23: integrity violation
        if state:
            return str(state).startswith(("21", "22", "23"))
        cause = exc.orig.__cause__ if exc.orig is not None else None
        # the driver refused to encode a value (e.g. out of the column's range) before sending
        return isinstance(cause, ValueError) and not isinstance(exc, InterfaceError | OSError)
    return not isinstance(exc, OSError | ConnectionError | TimeoutError)
