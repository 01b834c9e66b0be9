"""The deployment artefacts, checked offline: the image, compose.yaml and the Kubernetes tree.

No container engine or cluster is needed. Kubernetes objects are rendered in Python
(``tests/manifests.py``) and validated against the bundled Kubernetes schemas; compose.yaml is
read with PyYAML and held to the properties that keep the system safe to run (and, where the
``docker compose`` plugin exists, linted by it as well).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from packaging.requirements import Requirement
from pydantic_settings import BaseSettings

from app.config import ResponseSettings
from deploy import runtime_requirements
from importer.config import RequestSettings
from jobs.bulk import bulk_worker_settings
from jobs.periodic import PERIODIC_JOBS, ScheduleSettings
from jobs.worker import worker_settings
from netsync import devstack
from tests.manifests import Resource, containers, key, pod_spec, render

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
]
# Every process of the design card, and the one-shot commands that prepare the databases.
PROCESSES = [
    "uvicorn app.main:app",
    "arq jobs.WorkerSettings",
    "arq jobs.BulkWorkerSettings",
    "python -m importer",
    "uvicorn importer.api:app",
    "python -m netsync.migrate",
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
# What the daemons must bind in a container, so that the kubelet and Prometheus reach them.
ALL_INTERFACES = "0.0.0.0"  # noqa: S104


# -- Kubernetes ---------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=sorted(TREES))
def rendered(request: pytest.FixtureRequest) -> list[Resource]:
    return render(TREES[request.param])


def of_kind(resources: list[Resource], kind: str) -> list[Resource]:
    return [r for r in resources if r["kind"] == kind]


def deployment(resources: list[Resource], component: str) -> Resource:
    (found,) = [
        r
        for r in of_kind(resources, "Deployment")
        if r["metadata"]["labels"]["app.kubernetes.io/component"] == component
    ]
    return found


def test_every_object_passes_the_kubernetes_schema(rendered: list[Resource]) -> None:
    assert rendered
    for resource in rendered:
        try:
            kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{key(resource)} at {where}: {exc.message}")


def test_python_rendering_matches_kubectl_kustomize() -> None:
    """Keeps ``tests/manifests.py`` honest: it must render exactly what Kustomize renders."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed; the Python rendering is checked without it")
    for tree in TREES.values():
        out = subprocess.run(
            [kubectl, "kustomize", str(tree)], capture_output=True, text=True, check=True
        ).stdout
        theirs = {key(r): r for r in yaml.safe_load_all(out) if r}
        ours = {key(r): r for r in render(tree)}
        assert ours == theirs


def test_every_container_has_probes_and_bounded_resources(rendered: list[Resource]) -> None:
    for container in containers(rendered):
        resources = container["resources"]
        for bound in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(resources[bound]), (container["name"], bound)
    # A Job's containers run to completion: probes (forbidden on init containers) mean nothing.
    for resource in of_kind(rendered, "Deployment"):
        for container in resource["spec"]["template"]["spec"]["containers"]:
            assert "livenessProbe" in container, container["name"]
            assert "readinessProbe" in container, container["name"]


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


