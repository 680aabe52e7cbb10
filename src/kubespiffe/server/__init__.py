"""kubespiffed wiring: the issuer API, TLS, health and metrics, and the daemon entry point."""
