"""Registrations: CRD models, matching pods to registrations, ID templates and the tenancy rule."""
