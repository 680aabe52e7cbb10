"""Kubernetes plumbing, independent of SPIFFE: client setup, a generic list+watch cache (paged relists),
PodView (the fields of a Pod kubespiffed caches), leader election on a Lease, and Warning Events.

    client = make_client(load_config(kubeconfig)); cache = WatchCache(client, PodView); await cache.run()
"""
