"""The job queue in Redis, as both the Response API and its workers see it.

Enqueueing (``client.JobQueue``), the job states and listings the API and the CLI read, the
dead-letter list, and the JSON job serializer live here, below ``jobs``: the API enqueues and
reads through this package without importing the workers, and the workers (``jobs``) import it
for the same names and formats. Nothing here imports ``jobs``.
"""
