"""The SPIFFE bundle endpoint's answer (checklist E): this trust domain's bundle as a SPIFFE bundle
document, built from the same bundle set the Workload API hands out.

    route = bundle_endpoint(authority.trust)   # mount at "/" on the bundle endpoint's HTTPS server

Which TLS the endpoint serves (https_spiffe with kubespiffed's own SVID, or https_web with an operator's
certificate) is the server's wiring; what it serves is decided here.
"""

from __future__ import annotations

from collections.abc import Callable

from kubespiffe.spiffe.bundle import BundleSet, bundle_to_json
from kubespiffe.versioned import Versioned

CONTENT_TYPE = "application/json"


def bundle_endpoint(trust: Versioned[BundleSet]) -> Callable[[], tuple[int, bytes, str]]:
    """A GET route: 200 with the current own bundle (x509-svid and jwt-svid keys, sequence, hint)."""

    def route() -> tuple[int, bytes, str]:
        return 200, bundle_to_json(trust.current.own), CONTENT_TYPE

    return route
