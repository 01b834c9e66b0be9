"""Every Prometheus metric netsync exports, defined once.

Each process imports the objects it updates from here, so a name, its type and its labels are
declared in one place (and listed in ``docs/operations.md``). Defining a metric only registers
it in prometheus-client's in-process registry: no I/O. Each process serves its own registry
(the APIs on ``/metrics``, the worker and the importer on their metrics port), so counters are
per process and Prometheus sums them across replicas.

Labels are kept to bounded sets: route *templates* (never raw paths), job and queue names,
reject reasons, stream names.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

__all__ = ["CONTENT_TYPE_LATEST", "render"]

# Latency buckets from a millisecond (an in-memory health check) to a minute (a slow export).
_FAST = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Sync lag: milliseconds when all is well, minutes or hours when files are carried by hand.
_LAG = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 86400)

# -- HTTP (Response API, Request API) ----------------------------------------------------------

HTTP_REQUESTS = Counter(
    "netsync_http_requests",
    "HTTP requests answered, by route template and status code.",
    ["app", "method", "route", "status"],
)
HTTP_DURATION = Histogram(
    "netsync_http_request_duration_seconds",
    "Time from receiving a request to the end of its response.",
    ["app", "method", "route"],
    buckets=_FAST,
)

# -- sign-in (both APIs) -----------------------------------------------------------------------

SIGN_IN_THROTTLED = Counter(
    "netsync_sign_in_throttled",
    "Password checks refused with 429 before hashing, by API and by what was over its limit.",
    ["app", "scope"],
)
SIGN_IN_REHASHED = Counter(
    "netsync_sign_in_rehashed",
    "Hashes replaced at a successful sign-in (legacy bcrypt or older argon2 parameters).",
)
SIGN_IN_THROTTLE_ERRORS = Counter(
    "netsync_sign_in_throttle_errors",
    "Throttle checks that could not reach their store (the check was skipped: fail open).",
    ["app"],
)
HASHING_BUSY = Counter(
    "netsync_hashing_busy",
    "Password hashes refused with 503 because every hashing slot stayed busy.",
)

# -- jobs (enqueued by the Response API and the CLI, run by the worker) -------------------------

JOBS_ENQUEUED = Counter("netsync_jobs_enqueued", "Jobs accepted by Redis.", ["job", "queue"])
JOBS_STARTED = Counter("netsync_jobs_started", "Job runs started (every try).", ["job", "queue"])
JOBS_SUCCEEDED = Counter("netsync_jobs_succeeded", "Job runs that returned.", ["job", "queue"])
JOBS_FAILED = Counter(
    "netsync_jobs_failed",
    "Job runs that failed for good: an error, a timeout, or a retry past max tries.",
    ["job", "queue"],
)
JOBS_RETRIED = Counter(
    "netsync_jobs_retried",
    "Job runs that will be run again (Retry raised, or cancelled by a worker shutdown).",
    ["job", "queue"],
)
JOBS_DEAD_LETTERED = Counter(
    "netsync_jobs_dead_lettered", "Jobs moved to the dead-letter list.", ["job", "queue"]
)
JOB_DURATION = Histogram(
    "netsync_job_duration_seconds",
    "Run time of one job try, whatever its outcome.",
    ["job", "queue"],
    buckets=_FAST,
)
JOB_QUEUE_WAIT = Histogram(
    "netsync_job_queue_wait_seconds",
    "Time from enqueue to the start of the first try (pickup latency).",
    ["job", "queue"],
    buckets=_FAST,
)
QUEUE_DEPTH = Gauge(
    "netsync_queue_depth", "Jobs due now and waiting for a worker (on scrape).", ["queue"]
)
QUEUE_DEFERRED = Gauge(
    "netsync_queue_deferred",
    "Jobs queued for a later time: retries in backoff, next cron ticks (on scrape).",
    ["queue"],
)
EXPORT_CHANGES = Counter(
    "netsync_export_changes",
    "Changes written into published export files of the changes stream (a resend counts again).",
)
EXPORT_GENERATIONS = Counter(
    "netsync_export_generations",
    "Export generations this process began: 'restored' (its database was found rolled back)"
    " or 'operator' (netsync streams new-generation).",
    ["reason"],
)
OUTBOX_BACKLOG = Gauge(
    "netsync_outbox_backlog", "Outbox changes not yet assigned to an export file (on scrape)."
)
OUTBOX_OLDEST_AGE = Gauge(
    "netsync_outbox_oldest_pending_age_seconds",
    "Age of the oldest outbox change not yet assigned to an export file; 0 when none.",
)
CRON_LAST_RUN = Gauge(
    "netsync_cron_last_run_timestamp_seconds",
    "Unix time at which this worker last started a run of the cron entry.",
    ["job"],
)
CRON_LAST_SUCCESS = Gauge(
    "netsync_cron_last_success_timestamp_seconds",
    "Unix time at which a run of the cron entry last succeeded on this worker.",
    ["job"],
)
SCHEDULE_ENTRIES = Gauge("netsync_schedule_entries", "Cron entries this worker schedules.")
WORKER_LAST_POLL = Gauge(
    "netsync_worker_last_poll_timestamp_seconds",
    "Unix time of the worker poll loop's last iteration (its liveness signal).",
)

# -- importer ---------------------------------------------------------------------------------

IMPORT_FILES_APPLIED = Counter(
    "netsync_import_files_applied", "Export files applied to the Request database.", ["stream"]
)
IMPORT_FILES_DUPLICATE = Counter(
    "netsync_import_files_duplicate",
    "Export files seen again after they had been applied (archived, nothing written).",
    ["stream"],
)
IMPORT_CHANGES_APPLIED = Counter(
    "netsync_import_changes_applied",
    "Entity rows written by applied files (older versions skipped are not counted).",
    ["stream"],
)
IMPORT_FILES_QUARANTINED = Counter(
    "netsync_import_files_quarantined", "Files refused and moved to quarantine.", ["reason"]
)
IMPORT_OPEN_GAPS = Gauge(
    "netsync_import_open_gaps",
    "Sequence numbers missing below the highest applied file, per stream.",
    ["stream"],
)
IMPORT_LAG = Histogram(
    "netsync_import_lag_seconds",
    "Time from a file's creation on the Response Network to its application here.",
    ["stream"],
    buckets=_LAG,
)
IMPORT_FILES_SUPERSEDED = Counter(
    "netsync_import_files_superseded",
    "Files of an older generation than one already applied (a restored Response database"
    " undid what they hold): archived, nothing written.",
    ["stream"],
)
IMPORT_GENERATIONS = Counter(
    "netsync_import_generations",
    "New generations of the Response database seen here (each follows a restore there).",
)
IMPORT_GENERATION = Gauge(
    "netsync_import_generation",
    "The newest generation of the Response database applied here (0: the first).",
)
IMPORT_LAST_SCAN = Gauge(
    "netsync_import_last_scan_timestamp_seconds",
    "Unix time of the importer loop's last pass or file (its liveness signal).",
)


def render() -> bytes:
    """The process's metrics in the Prometheus text format."""
    return generate_latest()
