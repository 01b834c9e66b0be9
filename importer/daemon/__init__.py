"""The importer daemon (``python -m importer``): it watches the exports directory, verifies each
file before anything else is decided about it, and applies it to the Request database exactly
once (``loop`` drives it; ``handling`` decides what becomes of a file; ``apply`` and ``snapshots``
write the records; ``ledger`` and ``gaps`` keep the stream's bookkeeping). It shares only the
models, the database and the settings (``importer.models``, ``importer.db``, ``importer.config``)
and the read-only views of the sync state (``importer.views``) with the Request API."""
