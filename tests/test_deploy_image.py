"""The image and the commands it runs: a multi-stage, non-root, hash-checked build of the
runtime part of the lock, and every command in compose, Kubernetes and the Dockerfile naming a
module that exists, the same set of processes that ``./run up`` runs.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util

import pytest
from packaging.requirements import Requirement

from deploy import runtime_requirements
from netsync import devstack
from tests.deployment import (
    MIGRATIONS,
    PROCESSES,
    ROOT,
    TREES,
    app_services,
    commands,
    compose_model,
    dockerfile_final_stage_user,
    dockerfile_stages,
    of_kind,
    only_container,
    process_name,
)
from tests.manifests import render


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


def test_every_process_of_the_dev_stack_is_deployed() -> None:
    """``./run up`` runs the system's long-running processes; compose and each Kubernetes tree
    must run the same ones (a process added to the code and not to the deployment fails here)."""
    dev = set()
    for proc in devstack.processes("127.0.0.1", 8000, 8001):
        module, *args = proc.argv[2:]  # devstack runs ``<python> -m <module> …``
        dev.add(process_name([module, *args] if module in {"uvicorn", "arq"} else proc.argv))
    compose = compose_model()
    services = set(app_services(compose)) - MIGRATIONS
    assert {process_name(compose["services"][n]["command"]) for n in services} == dev
    for tree in TREES.values():
        deployed = of_kind(render(tree), "Deployment")
        assert {process_name(only_container(d)["command"]) for d in deployed} == dev, tree
