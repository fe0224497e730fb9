"""Render a kustomization in Python: the subset cluster/ uses (resources, namespace, JSON 6902
patches with a target, images). CI machines may have no kustomize binary; where `kubectl` is
installed, tests/ops/test_manifests.py checks this renders exactly what `kubectl kustomize` does.
"""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

SUPPORTED = {"apiVersion", "kind", "resources", "namespace", "patches", "images"}


def render(directory: str | Path) -> list[dict]:
    directory = Path(directory)
    kfile = directory / "kustomization.yaml"
    spec = yaml.safe_load(kfile.read_text())
    unknown = set(spec) - SUPPORTED
    if unknown:
        raise NotImplementedError(f"{kfile}: this renderer does not support {sorted(unknown)}")
    docs: list[dict] = []
    for entry in spec.get("resources", []):
        path = directory / entry
        if path.is_dir():
            docs += render(path)
        else:
            docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    for patch in spec.get("patches", []):
        ops = yaml.safe_load(patch["patch"]) if "patch" in patch else yaml.safe_load((directory / patch["path"]).read_text())
        if not isinstance(ops, list):
            raise NotImplementedError(f"{kfile}: only JSON 6902 patches (a list of ops) are supported")
        matched = [d for d in docs if _matches(d, patch.get("target", {}))]
        if not matched:
            raise ValueError(f"{kfile}: patch target {patch.get('target')} matches no resource")
        for doc in matched:
            for op in ops:
                _apply(doc, op)
    if "namespace" in spec:
        for doc in docs:
            doc.setdefault("metadata", {})["namespace"] = spec["namespace"]
    for image in spec.get("images", []):
        for doc in docs:
            _set_images(doc, image)
    return docs


def _matches(doc: dict, target: dict) -> bool:
    group, _, version = doc.get("apiVersion", "").rpartition("/")
    checks = {"group": group, "version": version, "kind": doc.get("kind"), "name": doc.get("metadata", {}).get("name")}
    return all(checks[k] == v for k, v in target.items())


def _pointer(path: str) -> list[str]:
    return [p.replace("~1", "/").replace("~0", "~") for p in path.lstrip("/").split("/")]


def _apply(doc: dict, op: dict) -> None:
    *parents, last = _pointer(op["path"])
    node = doc
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    kind = op["op"]
    if kind in ("replace", "add"):
        value = copy.deepcopy(op["value"])
        if isinstance(node, list):
            if last == "-":
                node.append(value)
            elif kind == "add":
                node.insert(int(last), value)
            else:
                node[int(last)] = value
        else:
            if kind == "replace" and last not in node:
                raise KeyError(f"replace {op['path']}: no such field")
            node[last] = value
    elif kind == "remove":
        del node[int(last) if isinstance(node, list) else last]
    else:
        raise NotImplementedError(f"JSON 6902 op {kind!r}")


def _set_images(node, image: dict) -> None:
    """kustomize's image transformer: any container (or initContainer) whose image is `name[:tag]`."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                for c in value:
                    name = str(c.get("image", ""))
                    if name == image["name"] or name.startswith(image["name"] + ":") or name.startswith(image["name"] + "@"):
                        tag = image.get("newTag") or (name.split(":", 1)[1] if ":" in name else None)
                        c["image"] = image.get("newName", image["name"]) + (f":{tag}" if tag else "")
            _set_images(value, image)
    elif isinstance(node, list):
        for item in node:
            _set_images(item, image)
