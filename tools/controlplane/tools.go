//go:build tools

// Package controlplane pins the kube-apiserver and etcd that kubespiffe's tests and demo run.
// Nothing here is built into kubespiffe; `go build` of the two commands below produces the binaries.
package controlplane

import (
	_ "go.etcd.io/etcd/server/v3"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
)