def test_probes_use_what_each_process_offers(rendered: list[Resource]) -> None:
    for name in ("response-api", "request-api"):
        api = only_container(deployment(rendered, name))
        assert api["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
        assert api["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}


def test_every_daemon_is_probed_over_http_on_its_metrics_port(rendered: list[Resource]) -> None:
    for name in DAEMON_PORTS:
        container = only_container(deployment(rendered, name))
        env = plain_env(rendered, container)
        # The kubelet probes from outside the pod's loopback: 127.0.0.1 would fail every probe.
        assert env["NETSYNC_METRICS_HOST"] == ALL_INTERFACES, name
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        for probe, path in (("livenessProbe", "/health"), ("readinessProbe", "/ready")):
            assert set(container[probe]) & {"exec", "tcpSocket", "grpc"} == set(), (name, probe)
            assert container[probe]["httpGet"]["path"] == path, (name, probe)
            assert ports[container[probe]["httpGet"]["port"]] == daemon_port(name, env), name


def test_every_pod_is_scraped_where_it_serves_metrics(rendered: list[Resource]) -> None:
    for resource in of_kind(rendered, "Deployment"):
        annotations = resource["spec"]["template"]["metadata"]["annotations"]
        name = component(resource)
        assert annotations["prometheus.io/scrape"] == "true", name
        assert annotations["prometheus.io/path"] == "/metrics", name
        container = only_container(resource)
        ports = {p["containerPort"]: p["name"] for p in container["ports"]}
        scraped = int(annotations["prometheus.io/port"])
        # The port scraped is the port the kubelet finds alive: /metrics is served beside /health.
        assert ports[scraped] == container["livenessProbe"]["httpGet"]["port"], name


def test_pods_run_unprivileged_as_the_image_user(rendered: list[Resource]) -> None:
    uid = int(dockerfile_final_stage_user())
    for resource in rendered:
        spec = pod_spec(resource)
        if spec is None:
            continue
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] == uid
        assert spec["automountServiceAccountToken"] is False
    for container in containers(rendered):
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] is True, container["name"]
        assert security["allowPrivilegeEscalation"] is False, container["name"]
        assert security["capabilities"]["drop"] == ["ALL"], container["name"]


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


def test_sync_and_bulk_workers_are_separate_deployments(rendered: list[Resource]) -> None:
    for name, target in WORKERS.items():
        assert only_container(deployment(rendered, name))["command"] == ["arq", target]
    # The exports' ten-minute timeouts stay out of the sync worker (arq's recovery of a killed
    # password job waits for the longest timeout registered in its worker).
    assert longest_job_timeout(arq_settings("jobs.WorkerSettings")) >= 120
    assert longest_job_timeout(arq_settings("jobs.BulkWorkerSettings")) >= 600


def test_workers_scale_out_and_outlive_their_jobs(rendered: list[Resource]) -> None:
    for name, target in WORKERS.items():
        worker = deployment(rendered, name)
        assert worker["spec"]["replicas"] >= 2, name
        grace = worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert grace > longest_shutdown(target), name
    worker = deployment(rendered, "worker")
    ref = {"apiVersion": "apps/v1", "kind": "Deployment", "name": worker["metadata"]["name"]}
    (hpa,) = [
        h
        for h in of_kind(rendered, "HorizontalPodAutoscaler")
        if h["spec"]["scaleTargetRef"] == ref
    ]
    assert hpa["apiVersion"] == "autoscaling/v2"
    # An apply never scales an autoscaled Deployment below what its autoscaler keeps.
    scaled = {d["metadata"]["name"]: d for d in of_kind(rendered, "Deployment")}
    for autoscaler in of_kind(rendered, "HorizontalPodAutoscaler"):
        target_name = autoscaler["spec"]["scaleTargetRef"]["name"]
        assert autoscaler["spec"]["minReplicas"] == scaled[target_name]["spec"]["replicas"]


def test_every_deployment_has_a_disruption_budget(rendered: list[Resource]) -> None:
    budgets = of_kind(rendered, "PodDisruptionBudget")
    for resource in of_kind(rendered, "Deployment"):
        labels = resource["spec"]["template"]["metadata"]["labels"]
        covering = [
            b for b in budgets if b["spec"]["selector"]["matchLabels"].items() <= labels.items()
        ]
        assert len(covering) == 1, resource["metadata"]["name"]


def test_each_network_migrates_its_own_database(rendered: list[Resource]) -> None:
    jobs = {component(j): j["spec"]["template"]["spec"] for j in of_kind(rendered, "Job")}
    steps = {
        name: [c["command"] for c in spec.get("initContainers", []) + spec["containers"]]
        for name, spec in jobs.items()
    }
    assert steps == {
        "migrate-response": [
            ["python", "-m", "netsync.migrate", "response"],
            ["python", "-m", "app.bootstrap"],
        ],
        "migrate-request": [["python", "-m", "netsync.migrate", "request"]],
    }


