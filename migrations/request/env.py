"""Alembic environment of the Request Network database."""

from importer.config import RequestSettings
from importer.models import RequestBase
from ops.migrate import run_env

run_env(RequestBase.metadata, lambda: RequestSettings().database_url)
