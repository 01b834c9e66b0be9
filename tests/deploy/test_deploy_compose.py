"""compose.yaml, read with PyYAML (no container engine needed) and held to the same properties as
the Kubernetes tree: the networks kept apart, health checks that ask each process, Redis that
keeps every job, the exports directory shared between the workers and the importer; every image
named by a variable, for sites that build them without a registry. tests/compose brings it up.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from app.scheduling.registry import BULK, ScheduleSettings
from tests.deployment import (
    ALL_INTERFACES,
    APP_IMAGE,
    COMPOSE_IMAGES,
    COMPOSE_SECRETS,
    DAEMON_PORTS,
    MIGRATIONS,
    PUBLIC_PYTHON_IMAGE,
    PUBLISHED,
    REQUEST_SIDE,
    RESPONSE_ONLY_VARIABLES,
    RESPONSE_SIDE,
    ROOT,
    WORKERS,
    app_services,
    compose_model,
    daemon_port,
    dockerfile_args,
    health_url,
    longest_shutdown,
    seconds,
    volume_mounts,
)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return compose_model()


def test_compose_services_are_checked_and_ordered(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        if name in MIGRATIONS:
            assert service["restart"] == "no"
        else:
            assert service["healthcheck"]["test"], name
        for dependency, condition in service.get("depends_on", {}).items():
            assert dependency in services, (name, dependency)
            assert condition["condition"] in {"service_healthy", "service_completed_successfully"}
    for name in set(app_services(compose)) - MIGRATIONS:
        migration = "migrate-response" if name in RESPONSE_SIDE else "migrate-request"
        depends = services[name]["depends_on"]
        assert depends[migration]["condition"] == "service_completed_successfully", name
    migrate = " ".join(services["migrate-response"]["command"])
    assert "python -m ops.migrate response && python -m app.bootstrap" in migrate
    assert services["migrate-request"]["command"] == ["python", "-m", "ops.migrate", "request"]


def test_compose_keeps_the_networks_apart(compose: dict[str, Any]) -> None:
    """Nothing joins the two sides but the exports volume: no service on both networks, none
    with the other side's settings or secrets."""
    request_secret_readers = set()
    for name, service in compose["services"].items():
        networks = set(service["networks"])
        assert len(networks) == 1, name
        if name not in app_services(compose):
            continue
        assert name in RESPONSE_SIDE | REQUEST_SIDE, f"{name}: place it on one network"
        side = "response" if name in RESPONSE_SIDE else "request"
        assert networks == {side}, name
        for variable in service["environment"]:
            if side == "response":
                assert not variable.startswith("NETSYNC_REQUEST_"), (name, variable)
            else:
                assert variable not in RESPONSE_ONLY_VARIABLES, (name, variable)
            if variable == "NETSYNC_REQUEST_SECRET_KEY":
                request_secret_readers.add(name)
    assert request_secret_readers == {"request-api"}


