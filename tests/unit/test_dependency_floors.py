"""Dependency floors that keep known vulnerable releases out of an install from pyproject alone."""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def _requirement(name: str) -> Requirement:
    dependencies = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    return next(r for r in map(Requirement, dependencies) if r.name.lower() == name.lower())


def test_pyjwt_floor_excludes_cve_2024_53861() -> None:
    """PyJWT 2.10.0 compared `iss` as a substring (CVE-2024-53861); 2.10.1 fixed it."""
    specifier = _requirement("PyJWT").specifier
    assert not specifier.contains("2.10.0")
    assert specifier.contains("2.10.1")
