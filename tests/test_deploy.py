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
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from packaging.requirements import Requirement

from app.config import ResponseSettings
from deploy import runtime_requirements
from jobs.worker import worker_settings
from tests.manifests import Resource, containers, key, pod_spec, render

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
TREES = {"base": K8S / "base", "production": K8S / "overlays" / "production"}
KUBERNETES_VERSION = "1.30"
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|DATABASE_URL|REDIS_URL|PRIVATE")
COMPOSE_SECRETS = [
    "NETSYNC_SECRET_KEY",
    "NETSYNC_ADMIN_PASSWORD",
    "RESPONSE_DB_PASSWORD",
    "REQUEST_DB_PASSWORD",
]
# Every process of the design card, and the one-shot commands that prepare the databases.
PROCESSES = [
    "uvicorn app.main:app",
    "arq jobs.WorkerSettings",
    "python -m importer",
    "uvicorn importer.api:app",
    "python -m netsync.migrate",
    "python -m app.bootstrap",
]


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


def test_probes_use_what_each_process_offers(rendered: list[Resource]) -> None:
    for component in ("response-api", "request-api"):
        (api,) = deployment(rendered, component)["spec"]["template"]["spec"]["containers"]
        assert api["livenessProbe"]["httpGet"]["path"] == "/health"
        assert api["readinessProbe"]["httpGet"]["path"] == "/ready"
    (worker,) = deployment(rendered, "worker")["spec"]["template"]["spec"]["containers"]
    for probe in ("livenessProbe", "readinessProbe"):
        assert worker[probe]["exec"]["command"] == ["arq", "--check", "jobs.WorkerSettings"]
    (importer,) = deployment(rendered, "importer")["spec"]["template"]["spec"]["containers"]
    assert "exec" in importer["livenessProbe"]
    assert "exec" in importer["readinessProbe"]


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


def longest_job_timeout() -> float:
    settings = worker_settings(
        ResponseSettings(_env_file=None, env="test", redis_url="redis://127.0.0.1:1/0")
    )
    timeouts = [f.timeout_s for f in settings["functions"]]
    timeouts += [c.timeout_s for c in settings["cron_jobs"]]
    return float(max(t if t is not None else settings["job_timeout"] for t in timeouts))


def test_workers_scale_out_and_outlive_their_jobs(rendered: list[Resource]) -> None:
    worker = deployment(rendered, "worker")
    assert worker["spec"]["replicas"] >= 2
    target = {"apiVersion": "apps/v1", "kind": "Deployment", "name": worker["metadata"]["name"]}
    (hpa,) = [
        h
        for h in of_kind(rendered, "HorizontalPodAutoscaler")
        if h["spec"]["scaleTargetRef"] == target
    ]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["minReplicas"] == worker["spec"]["replicas"]  # an apply never scales down
    grace = worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > longest_job_timeout() >= 120


def test_every_deployment_has_a_disruption_budget(rendered: list[Resource]) -> None:
    budgets = of_kind(rendered, "PodDisruptionBudget")
    for resource in of_kind(rendered, "Deployment"):
        labels = resource["spec"]["template"]["metadata"]["labels"]
        covering = [
            b for b in budgets if b["spec"]["selector"]["matchLabels"].items() <= labels.items()
        ]
        assert len(covering) == 1, resource["metadata"]["name"]


def test_a_job_migrates_then_creates_the_admin(rendered: list[Resource]) -> None:
    (job,) = of_kind(rendered, "Job")
    spec = job["spec"]["template"]["spec"]
    steps = [c["command"] for c in spec["initContainers"] + spec["containers"]]
    assert steps == [["python", "-m", "netsync.migrate"], ["python", "-m", "app.bootstrap"]]


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
    assert volume_users(rendered, claim["metadata"]["name"]) == {"worker", "importer"}
    config = {c["metadata"]["name"]: c["data"] for c in of_kind(rendered, "ConfigMap")}
    for component in ("worker", "importer"):
        (container,) = deployment(rendered, component)["spec"]["template"]["spec"]["containers"]
        (source,) = container["envFrom"]
        exports_dir = config[source["configMapRef"]["name"]]["NETSYNC_EXPORTS_DIR"]
        (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == exports_dir]
        assert not mount.get("readOnly", False)


def test_private_key_on_the_signing_side_public_keys_on_the_importing_side(
    rendered: list[Resource],
) -> None:
    assert volume_users(rendered, "netsync-signing-key") == {"worker"}
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


def test_compose_services_are_checked_and_ordered(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        if name == "migrate":
            assert service["restart"] == "no"
        else:
            assert service["healthcheck"]["test"], name
        for dependency, condition in service.get("depends_on", {}).items():
            assert dependency in services, (name, dependency)
            assert condition["condition"] in {"service_healthy", "service_completed_successfully"}
    for name in set(app_services(compose)) - {"migrate"}:
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
    migrate = " ".join(services["migrate"]["command"])
    assert "python -m netsync.migrate && python -m app.bootstrap" in migrate


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
    for name in ("worker", "importer"):
        exports_dir = services[name]["environment"]["NETSYNC_EXPORTS_DIR"]
        assert volume_mounts(services[name])[exports_dir] == ("exports", False), name
    assert services["worker"]["secrets"] == ["signing_key"]
    users = [n for n, s in services.items() if "signing_key" in s.get("secrets", [])]
    assert users == ["worker"]
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
