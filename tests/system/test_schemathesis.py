"""schemathesis against both APIs' own OpenAPI schemas, in-process (ASGI), as an admin (the
Response API) and with the service token (the Request API): valid and invalid requests to every
operation, and not one may answer 5xx.

Run alone: ``./run python -m pytest tests/system/test_schemathesis.py -q``.
``NETSYNC_FUZZ_EXAMPLES`` raises the number of examples per operation and mode (default 15, about 45
s) for a longer hunt. (The schemathesis pytest plugin's ``from_fixture`` does not work with pytest
9, hence the loop over operations.)
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from pydantic import SecretStr
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.python import asgi

from app.bootstrap import ensure_admin
from app.main import create_app
from importer.api import create_app as create_request_app
from tests.factories import ADMIN_PASSWORD
from tests.support import Services, make_sandbox, truncate_all

EXAMPLES = int(os.environ.get("NETSYNC_FUZZ_EXAMPLES", "15"))


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def fuzzed_app(
    services: Services, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[FastAPI]:
    await truncate_all(services)
    sandbox = make_sandbox(Path(tmp_path_factory.mktemp("fuzz")), services)
    config = sandbox.response_settings()
    await ensure_admin(config.model_copy(update={"admin_password": SecretStr(ADMIN_PASSWORD)}))
    app = create_app(config)
    try:
        yield app
    finally:
        asgi.shutdown_lifespans()  # schemathesis started the app's lifespan on its own loop


@pytest.fixture(scope="module")
def api_schema(fuzzed_app: FastAPI) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_asgi("/openapi.json", fuzzed_app)


@pytest.fixture(scope="module")
def admin_auth(fuzzed_app: FastAPI) -> dict[str, str]:
    with asgi.get_client(fuzzed_app) as client:  # type: ignore[arg-type]
        response = client.post(
            "/api/v1/auth/token", data={"username": "admin", "password": ADMIN_PASSWORD}
        )
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


def fuzz(operation: Any, mode: schemathesis.GenerationMode, headers: dict[str, str]) -> None:
    """Call one operation with ``EXAMPLES`` generated requests; raises on the first 5xx."""

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
        phases=[Phase.explicit, Phase.generate],
    )
    def call(case: schemathesis.Case[Any]) -> None:
        # A copy each time: schemathesis adds the case's own headers to the dict it is given.
        case.call_and_validate(headers=dict(headers), checks=[not_a_server_error])

    call()


SERVICE_TOKEN = "fuzzing-service-token-" + "y" * 24


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def fuzzed_request_app(
    services: Services, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[FastAPI]:
    sandbox = make_sandbox(Path(tmp_path_factory.mktemp("fuzz-request")), services)
    config = sandbox.request_settings(
        request_service_token=SecretStr(SERVICE_TOKEN),
        request_secret_key=SecretStr("request-fuzz-secret-" + "z" * 30),
    )
    app = create_request_app(config)
    try:
        yield app
    finally:
        asgi.shutdown_lifespans()


def _operations(schema: schemathesis.BaseSchema) -> list[Any]:
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result
        operations.append(result.ok())
    return operations


def test_no_request_makes_the_request_api_fail_with_a_5xx(fuzzed_request_app: FastAPI) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", fuzzed_request_app)
    operations = _operations(schema)
    assert len(operations) >= 8
    service = {"Authorization": f"Bearer {SERVICE_TOKEN}"}
    _fuzz_all(operations, lambda op: {} if op.path == "/api/v1/auth/login" else service)


def test_no_request_makes_the_api_fail_with_a_5xx(
    api_schema: schemathesis.BaseSchema, admin_auth: dict[str, str]
) -> None:
    operations = _operations(api_schema)
    assert len(operations) > 25
    _fuzz_all(operations, lambda op: {} if op.path == "/api/v1/auth/token" else admin_auth)


def _fuzz_all(operations: list[Any], headers_for: Any) -> None:
    server_errors: list[str] = []
    for operation in operations:
        headers = headers_for(operation)
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
            try:
                fuzz(operation, mode, headers)
            except Unsatisfiable:  # no parameters and no body: nothing can be made invalid
                assert mode == schemathesis.GenerationMode.NEGATIVE, operation.label
            except Exception as exc:  # collect every operation's failure, then report them all
                server_errors.append(f"{operation.label} ({mode.value}): {exc}")
    assert not server_errors, "\n\n".join(server_errors)
