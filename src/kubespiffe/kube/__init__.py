"""Kubernetes plumbing: client setup and a generic list+watch cache."""
