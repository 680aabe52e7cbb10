"""Kubernetes plumbing, independent of SPIFFE: client setup, a generic list+watch cache, leader
election on a Lease, and Warning Events.

    client = make_client(load_config(kubeconfig)); cache = WatchCache(client, Pod); await cache.run()
"""
