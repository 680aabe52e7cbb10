"""Render deploy/helm/kubespiffe with the helm built from tools/helm, and pick objects out of the result."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from kubespiffe.devenv import helm

HERE = Path(__file__).parent
ALL_OPTIONS = HERE / "values-all.yaml"
Obj = dict[str, Any]


def render(*args: str, namespace: str = helm.NAMESPACE) -> list[Obj]:
    """The rendered objects (empty documents dropped)."""
    text = helm.template(*args, namespace=namespace)
    return [doc for doc in yaml.safe_load_all(text) if doc is not None]


def render_all(namespace: str = helm.NAMESPACE) -> list[Obj]:
    """Every option on (tests/chart/values-all.yaml)."""
    return render("-f", str(ALL_OPTIONS), namespace=namespace)


def kinds(objects: Iterable[Obj]) -> list[str]:
    return sorted(obj["kind"] for obj in objects)


def one(objects: Iterable[Obj], kind: str, name: str | None = None) -> Obj:
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def container(objects: Iterable[Obj]) -> Obj:
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    containers: list[Obj] = pod["containers"]
    assert len(containers) == 1
    return containers[0]


def args(objects: Iterable[Obj]) -> list[str]:
    values: list[str] = container(objects)["args"]
    return values
