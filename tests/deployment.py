"""What the deployment tests share: the processes of the design card, which network each
component belongs to, and readers for the Kubernetes tree, compose.yaml and the Dockerfile.

Each component (Kubernetes label, compose service) belongs to one network and reads only that
network's settings and Secrets; the constants here are where a new component is placed.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from pydantic_settings import BaseSettings

from app.config import ResponseSettings
from app.scheduling.registry import ScheduleSettings
from importer.config import RequestSettings
from jobs.bulk import bulk_worker_settings
from jobs.worker import worker_settings
from tests.manifests import Resource, containers, pod_spec, render

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
TREES = {"base": K8S / "base", "production": K8S / "overlays" / "production"}
KUBERNETES_VERSION = "1.30"
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|DATABASE_URL|REDIS_URL|PRIVATE")
COMPOSE_SECRETS = [
    "NETSYNC_SECRET_KEY",
    "NETSYNC_REQUEST_SECRET_KEY",
    "NETSYNC_ADMIN_PASSWORD",
    "RESPONSE_DB_PASSWORD",
    "REQUEST_DB_PASSWORD",
    "REDIS_PASSWORD",
]
# Every process of the design card, and the one-shot commands that prepare the databases.
PROCESSES = [
    "uvicorn app.main:app",
    "arq jobs.WorkerSettings",
    "arq jobs.BulkWorkerSettings",
    "python -m importer",
    "uvicorn importer.api:app",
    "python -m ops.migrate",
    "python -m app.bootstrap",
]
# Each component (Kubernetes label, compose service) belongs to one network, and reads only that
# network's settings and Secrets. A new component must be placed on one side here.
RESPONSE_SIDE = frozenset({"response-api", "worker", "bulk-worker", "migrate-response"})
REQUEST_SIDE = frozenset({"importer", "request-api", "migrate-request"})
RESPONSE_ONLY_VARIABLES = frozenset(
    {
        "NETSYNC_RESPONSE_DATABASE_URL",
        "NETSYNC_REDIS_URL",
        "NETSYNC_SECRET_KEY",
        "NETSYNC_ADMIN_PASSWORD",
        "NETSYNC_SIGNING_KEY_FILE",
    }
)
# The daemons serve /health, /ready and /metrics on a port of their own: the settings field.
DAEMON_PORTS: dict[str, tuple[type[BaseSettings], str]] = {
    "worker": (ResponseSettings, "worker_metrics_port"),
    "bulk-worker": (ResponseSettings, "bulk_worker_metrics_port"),
    "importer": (RequestSettings, "importer_metrics_port"),
}
WORKERS = {"worker": "jobs.WorkerSettings", "bulk-worker": "jobs.BulkWorkerSettings"}
# compose.yaml's images: a variable each (deploy/images/build.sh builds them from Debian
# packages), the public image by default.
PUBLIC_PYTHON_IMAGE = "python:3.11-slim-bookworm"
COMPOSE_IMAGES = {
    "response-db": ("NETSYNC_POSTGRES_IMAGE", "postgres:16-alpine"),
    "request-db": ("NETSYNC_POSTGRES_IMAGE", "postgres:16-alpine"),
    "redis": ("NETSYNC_REDIS_IMAGE", "redis:7.2-alpine"),
}
APP_IMAGE = ("NETSYNC_IMAGE", "netsync:local")
# The only ports compose publishes on the host: the two APIs, on the loopback unless told.
PUBLISHED = {"response-api": 8000, "request-api": 8001}
# What the daemons must bind in a container, so that the kubelet and Prometheus reach them.
ALL_INTERFACES = "0.0.0.0"  # noqa: S104


def compose_model() -> dict[str, Any]:
    """compose.yaml as PyYAML reads it."""
    model: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return model


def of_kind(resources: list[Resource], kind: str) -> list[Resource]:
    return [r for r in resources if r["kind"] == kind]


def deployment(resources: list[Resource], component: str) -> Resource:
    (found,) = [
        r
        for r in of_kind(resources, "Deployment")
        if r["metadata"]["labels"]["app.kubernetes.io/component"] == component
    ]
    return found


def component(resource: Resource) -> str:
    label: str = resource["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]
    return label


def only_container(resource: Resource) -> dict[str, Any]:
    (container,) = resource["spec"]["template"]["spec"]["containers"]
    found: dict[str, Any] = container
    return found


def plain_env(resources: list[Resource], container: dict[str, Any]) -> dict[str, str]:
    """The variables a container gets from its ConfigMaps and literal values (not Secrets)."""
    config = {c["metadata"]["name"]: c["data"] for c in of_kind(resources, "ConfigMap")}
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(config[source["configMapRef"]["name"]])
    env.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
    return env


def daemon_port(component: str, env: dict[str, str]) -> int:
    """The port a daemon serves its probes on, as its settings read it from ``env``."""
    settings, field = DAEMON_PORTS[component]
    variable = f"NETSYNC_{field.upper()}"
    return int(env[variable]) if variable in env else int(settings.model_fields[field].default)


def arq_settings(target: str) -> dict[str, Any]:
    """The arq settings ``arq <target>`` runs with, built from defaults (no connection opened)."""
    settings = ResponseSettings(_env_file=None, env="test", redis_url="redis://127.0.0.1:1/0")
    if target == "jobs.BulkWorkerSettings":
        return bulk_worker_settings(settings, ScheduleSettings(_env_file=None, env="test"))
    assert target == "jobs.WorkerSettings"
    return worker_settings(settings)


def longest_job_timeout(settings: dict[str, Any]) -> float:
    timeouts = [f.timeout_s for f in settings["functions"]]
    timeouts += [c.timeout_s for c in settings["cron_jobs"]]
    return float(max(t if t is not None else settings["job_timeout"] for t in timeouts))


def longest_shutdown(target: str) -> float:
    """How long a worker may need on SIGTERM: its running jobs may take their whole timeout
    (and arq waits ``job_completion_wait`` for them before cancelling)."""
    settings = arq_settings(target)
    return max(longest_job_timeout(settings), float(settings["job_completion_wait"]))


def pods(resources: list[Resource]) -> Iterator[tuple[str, list[dict[str, Any]], Resource]]:
    """(component, every container, the resource) of each object that runs pods."""
    for resource in resources:
        spec = pod_spec(resource)
        if spec is not None:
            yield component(resource), spec["containers"] + spec.get("initContainers", []), spec


def secret_references(resources: list[Resource]) -> set[tuple[str, str]]:
    """Every (Secret, key) the pods read, from env and from secret volumes."""
    refs: set[tuple[str, str]] = set()
    for container in containers(resources):
        for env in container.get("env", []):
            ref = env.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                refs.add((ref["name"], ref["key"]))
    for resource in resources:
        spec = pod_spec(resource)
        for volume in spec.get("volumes", []) if spec else []:
            if "secret" in volume:
                refs.add((volume["secret"]["secretName"], "*"))
    return refs


def volume_users(resources: list[Resource], predicate: str) -> set[str]:
    """Names of the Deployments with a volume whose source matches ``predicate``."""
    users = set()
    for resource in of_kind(resources, "Deployment"):
        for volume in resource["spec"]["template"]["spec"].get("volumes", []):
            if predicate in (
                volume.get("persistentVolumeClaim", {}).get("claimName"),
                volume.get("secret", {}).get("secretName"),
            ):
                users.add(resource["metadata"]["labels"]["app.kubernetes.io/component"])
    return users


def app_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in compose["services"].items() if "build" in s}


def volume_mounts(service: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """target -> (source, read-only) of a service's short-syntax volumes."""
    mounts = {}
    for spec in service.get("volumes", []):
        source, target, *mode = spec.split(":")
        mounts[target] = (source, mode == ["ro"])
    return mounts


