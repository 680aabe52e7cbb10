"""The packages' dependencies point one way (docs/architecture.md); a new import against it fails here."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "kubespiffe"
BASE = {"errors", "constants", "versioned", "tasks"}
DOMAIN = {"spiffe", "authority", "attestation", "registry", "federation", "injection", "kube"}
# package -> the kubespiffe packages (top-level modules count as packages) it may import
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "constants": set(),
    "versioned": set(),
    "tasks": {"errors"},
    "spiffe": {"errors", "spiffe"},
    "kube": BASE | {"kube"},
    "authority": BASE | {"spiffe", "kube", "authority"},
    "attestation": BASE | {"spiffe", "kube", "attestation"},
    "registry": BASE | {"spiffe", "kube", "registry"},
    "federation": BASE | {"spiffe", "kube", "registry", "federation"},
    "injection": BASE | {"spiffe", "injection"},
    "proto": {"proto"},
    "server": BASE | DOMAIN | {"proto", "server"},
    "agent": BASE | {"spiffe", "proto", "agent"},
    "cli": BASE | DOMAIN | {"proto", "agent", "cli", "devenv"},
    "devenv": BASE | DOMAIN | {"proto", "agent", "server", "devenv"},
}


def _package(path: Path) -> str:
    relative = path.relative_to(SRC)
    return relative.parts[0].removesuffix(".py")


def _imports(path: Path) -> set[str]:
    """kubespiffe packages imported anywhere in the module (lazy imports inside functions included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            parts = name.split(".")
            if parts[0] == "kubespiffe" and len(parts) > 1:
                found.add(parts[1])
    return found


MODULES = sorted(p for p in SRC.rglob("*.py") if p.name != "__init__.py" or p.parent != SRC)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SRC)))
def test_imports_point_one_way(path: Path) -> None:
    package = _package(path)
    assert package in ALLOWED, f"new package {package}: add it to ALLOWED and to docs/architecture.md"
    wrong = _imports(path) - ALLOWED[package]
    assert not wrong, f"{path.relative_to(SRC)} ({package}) must not import {sorted(wrong)}"


def test_every_package_says_how_to_use_it() -> None:
    for init in sorted(SRC.glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert doc, f"{init.parent.name}/ has no package docstring"
        assert "later" not in doc.lower(), f"{init.parent.name}/'s docstring promises something 'later'"
