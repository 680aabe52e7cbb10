// Command certmanager-controller runs cert-manager's own controllers for CA issuers against a kube-apiserver,
// so kubespiffe's tests can ask a real cert-manager for an intermediate through the CertificateRequest API.
//
// cert-manager's cmd/controller is a Go module of its own that the module proxy does not serve, so this
// program does what its app package does for the controllers it needs (and the CA issuer type they look
// up by name), with the packages of the github.com/cert-manager/cert-manager module: build a controller
// context, construct the registered controllers by name, start the shared informers, run until SIGTERM.
// The certificate logic (the CA issuer, the approver, the Issuer readiness check) is cert-manager's.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"

	"github.com/cert-manager/cert-manager/pkg/controller"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/approver"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/ca"
	_ "github.com/cert-manager/cert-manager/pkg/controller/clusterissuers"
	_ "github.com/cert-manager/cert-manager/pkg/controller/issuers"
	_ "github.com/cert-manager/cert-manager/pkg/issuer/ca"
	logf "github.com/cert-manager/cert-manager/pkg/logs"
)

func main() {
	kubeconfig := flag.String("kubeconfig", "", "kubeconfig of the API server")
	clusterResourceNamespace := flag.String("cluster-resource-namespace", "cert-manager", "namespace of ClusterIssuers' Secrets")
	enabled := flag.String("controllers", "issuers,clusterissuers,certificaterequests-approver,certificaterequests-issuer-ca", "controllers to run")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	ctx = logf.NewContext(ctx, logf.Log, "certmanager-controller")

	factory, err := controller.NewContextFactory(ctx, controller.ContextOptions{
		Kubeconfig:         *kubeconfig,
		KubernetesAPIQPS:   50,
		KubernetesAPIBurst: 100,
		IssuerOptions:      controller.IssuerOptions{ClusterResourceNamespace: *clusterResourceNamespace},
	})
	if err != nil {
		fail(err)
	}
	known := controller.Known()
	var loops []controller.Interface
	for _, name := range strings.Split(*enabled, ",") {
		construct, ok := known[name]
		if !ok {
			names := make([]string, 0, len(known))
			for n := range known {
				names = append(names, n)
			}
			sort.Strings(names)
			fail(fmt.Errorf("unknown controller %q (known: %s)", name, strings.Join(names, ", ")))
		}
		loop, err := construct(factory)
		if err != nil {
			fail(fmt.Errorf("%s: %w", name, err))
		}
		loops = append(loops, loop)
	}
	shared, err := factory.Build()
	if err != nil {
		fail(err)
	}
	shared.SharedInformerFactory.Start(ctx.Done())
	shared.KubeSharedInformerFactory.Start(ctx.Done())
	done := make(chan error, len(loops))
	for _, loop := range loops {
		go func(loop controller.Interface) { done <- loop.Run(2, ctx) }(loop)
	}
	fmt.Println("certmanager-controller running:", *enabled)
	for range loops {
		if err := <-done; err != nil {
			fail(err)
		}
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "certmanager-controller:", err)
	os.Exit(1)
}