MIGRATIONS = {"migrate-response", "migrate-request"}


def health_url(service: dict[str, Any]) -> str:
    """The URL a compose healthcheck's ``python -c`` one-liner opens (the image has no curl)."""
    test = service["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"], test
    (url,) = re.findall(r"urlopen\('([^']+)'", test[3])
    return str(url)


def seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+)(s|m)", duration)
    assert match, duration
    return float(match[1]) * (60 if match[2] == "m" else 1)


def dockerfile_instructions() -> list[str]:
    """The Dockerfile's instructions, continuations joined and comments dropped."""
    text = (ROOT / "Dockerfile").read_text()
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    joined = "\n".join(lines).replace("\\\n", " ").splitlines()
    return [" ".join(ln.split()) for ln in joined if ln.strip()]


def dockerfile_stages() -> list[list[str]]:
    """The Dockerfile's instructions by stage."""
    stages: list[list[str]] = []
    for instruction in dockerfile_instructions():
        if instruction.startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(instruction)
    return stages


def dockerfile_args() -> dict[str, str]:
    """Every ``ARG`` of the Dockerfile, before the first stage or in one, with its default."""
    found = {}
    for instruction in dockerfile_instructions():
        if instruction.startswith("ARG "):
            name, _, default = instruction.removeprefix("ARG ").partition("=")
            found[name] = default
    return found


def dockerfile_final_stage_user() -> str:
    users = [i.split()[1] for i in dockerfile_stages()[-1] if i.startswith("USER ")]
    return users[-1].split(":")[0]


def commands() -> list[list[str]]:
    """Every command the image is run with, in compose.yaml, Kubernetes and the Dockerfile."""
    found: list[list[str]] = []
    for service in app_services(compose_model()).values():
        command = service["command"]
        if command[:2] == ["sh", "-c"]:
            found += [shlex.split(part) for part in command[2].split("&&")]
        else:
            found.append(command)
    for tree in TREES.values():
        found += [c["command"] for c in containers(render(tree))]
    cmd = [i for i in dockerfile_stages()[-1] if i.startswith("CMD ")]
    found += [yaml.safe_load(i.removeprefix("CMD ")) for i in cmd]
    return found


def process_name(argv: list[str]) -> str:
    """``uvicorn app.main:app``, ``arq jobs.WorkerSettings`` or ``python -m importer``."""
    if argv[1] == "-m":  # ``python -m``, whichever interpreter
        return f"python -m {argv[2]}"
    return f"{argv[0]} {argv[1]}"
