"""Which module holds each fuzz target. Imports nothing from kubespiffe, so the runner can import this
first and then import the target's module under atheris' instrumentation."""

from __future__ import annotations

import importlib
from pathlib import Path

from tests.fuzz.common import Target

CORPUS = Path(__file__).parent / "corpus"
"""Committed seeds, tests/fuzz/corpus/<target>/: the unit tests' cases, plus every input that once
crashed a target (named regression-*), so CI replays them all."""

MODULES = {
    "spiffeid": "tests.fuzz.fuzz_spiffe",
    "bundle_json": "tests.fuzz.fuzz_spiffe",
    "bundle_pem": "tests.fuzz.fuzz_spiffe",
    "bundle_der": "tests.fuzz.fuzz_spiffe",
    "x509svid": "tests.fuzz.fuzz_spiffe",
    "oidc": "tests.fuzz.fuzz_spiffe",
    "csr": "tests.fuzz.fuzz_x509",
    "token": "tests.fuzz.fuzz_tokens",
    "token_signed": "tests.fuzz.fuzz_tokens",
    "token_review": "tests.fuzz.fuzz_tokens",
    "jwtsvid": "tests.fuzz.fuzz_tokens",
    "jwtsvid_signed": "tests.fuzz.fuzz_tokens",
    "template_spiffe": "tests.fuzz.fuzz_registry",
    "template_dns": "tests.fuzz.fuzz_registry",
    "registration": "tests.fuzz.fuzz_registry",
    "federation": "tests.fuzz.fuzz_registry",
    "review": "tests.fuzz.fuzz_injection",
    "sds": "tests.fuzz.fuzz_agent",
}

COVERS = {
    "spiffeid": ("kubespiffe.spiffe.spiffeid",),
    "bundle_json": ("kubespiffe.spiffe.bundle",),
    "bundle_pem": ("kubespiffe.spiffe.bundle",),
    "bundle_der": ("kubespiffe.spiffe.bundle",),
    "x509svid": ("kubespiffe.spiffe.x509svid",),
    "oidc": ("kubespiffe.federation.oidc",),
    "csr": ("kubespiffe.authority.x509ca",),
    "token": ("kubespiffe.attestation.token",),
    "token_signed": ("kubespiffe.attestation.token",),
    "token_review": ("kubespiffe.attestation.token",),
    "jwtsvid": ("kubespiffe.spiffe.jwtsvid",),
    "jwtsvid_signed": ("kubespiffe.spiffe.jwtsvid",),
    "template_spiffe": ("kubespiffe.registry.template",),
    "template_dns": ("kubespiffe.registry.template",),
    "registration": ("kubespiffe.registry.models",),
    "federation": ("kubespiffe.registry.federation",),
    "review": ("kubespiffe.injection.review", "kubespiffe.injection.mutate"),
    "sds": ("kubespiffe.agent.sdsresources", "kubespiffe.agent.sdsstream"),
}
"""The modules whose line coverage `python -m tests.fuzz.linecov` reports for each target."""


def load(name: str) -> Target:
    """Import the target's module (and with it the code under test) and return the target."""
    targets: tuple[Target, ...] = importlib.import_module(MODULES[name]).TARGETS
    return next(t for t in targets if t.name == name)


def seeds(name: str) -> list[Path]:
    return sorted((CORPUS / name).iterdir())
