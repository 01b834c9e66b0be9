"""Offline rendering of ``deploy/k8s``: the few Kustomize features the tree uses, in Python.

The tests must run without a ``kustomize`` or ``kubectl`` binary, so this renders a Kustomization
the way Kustomize does for what ``deploy/k8s`` uses (resources, namespace, images, strategic merge
patches) and refuses any other field rather than render it wrongly. Where ``kubectl`` exists,
``tests/deploy/test_deploy_k8s.py`` checks that both render the same objects.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

Resource = dict[str, Any]

SUPPORTED = frozenset({"apiVersion", "kind", "resources", "namespace", "images", "patches"})
CLUSTER_SCOPED = frozenset({"Namespace", "PersistentVolume", "StorageClass", "ClusterRole"})
# Lists that strategic merge patches merge item by item, and the field that identifies an item.
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "ports": "containerPort",
}


def load_documents(path: Path) -> list[Resource]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def key(resource: Resource) -> tuple[str, str]:
    return resource["kind"], resource["metadata"]["name"]


def render(directory: Path) -> list[Resource]:
    """The objects ``kubectl kustomize directory`` would print, in file order."""
    kustomization: dict[str, Any] = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unsupported = set(kustomization) - SUPPORTED
    if unsupported:
        raise NotImplementedError(f"{directory}: cannot render {sorted(unsupported)}")
    resources: list[Resource] = []
    for entry in kustomization.get("resources", []):
        path = directory / entry
        resources.extend(render(path) if path.is_dir() else load_documents(path))
    by_key = {key(r): i for i, r in enumerate(resources)}
    for patch_entry in kustomization.get("patches", []):
        if set(patch_entry) != {"path"}:
            raise NotImplementedError(f"{directory}: only file patches are rendered")
        for patch in load_documents(directory / patch_entry["path"]):
            index = by_key[key(patch)]
            resources[index] = merge(resources[index], patch)
    for image in kustomization.get("images", []):
        for container in containers(resources):
            if container["image"].split("@")[0].split(":")[0] == image["name"]:
                name = image.get("newName", image["name"])
                container["image"] = f"{name}:{image['newTag']}" if "newTag" in image else name
    if "namespace" in kustomization:
        for resource in resources:
            if resource["kind"] not in CLUSTER_SCOPED:
                resource["metadata"]["namespace"] = kustomization["namespace"]
    return resources


def merge(base: Any, patch: Any, field: str | None = None) -> Any:
    """A strategic merge patch: maps merge, keyed lists merge by item, anything else replaces."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for name, value in patch.items():
            if value is None:
                merged.pop(name, None)
            else:
                merged[name] = merge(base[name], value, name) if name in base else value
        return merged
    item_key = MERGE_KEYS.get(field or "")
    if isinstance(base, list) and isinstance(patch, list) and item_key is not None:
        merged_list = list(base)
        for item in patch:
            match = [i for i, old in enumerate(merged_list) if old.get(item_key) == item[item_key]]
            if match:
                merged_list[match[0]] = merge(merged_list[match[0]], item)
            else:
                merged_list.append(item)
        return merged_list
    return patch


def pod_spec(resource: Resource) -> dict[str, Any] | None:
    if resource["kind"] in {"Deployment", "Job", "StatefulSet", "DaemonSet"}:
        spec: dict[str, Any] = resource["spec"]["template"]["spec"]
        return spec
    return None


def containers(resources: list[Resource], *, init: bool = True) -> Iterator[dict[str, Any]]:
    for resource in resources:
        spec = pod_spec(resource)
        if spec is not None:
            yield from spec["containers"]
            if init:
                yield from spec.get("initContainers", [])