def test_compose_healthchecks_ask_each_process(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, port in (("response-api", 8000), ("request-api", 8001)):
        assert health_url(services[name]) == f"http://127.0.0.1:{port}/health", name
    for name in DAEMON_PORTS:
        env = services[name]["environment"]
        assert env["NETSYNC_METRICS_HOST"] == ALL_INTERFACES, name  # scraped from the network
        assert health_url(services[name]) == (
            f"http://127.0.0.1:{daemon_port(name, env)}/health"
        ), name


def test_compose_runs_both_workers_twice_and_lets_them_finish(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, target in WORKERS.items():
        assert services[name]["command"] == ["arq", target]
        assert services[name]["deploy"]["replicas"] >= 2, name
        assert seconds(services[name]["stop_grace_period"]) > longest_shutdown(target), name


def test_compose_passes_the_schedule_on_with_the_code_defaults(compose: dict[str, Any]) -> None:
    """compose passes every schedule variable through, with the defaults the code has."""
    env = compose["services"]["bulk-worker"]["environment"]
    for job in BULK:
        variable = f"NETSYNC_SCHEDULE_{job.name.upper()}"
        default = ScheduleSettings.model_fields[f"schedule_{job.name}"].default
        assert env[variable] == "${" + variable + ":-" + default + "}", variable
    for variable in ("NETSYNC_TIMEZONE", "NETSYNC_RETENTION_DAYS"):
        default = ScheduleSettings.model_fields[variable.removeprefix("NETSYNC_").lower()].default
        assert env[variable] == "${" + variable + f":-{default}" + "}", variable
    # The Response API shows the schedule (GET /api/v1/schedule): it must read the same one.
    api = compose["services"]["response-api"]["environment"]
    for variable in env:
        if variable.startswith("NETSYNC_SCHEDULE_") or variable == "NETSYNC_TIMEZONE":
            assert api[variable] == env[variable], variable


def test_compose_runs_every_app_service_in_production_unprivileged(
    compose: dict[str, Any],
) -> None:
    for name, service in app_services(compose).items():
        assert service["environment"]["NETSYNC_ENV"] == "production", name
        assert service["read_only"] is True, name
        assert service["tmpfs"] == ["/tmp"], name  # the only place written outside volumes
        assert service["cap_drop"] == ["ALL"], name
        assert service["security_opt"] == ["no-new-privileges:true"], name


def test_compose_names_every_image_by_a_variable_with_the_public_default(
    compose: dict[str, Any],
) -> None:
    """A site without a registry names the images deploy/images/build.sh built from Debian
    packages; without the variables compose runs and builds on the public images."""
    services = compose["services"]
    apps = app_services(compose)
    for name, service in services.items():
        variable, default = APP_IMAGE if name in apps else COMPOSE_IMAGES[name]
        assert service["image"] == "${" + variable + ":-" + default + "}", name
    python = "${NETSYNC_PYTHON_IMAGE:-" + PUBLIC_PYTHON_IMAGE + "}"
    declared = dockerfile_args()
    assert declared["PYTHON_IMAGE"] == PUBLIC_PYTHON_IMAGE
    for name, service in apps.items():
        build = service["build"]
        assert build["context"] == ".", name
        assert build["args"] == {
            "PYTHON_IMAGE": python,
            # the build stage runs on the same image unless a site names one with build tools
            "PYTHON_BUILD_IMAGE": "${NETSYNC_PYTHON_BUILD_IMAGE:-" + python + "}",
        }, name
        assert set(build["args"]) <= declared.keys(), name


def test_compose_publishes_only_the_apis_and_on_the_loopback_by_default(
    compose: dict[str, Any],
) -> None:
    published = {n: s["ports"] for n, s in compose["services"].items() if "ports" in s}
    assert published.keys() == PUBLISHED.keys()
    for name, port in PUBLISHED.items():
        variable = "NETSYNC_RESPONSE_API_PORT" if port == 8000 else "NETSYNC_REQUEST_API_PORT"
        assert published[name] == [
            "${NETSYNC_PUBLISH_ADDRESS:-127.0.0.1}:${" + variable + f":-{port}}}:{port}"
        ], name


def has_compose_plugin() -> bool:
    if shutil.which("docker") is None:
        return False
    version = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
    return version.returncode == 0


def test_compose_file_passes_composes_own_check(tmp_path: Path) -> None:
    """``docker compose config``: Compose's schema and interpolation, where the plugin is
    installed (no daemon needed); and it refuses to go on without a secret."""
    if not has_compose_plugin():
        pytest.skip("no docker compose plugin: deploy/images/install-docker.sh installs it")
    env = {**os.environ, **dict.fromkeys(COMPOSE_SECRETS, "x" * 32)}
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "signing.pem").write_text("")
    argv = ["docker", "compose", "--file", str(ROOT / "compose.yaml")]
    argv += ["--project-directory", str(tmp_path), "config", "--quiet"]
    checked = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    assert checked.returncode == 0, checked.stderr
    del env["REDIS_PASSWORD"]
    refused = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    assert refused.returncode != 0
    assert "set REDIS_PASSWORD" in refused.stderr


def test_compose_requires_its_secrets() -> None:
    text = (ROOT / "compose.yaml").read_text()
    for variable in COMPOSE_SECRETS:
        assert "${" + variable + ":?" in text, variable
        assert not re.search(r"\$\{" + variable + r"(:?-|\})", text), f"{variable} has a default"


def test_compose_redis_keeps_every_job(compose: dict[str, Any]) -> None:
    command = " ".join(compose["services"]["redis"]["command"])
    assert "--appendonly yes" in command
    assert "--appendfsync everysec" in command
    assert "--maxmemory-policy noeviction" in command


def test_compose_workers_and_importer_share_the_exports(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["worker"]["deploy"]["replicas"] == 2
    assert "exports" in compose["volumes"]
    for name in ("worker", "bulk-worker", "importer"):
        exports_dir = services[name]["environment"]["NETSYNC_EXPORTS_DIR"]
        assert volume_mounts(services[name])[exports_dir] == ("exports", False), name
    assert services["worker"]["secrets"] == ["signing_key"]
    users = [n for n, s in services.items() if "signing_key" in s.get("secrets", [])]
    assert users == ["worker", "bulk-worker"]
    trusted = services["importer"]["environment"]["NETSYNC_TRUSTED_KEYS_DIR"]
    assert volume_mounts(services["importer"])[trusted] == ("./keys/trusted", True)
    # sealing: the workers hold whom to seal to, only the importer the key that opens
    for name in ("worker", "bulk-worker"):
        recipients = services[name]["environment"]["NETSYNC_EXPORT_RECIPIENTS_DIR"]
        assert volume_mounts(services[name])[recipients] == ("./keys/recipients", True), name
    opening = services["importer"]["environment"]["NETSYNC_DECRYPTION_KEYS_DIR"]
    assert volume_mounts(services["importer"])[opening] == ("./keys/decryption", True)
    holders = [n for n, s in services.items() if "./keys/decryption" in str(s.get("volumes"))]
    assert holders == ["importer"]