def pods(resources: list[Resource]) -> Iterator[tuple[str, list[dict[str, Any]], Resource]]:
    """(component, every container, the resource) of each object that runs pods."""
    for resource in resources:
        spec = pod_spec(resource)
        if spec is not None:
            yield component(resource), spec["containers"] + spec.get("initContainers", []), spec


def test_each_network_reads_only_its_own_secrets_and_settings(rendered: list[Resource]) -> None:
    allowed = {
        "response": ({"netsync-response", "netsync-signing-key"}, {"netsync-response-config"}),
        "request": ({"netsync-request", "netsync-trusted-keys"}, {"netsync-request-config"}),
    }
    request_secret_readers = set()
    for name, pod_containers, spec in pods(rendered):
        assert name in RESPONSE_SIDE | REQUEST_SIDE, f"{name}: place it on one network"
        side = "response" if name in RESPONSE_SIDE else "request"
        secrets = {v["secret"]["secretName"] for v in spec.get("volumes", []) if "secret" in v}
        config_maps = set()
        for container in pod_containers:
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    secrets.add(ref["name"])
                if side == "response":
                    assert not env["name"].startswith("NETSYNC_REQUEST_"), (name, env["name"])
                else:
                    assert env["name"] not in RESPONSE_ONLY_VARIABLES, (name, env["name"])
                if env["name"] == "NETSYNC_REQUEST_SECRET_KEY":
                    request_secret_readers.add(name)
                    assert ref == {"name": "netsync-request", "key": "secret-key"}, name
            for source in container.get("envFrom", []):
                assert "secretRef" not in source, name  # every secret is named, key by key
                config_maps.add(source["configMapRef"]["name"])
        assert secrets <= allowed[side][0], (name, secrets)
        assert config_maps <= allowed[side][1], (name, config_maps)
    assert request_secret_readers == {"request-api"}


def test_config_maps_hold_settings_the_processes_read(rendered: list[Resource]) -> None:
    """A misspelt variable would be ignored silently (the settings ignore unknown names)."""
    readers: dict[str, list[type[Any]]] = {
        "netsync-response-config": [ResponseSettings, ScheduleSettings],
        "netsync-request-config": [RequestSettings],
    }
    maps = {c["metadata"]["name"]: c["data"] for c in of_kind(rendered, "ConfigMap")}
    assert set(maps) == set(readers)
    for name, data in maps.items():
        fields = {f"NETSYNC_{f.upper()}" for cls in readers[name] for f in cls.model_fields}
        assert set(data) <= fields, (name, set(data) - fields)
        values = {k.removeprefix("NETSYNC_").lower(): v for k, v in data.items()}
        for cls in readers[name]:
            cls(_env_file=None, **values)  # every value has the field's type
    schedule = ScheduleSettings(
        _env_file=None,
        **{
            k.removeprefix("NETSYNC_").lower(): v
            for k, v in maps["netsync-response-config"].items()
        },
    )
    for job in PERIODIC_JOBS:
        assert f"NETSYNC_SCHEDULE_{job.name.upper()}" in maps["netsync-response-config"], job.name
        schedule.fields(job.name)  # parses, or raises


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


def test_secrets_are_referenced_never_inlined(rendered: list[Resource]) -> None:
    for secret in of_kind(rendered, "Secret"):
        assert not secret.get("data"), key(secret)
        assert not secret.get("stringData"), key(secret)
    for config_map in of_kind(rendered, "ConfigMap"):
        assert not [k for k in config_map["data"] if SECRET_NAME.search(k)], key(config_map)
    for container in containers(rendered):
        for env in container.get("env", []):
            if SECRET_NAME.search(env["name"]):
                assert "secretKeyRef" in env.get("valueFrom", {}), env["name"]
    # The Secrets are created outside the tree: the deployment guide must say how, key by key.
    guide = (ROOT / "docs" / "deploy.md").read_text()
    for name, secret_key in secret_references(rendered):
        assert name in guide, name
        assert secret_key == "*" or f"--from-literal={secret_key}=" in guide, (name, secret_key)


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


