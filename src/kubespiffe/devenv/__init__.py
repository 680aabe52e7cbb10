"""A local cluster for the demo, the tests and the benchmarks, built from Go modules into ~/.cache.

with ControlPlane("a") as cp: ...        # etcd + kube-apiserver on loopback (no root needed)
kubespiffe dev up --dir DIR              # control plane + kubespiffed, files written to DIR
"""
