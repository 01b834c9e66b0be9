"""The image and the commands it runs: a multi-stage, non-root, hash-checked build of the
runtime part of the lock (offline from a wheelhouse where a site has no PyPI, with the classic
builder where it has no registry), and every command in compose, Kubernetes and the Dockerfile
naming a module that exists, the same set of processes that ``./run up`` runs.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import re

import pytest
from packaging.requirements import Requirement

from deploy import runtime_requirements
from deploy.images import locks
from ops import devstack
from tests.deployment import (
    MIGRATIONS,
    PROCESSES,
    PUBLIC_PYTHON_IMAGE,
    ROOT,
    TREES,
    app_services,
    commands,
    compose_model,
    dockerfile_args,
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


def test_image_builds_without_a_registry_or_an_index() -> None:
    """The classic builder builds it (BuildKit would fetch a frontend image for a ``syntax``
    line), the build stage may run on an image with build tools, and pip installs from the
    wheelhouse deploy/images/build.sh downloads when PIP_NO_INDEX=1, hash-checked either way."""
    text = (ROOT / "Dockerfile").read_text()
    assert not re.search(r"^#\s*syntax\s*=", text, re.MULTILINE | re.IGNORECASE)
    assert "RUN --mount" not in text
    assert "<<" not in text  # heredocs are BuildKit's
    args = dockerfile_args()
    assert args["PYTHON_IMAGE"] == PUBLIC_PYTHON_IMAGE
    assert args["PYTHON_BUILD_IMAGE"] == "${PYTHON_IMAGE}"
    assert args["PIP_NO_INDEX"] == ""  # unset: the index (PyPI or PIP_INDEX_URL) too
    build, *_, runtime = dockerfile_stages()
    assert build[0] == "FROM ${PYTHON_BUILD_IMAGE} AS build"
    assert runtime[0] == "FROM ${PYTHON_IMAGE} AS runtime"
    steps = " ".join(build)
    assert "COPY deploy/images/wheelhouse /wheels" in steps
    assert (
        "python deploy/images/locks.py image requirements.lock pyproject.toml > runtime.lock"
        in (steps)
    )
    assert "PIP_FIND_LINKS=/wheels pip install --require-hashes -r runtime.lock" in steps
    assert "pip uninstall --yes setuptools pip" in steps  # no installer left in the image
    assert not any("/wheels" in i for i in runtime)


def environment(python: str) -> dict[str, str]:
    """Marker values of a CPython ``python`` on this machine."""
    values = locks.environment()
    values.update(
        python_full_version=python,
        implementation_version=python,
        python_version=".".join(python.split(".")[:2]),
    )
    return values


def test_image_selection_is_the_runtime_one_without_the_embedded_servers() -> None:
    """What the image installs: runtime_requirements.py's selection, every lock entry of each
    selected package (some are pinned once per Python range), without ./run up's embedded
    PostgreSQL and Valkey or what only they pull in, plus the setuptools that builds it."""
    lock = (ROOT / "requirements.lock").read_text()
    pyproject = (ROOT / "pyproject.toml").read_text()
    image = locks.parse(locks.image(lock, pyproject))
    names = {entry.name for entry in image}
    runtime = {
        entry.name
        for entry in runtime_requirements.select(
            runtime_requirements.parse_lock(lock), runtime_requirements.runtime_roots(pyproject)
        )
    }
    assert names <= runtime | locks.BUILD
    assert names >= locks.BUILD
    assert not names & locks.DEVELOPMENT_ONLY
    assert not names & {"psutil", "fasteners", "platformdirs", "valkey"}  # theirs alone
    every = [entry for entry in locks.parse(lock) if entry.name in names]
    assert [e.render() for e in image] == [e.render() for e in every]
    assert all(entry.hashes for entry in image)
    assert [e.requirement for e in image if e.name == "deprecated"] == [
        "deprecated==1.3.1",
        "deprecated==3.0.1",
    ]


@pytest.mark.parametrize("python", ["3.11.2", "3.11.7", "3.12.1", "3.13.0", "3.14.0"])
def test_wheelhouse_selection_is_complete_for_the_images_interpreter(python: str) -> None:
    """``locks.py target``, what build.sh downloads for the interpreter of the Python image:
    one pin per package, no marker left, and every package the project's runtime dependencies
    need on that interpreter (pip refuses an offline hash-checked install missing one)."""
    lock = (ROOT / "requirements.lock").read_text()
    pyproject = (ROOT / "pyproject.toml").read_text()
    values = environment(python)
    target = locks.parse(locks.target(locks.image(lock, pyproject), values))
    pinned = [entry.name for entry in target]
    assert len(pinned) == len(set(pinned))
    assert not any(entry.marker for entry in target)
    assert ("async-timeout" in pinned) == (python < "3.11.3")
    pending = [
        Requirement(r)
        for r in importlib.metadata.requires("netsync") or []
        if runtime_requirements.normalize(Requirement(r).name) not in locks.DEVELOPMENT_ONLY
    ]
    seen: set[str] = set()
    while pending:
        requirement = pending.pop()
        name = runtime_requirements.normalize(requirement.name)
        if requirement.marker is not None and not requirement.marker.evaluate(
            {**values, "extra": ""}
        ):
            continue
        if name in seen:
            continue
        seen.add(name)
        assert name in pinned, (python, requirement)
        try:  # its own requirements, as the version installed here declares them
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue  # another interpreter's alone (async-timeout): the image build checks it
        for extra in ["", *requirement.extras]:
            for dependency in map(Requirement, requires):
                marker = dependency.marker
                if marker is None or marker.evaluate({**values, "extra": extra}):
                    pending.append(dependency)


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
            if target == "ops.migrate":  # one database, or both
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