def test_exports_volume_is_shared_read_write(rendered: list[Resource]) -> None:
    (claim,) = of_kind(rendered, "PersistentVolumeClaim")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    users = {"worker", "bulk-worker", "importer"}
    assert volume_users(rendered, claim["metadata"]["name"]) == users
    config = {c["metadata"]["name"]: c["data"] for c in of_kind(rendered, "ConfigMap")}
    for name in sorted(users):
        container = only_container(deployment(rendered, name))
        (source,) = container["envFrom"]
        exports_dir = config[source["configMapRef"]["name"]]["NETSYNC_EXPORTS_DIR"]
        (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == exports_dir]
        assert not mount.get("readOnly", False)


def test_private_key_on_the_signing_side_public_keys_on_the_importing_side(
    rendered: list[Resource],
) -> None:
    assert volume_users(rendered, "netsync-signing-key") == {"worker", "bulk-worker"}
    assert volume_users(rendered, "netsync-trusted-keys") == {"importer"}


# -- compose.yaml -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    model: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return model


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
    assert "python -m netsync.migrate response && python -m app.bootstrap" in migrate
    assert services["migrate-request"]["command"] == ["python", "-m", "netsync.migrate", "request"]


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


def health_url(service: dict[str, Any]) -> str:
    """The URL a compose healthcheck's ``python -c`` one-liner opens (the image has no curl)."""
    test = service["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"], test
    (url,) = re.findall(r"urlopen\('([^']+)'", test[3])
    return str(url)


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


def seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+)(s|m)", duration)
    assert match, duration
    return float(match[1]) * (60 if match[2] == "m" else 1)


