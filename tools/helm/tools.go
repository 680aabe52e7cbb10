//go:build tools

// Package helm pins the helm that kubespiffe's chart tests run (`helm lint`, `helm template`).
// Nothing here is built into kubespiffe; `go build helm.sh/helm/v4/cmd/helm` produces the binary.
package helm

import (
	_ "helm.sh/helm/v4/cmd/helm"
)
