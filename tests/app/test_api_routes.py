"""Every route of the Response API, walked from ``app.routes``: anonymous callers get 401 on all
of them but health, readiness and the token endpoint."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
from fastapi import FastAPI
from fastapi.routing import APIRoute

from app.main import create_app

PUBLIC = {("GET", "/health"), ("GET", "/ready"), ("POST", "/api/v1/auth/token")}
#: A valid value for each path parameter, so that only authentication can refuse the call.
SAMPLES = {
    "user_id": str(uuid.uuid4()),
    "profile_type_id": str(uuid.uuid4()),
    "key": "app.title",
    "job_id": "sync:" + str(uuid.uuid4()),
    "name": "sync",
}


def api_routes(app: FastAPI) -> Iterator[tuple[str, str]]:
    """(method, path) of every API route; included routers are walked into."""

    def walk(routes: list[Any]) -> Iterator[tuple[str, str]]:
        for route in routes:
            contexts = getattr(route, "effective_route_contexts", None)
            if contexts is not None:  # an included router (FastAPI ≥ 0.160)
                for context in contexts():
                    if isinstance(context.original_route, APIRoute):
                        for method in sorted(context.methods or set()):
                            yield method, context.path
            elif isinstance(route, APIRoute):
                for method in sorted(route.methods or set()):
                    yield method, route.path

    return walk(app.routes)


async def test_anonymous_callers_get_401_everywhere_but_health_and_token(
    api: httpx.AsyncClient,
) -> None:
    app = create_app()
    routes = sorted(set(api_routes(app)))
    documented = {
        (method.upper(), path)
        for path, operations in (await api.get("/openapi.json")).json()["paths"].items()
        for method in operations
    }
    assert set(routes) == documented  # the walk misses nothing the API serves
    assert len(routes) > 25
    assert set(routes) >= PUBLIC

    for method, path in routes:
        if (method, path) in PUBLIC:
            continue
        url = re.sub(r"\{(\w+)\}", lambda m: SAMPLES[m.group(1)], path)
        response = await api.request(method, url)
        assert response.status_code == 401, (method, path, response.text)
        assert response.json()["error"] == "not_authenticated"
        assert response.headers["www-authenticate"] == "Bearer"
        forged = await api.request(method, url, headers={"Authorization": "Bearer not.a.jwt"})
        assert forged.status_code == 401, (method, path, forged.text)

    assert (await api.get("/health")).status_code == 200
    assert (await api.get("/ready")).status_code == 200