def test_compose_runs_both_workers_twice_and_lets_them_finish(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, target in WORKERS.items():
        assert services[name]["command"] == ["arq", target]
        assert services[name]["deploy"]["replicas"] >= 2, name
        assert seconds(services[name]["stop_grace_period"]) > longest_shutdown(target), name


def test_compose_passes_the_schedule_on_with_the_code_defaults(compose: dict[str, Any]) -> None:
    """compose passes every schedule variable through, with the defaults the code has."""
    env = compose["services"]["bulk-worker"]["environment"]
    for job in PERIODIC_JOBS:
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
        assert service["cap_drop"] == ["ALL"], name


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


# -- the image ----------------------------------------------------------------------------------


def dockerfile_stages() -> list[list[str]]:
    """The Dockerfile's instructions (continuations joined, comments dropped), by stage."""
    text = (ROOT / "Dockerfile").read_text()
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    joined = "\n".join(lines).replace("\\\n", " ").splitlines()
    stages: list[list[str]] = []
    for instruction in (" ".join(ln.split()) for ln in joined if ln.strip()):
        if instruction.startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(instruction)
    return stages


def dockerfile_final_stage_user() -> str:
    users = [i.split()[1] for i in dockerfile_stages()[-1] if i.startswith("USER ")]
    return users[-1].split(":")[0]


def test_image_is_multi_stage_non_root_and_hash_checked() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in text
    stages = dockerfile_stages()
    assert len(stages) >= 2
    assert dockerfile_final_stage_user() not in {"root", "0"}
    build = " ".join(stages[0])
    assert "pip install --require-hashes -r runtime.lock" in build
    assert "pip install --no-deps --no-build-isolation ." in build
    assert any(i.startswith("COPY --from=") for i in stages[-1])


def test_build_context_holds_what_the_image_copies_and_no_keys() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    rules = [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]
    assert rules[0] == "**"  # nothing enters the context unless listed
    included = {rule[1:].rstrip("/") for rule in rules if rule.startswith("!")}
    for instruction in dockerfile_stages()[0]:
        if instruction.startswith("COPY ") and "--from=" not in instruction:
            for source in instruction.split()[1:-1]:
                assert source.rstrip("*") in included, source
    assert not {"keys", ".env"} & included


def test_runtime_selection_of_the_lock_is_complete_and_lean() -> None:
    """Every package a runtime package needs is selected (pip would refuse the build
    otherwise), and the test and lint tools stay out of the image."""
    lock = runtime_requirements.parse_lock((ROOT / "requirements.lock").read_text())
    roots = runtime_requirements.runtime_roots((ROOT / "pyproject.toml").read_text())
    selected = {e.name for e in runtime_requirements.select(lock, roots)}
    assert not selected & {"pytest", "mypy", "ruff", "playwright", "hypothesis", "schemathesis"}
    pending = [Requirement("netsync")]  # the project itself, without its dev extra
    seen: set[tuple[str, frozenset[str]]] = set()
    while pending:
        requirement = pending.pop()
        name = runtime_requirements.normalize(requirement.name)
        if (name, frozenset(requirement.extras)) in seen:
            continue
        seen.add((name, frozenset(requirement.extras)))
        assert name in selected or name == "netsync", requirement
        for dependency in map(Requirement, importlib.metadata.requires(name) or []):
            extras = {"", *requirement.extras}
            if dependency.marker is None or any(
                dependency.marker.evaluate({"extra": e}) for e in extras
            ):
                pending.append(dependency)


def commands() -> list[list[str]]:
    """Every command the image is run with, in compose.yaml, Kubernetes and the Dockerfile."""
    found: list[list[str]] = []
    compose: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    for service in app_services(compose).values():
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


def test_every_command_names_a_module_that_exists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NETSYNC_REDIS_URL", "redis://127.0.0.1:1/0")  # WorkerSettings reads it
    seen = set()
    for argv in commands():
        program, target = (argv[0], argv[2]) if argv[:2] == ["python", "-m"] else argv[:2]
        seen.add(f"{argv[0]} -m {target}" if program == "python" else f"{program} {target}")
        if program == "python":
            spec = importlib.util.find_spec(target)
            assert spec is not None, target
            if target == "netsync.migrate":  # one database, or both
                assert argv[3:] in ([], ["response"], ["request"]), argv
            if spec.submodule_search_locations is not None:  # a package runs its __main__
                assert importlib.util.find_spec(f"{target}.__main__") is not None, target
        elif program == "uvicorn":
            module, attribute = target.split(":")
            assert hasattr(importlib.import_module(module), attribute), target
        else:
            assert program == "arq", argv
            module, attribute = target.rsplit(".", 1)
            assert "functions" in getattr(importlib.import_module(module), attribute)
    assert set(PROCESSES) <= seen


def process_name(argv: list[str]) -> str:
    """``uvicorn app.main:app``, ``arq jobs.WorkerSettings`` or ``python -m importer``."""
    if argv[1] == "-m":  # ``python -m``, whichever interpreter
        return f"python -m {argv[2]}"
    return f"{argv[0]} {argv[1]}"


def test_every_process_of_the_dev_stack_is_deployed() -> None:
    """``./run up`` runs the system's long-running processes; compose and each Kubernetes tree
    must run the same ones (a process added to the code and not to the deployment fails here)."""
    dev = set()
    for proc in devstack.processes("127.0.0.1", 8000, 8001):
        module, *args = proc.argv[2:]  # devstack runs ``<python> -m <module> …``
        dev.add(process_name([module, *args] if module in {"uvicorn", "arq"} else proc.argv))
    compose: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = set(app_services(compose)) - MIGRATIONS
    assert {process_name(compose["services"][n]["command"]) for n in services} == dev
    for tree in TREES.values():
        deployed = of_kind(render(tree), "Deployment")
        assert {process_name(only_container(d)["command"]) for d in deployed} == dev, tree
