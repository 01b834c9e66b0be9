"""Alembic environment of the Response Network database."""

from app.config import ResponseSettings
from app.models import ResponseBase
from ops.migrate import run_env

run_env(ResponseBase.metadata, lambda: ResponseSettings().database_url)
