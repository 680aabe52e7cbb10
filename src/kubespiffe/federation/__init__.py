"""SPIFFE federation: fetching other trust domains' bundles from their bundle endpoints (checklist E)."""
