"""A local control plane (etcd + kube-apiserver built from Go modules) for the demo and the tests."""
