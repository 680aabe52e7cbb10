"""kubespiffe: SPIFFE workload identity for Kubernetes from one Deployment."""

__version__ = "0.1.0"
