#!/usr/bin/env python3
"""Render a kustomize directory (deploy/k8s/overlays/NAME) to YAML, without a kustomize binary.

It implements exactly the kustomize features the project's manifests use, and refuses any other
key, so a manifest can never depend on something this script silently ignores:

- `resources`: YAML files, or directories holding a `kustomization.yaml` (rendered first);
- `patches`: `- path: FILE`, strategic-merge patches that name their target by kind and
  `metadata.name` (maps merge; lists of maps that all have a `name` merge by name, as
  containers, env, volumes and ports do; other lists are replaced; a `null` value deletes a key);
- `labels`: `- pairs: {...}` added to every resource's `metadata.labels` (not to selectors);
- `images`: `- name, newName, newTag` rewriting matching container images.

Usage: python scripts/render_k8s.py deploy/k8s/overlays/aws > aws.yaml
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import yaml

SUPPORTED_KEYS = frozenset({"resources", "patches", "labels", "images"})
Resource = dict[str, Any]


def render(directory: Path) -> list[Resource]:
    """Every resource the kustomization in `directory` produces, in order."""
    kustomization = _load_one(directory / "kustomization.yaml")
    unknown = set(kustomization) - SUPPORTED_KEYS
    if unknown:
        raise ValueError(f"{directory}: kustomization keys this renderer does not implement: {sorted(unknown)}")
    resources: list[Resource] = []
    for entry in kustomization.get("resources", []):
        path = (directory / entry).resolve()
        resources.extend(render(path) if path.is_dir() else _load_all(path))
    for patch_entry in kustomization.get("patches", []):
        if set(patch_entry) != {"path"}:
            raise ValueError(f"{directory}: only `- path: FILE` patches are implemented, got {patch_entry}")
        for patch in _load_all(directory / patch_entry["path"]):
            _apply_patch(resources, patch, directory / patch_entry["path"])
    for label_entry in kustomization.get("labels", []):
        if set(label_entry) != {"pairs"}:
            raise ValueError(f"{directory}: only `- pairs: {{...}}` labels are implemented, got {label_entry}")
        for resource in resources:
            resource.setdefault("metadata", {}).setdefault("labels", {}).update(label_entry["pairs"])
    for image in kustomization.get("images", []):
        _set_image(resources, image)
    _check_unique(resources, directory)
    return resources


def _load_one(path: Path) -> dict[str, Any]:
    document = yaml.safe_load(path.read_text())
    if not isinstance(document, dict):
        raise ValueError(f"{path} is not a YAML mapping")
    return document


def _load_all(path: Path) -> list[Resource]:
    documents = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    for document in documents:
        if not isinstance(document, dict) or "kind" not in document or "metadata" not in document:
            raise ValueError(f"{path}: every document must be a resource with kind and metadata")
    return documents


def _identity(resource: Resource) -> tuple[str, str]:
    return resource["kind"], resource["metadata"]["name"]


def _apply_patch(resources: list[Resource], patch: Resource, source: Path) -> None:
    targets = [r for r in resources if _identity(r) == _identity(patch)]
    if len(targets) != 1:
        raise ValueError(f"{source}: patch {_identity(patch)} matches {len(targets)} resources, not one")
    merged = _merge(targets[0], patch)
    targets[0].clear()
    targets[0].update(merged)


def _merge(base: Any, patch: Any) -> Any:
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = copy.deepcopy(base)
        for key, value in patch.items():
            if value is None:
                merged.pop(key, None)
            elif key in merged:
                merged[key] = _merge(merged[key], value)
            else:
                merged[key] = copy.deepcopy(value)
        return merged
    if isinstance(base, list) and isinstance(patch, list) and _named(base) and _named(patch):
        merged_list = copy.deepcopy(base)
        for item in patch:
            match = next((i for i, existing in enumerate(merged_list) if existing["name"] == item["name"]), None)
            if match is None:
                merged_list.append(copy.deepcopy(item))
            else:
                merged_list[match] = _merge(merged_list[match], item)
        return merged_list
    return copy.deepcopy(patch)


def _named(items: list[Any]) -> bool:
    return bool(items) and all(isinstance(i, dict) and "name" in i for i in items)


def _containers(resource: Resource) -> list[dict[str, Any]]:
    spec = resource.get("spec", {})
    pod = spec.get("template", {}).get("spec") or spec.get("jobTemplate", {}).get("spec", {}).get("template", {}).get(
        "spec", {}
    )
    return [*pod.get("initContainers", []), *pod.get("containers", [])]


def _set_image(resources: list[Resource], image: dict[str, str]) -> None:
    if set(image) - {"name", "newName", "newTag"}:
        raise ValueError(f"images: only name, newName and newTag are implemented, got {image}")
    for resource in resources:
        for container in _containers(resource):
            current = container.get("image", "")
            name = current.split("@", 1)[0].rsplit(":", 1)[0] if ":" in current.split("/")[-1] else current
            if name == image["name"]:
                new = image.get("newName", name)
                container["image"] = f"{new}:{image['newTag']}" if "newTag" in image else new


def _check_unique(resources: list[Resource], directory: Path) -> None:
    seen: set[tuple[str, str]] = set()
    for resource in resources:
        identity = _identity(resource)
        if identity in seen:
            raise ValueError(f"{directory}: {identity} is defined twice")
        seen.add(identity)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    yaml.safe_dump_all(render(Path(argv[1])), sys.stdout, sort_keys=False)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
