"""The Kubernetes tree, checked offline: every object rendered in Python (``tests/manifests.py``)
and validated against the bundled Kubernetes schemas, then held to the properties that keep the
system safe to run: probes on each process's own port, bounded resources, unprivileged pods,
workers that outlive their jobs, each network reading only its own Secrets.
"""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from app.config import ResponseSettings
from app.scheduling.registry import BULK, ScheduleSettings
from importer.config import RequestSettings
from tests.deployment import (
    ALL_INTERFACES,
    DAEMON_PORTS,
    KUBERNETES_VERSION,
    REQUEST_SIDE,
    RESPONSE_ONLY_VARIABLES,
    RESPONSE_SIDE,
    ROOT,
    SECRET_NAME,
    TREES,
    WORKERS,
    arq_settings,
    component,
    daemon_port,
    deployment,
    dockerfile_final_stage_user,
    longest_job_timeout,
    longest_shutdown,
    of_kind,
    only_container,
    plain_env,
    pods,
    secret_references,
    volume_users,
)
from tests.manifests import Resource, containers, key, pod_spec, render


@pytest.fixture(scope="module", params=sorted(TREES))
def rendered(request: pytest.FixtureRequest) -> list[Resource]:
    return render(TREES[request.param])


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
            ["python", "-m", "ops.migrate", "response"],
            ["python", "-m", "app.bootstrap"],
        ],
        "migrate-request": [["python", "-m", "ops.migrate", "request"]],
    }


def test_each_network_reads_only_its_own_secrets_and_settings(rendered: list[Resource]) -> None:
    allowed = {
        "response": (
            {"netsync-response", "netsync-signing-key", "netsync-export-recipients"},
            {"netsync-response-config"},
        ),
        "request": (
            {"netsync-request", "netsync-trusted-keys", "netsync-decryption-keys"},
            {"netsync-request-config"},
        ),
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
    for job in BULK:
        assert f"NETSYNC_SCHEDULE_{job.name.upper()}" in maps["netsync-response-config"], job.name
        schedule.fields(job.name)  # parses, or raises


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


def test_exports_volume_is_shared_read_write(rendered: list[Resource]) -> None:
    claims = {c["metadata"]["name"]: c for c in of_kind(rendered, "PersistentVolumeClaim")}
    assert set(claims) == {"netsync-exports", "netsync-importer-state"}
    claim = claims["netsync-exports"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    # the importers' own files are on a volume nobody on the Response side mounts
    assert volume_users(rendered, "netsync-importer-state") == {"importer"}
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
    # sealing: whom to seal to on the writing side, the key that opens on the reading side
    assert volume_users(rendered, "netsync-export-recipients") == {"worker", "bulk-worker"}
    assert volume_users(rendered, "netsync-decryption-keys") == {"importer"}


def test_the_cloudnativepg_example_is_a_synchronous_pair_per_network_and_optional() -> None:
    """The production overlay's CloudNativePG example: one cluster per network, each a primary
    with a synchronous standby (what the failover test shows loses nothing), named as the
    database URLs in its comments expect, and never applied by the overlay itself."""
    examples = TREES["production"] / "examples"
    text = (examples / "cloudnativepg.yaml").read_text()
    clusters = [doc for doc in yaml.safe_load_all(text) if doc]
    assert {c["metadata"]["labels"]["netsync/network"] for c in clusters} == {"response", "request"}
    for cluster in clusters:
        assert (cluster["apiVersion"], cluster["kind"]) == ("postgresql.cnpg.io/v1", "Cluster")
        spec = cluster["spec"]
        assert spec["instances"] >= 2
        assert spec["minSyncReplicas"] >= 1
        assert spec["maxSyncReplicas"] >= spec["minSyncReplicas"]
        assert f"@{cluster['metadata']['name']}-rw:5432/" in text  # the URL that follows it
    for resource in render(TREES["production"]):
        assert resource["kind"] != "Cluster"
    assert "redis+sentinel://" in (examples / "redis-sentinel.md").read_text()
