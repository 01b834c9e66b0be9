"""The Request API (``uvicorn importer.api:app``): sign-in against the synced hashes, reads of the
synced entities and of the sync's state. It shares only the models, the database, the settings and
the read-only views of the sync state with the daemon (``tests/system/test_layers.py`` checks it).

``importer.api:app`` is the entry point deployments name; the application is built in
``importer.api.main``."""

from importer.api.main import app, create_app

__all__ = ["app", "create_app"]
