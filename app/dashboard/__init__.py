"""The operators' web dashboard: static HTML, CSS and JavaScript over the JSON API.

The page itself holds no data and needs no sign-in to load; it signs in through
``POST /api/v1/auth/token``, keeps the bearer token in ``sessionStorage`` and calls the
administrators' endpoints with it, so every number it shows passed the same authorisation as
the API. No build step and no CDN: the files under ``static/`` are served as they are.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).resolve().parent / "static"
PATH = "/dashboard"


def mount_dashboard(app: FastAPI) -> None:
    """Serve ``/dashboard/`` (``/dashboard`` redirects there, so relative asset URLs work)."""
    app.mount(PATH, StaticFiles(directory=STATIC, html=True), name="dashboard")
