//go:build tools

// Package controlplane pins the kube-apiserver and etcd that kubespiffe's tests and demo run, and the node
// components (kubelet, kube-controller-manager, kube-scheduler, kube-proxy) of the local node harness.
// Nothing here is built into kubespiffe; `go build` of the commands below produces the binaries.
package controlplane

import (
	_ "go.etcd.io/etcd/server/v3"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
