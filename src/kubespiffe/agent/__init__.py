"""The pod side: the issuer API client, SVID files, and (later) the in-pod Workload API server."""
