// Command spiffe-interop exercises kubespiffe with go-spiffe v2, the reference SPIFFE client library.
// Every subcommand talks to a Workload API (SPIFFE_ENDPOINT_SOCKET or -socket) or a bundle endpoint and
// prints one JSON document on stdout, so Python tests can assert on what a real SPIFFE client saw.
// With -svid-file (and -trust-bundle-file), fetch-files, mtls-server and mtls-client read the SVID and the
// bundle from PEM files instead (what the kubelet writes for a podCertificate and a clusterTrustBundle
// projection), again on every handshake, so rewritten files are picked up.
package main

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/federation"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

func main() {
	if len(os.Args) < 2 {
		fail(errors.New("usage: spiffe-interop fetch-x509|fetch-files|fetch-jwt|validate-jwt|mtls-server|mtls-client|fetch-bundle [flags]"))
	}
	cmd, args := os.Args[1], os.Args[2:]
	flags := flag.NewFlagSet(cmd, flag.ExitOnError)
	socket := flags.String("socket", "", "Workload API address (default: SPIFFE_ENDPOINT_SOCKET)")
	audience := flags.String("audience", "", "JWT audience")
	token := flags.String("token", "", "JWT-SVID to validate")
	listen := flags.String("listen", "127.0.0.1:0", "mtls-server listen address")
	connect := flags.String("connect", "", "mtls-client server address")
	authorize := flags.String("authorize", "", "the exact SPIFFE ID the peer must have (mtls-server: comma-separated, any of them)")
	count := flags.Int("count", 1, "mtls-client: connections to make")
	interval := flags.Duration("interval", time.Second, "mtls-client: pause between connections")
	url := flags.String("url", "", "fetch-bundle: bundle endpoint URL")
	trustDomain := flags.String("trust-domain", "", "fetch-bundle: the endpoint's trust domain")
	endpointID := flags.String("endpoint-id", "", "fetch-bundle: https_spiffe endpoint SPIFFE ID (empty: https_web)")
	bundleFile := flags.String("bundle-file", "", "fetch-bundle: https_spiffe bootstrap bundle (SPIFFE JSON); https_web: CA PEM")
	svidFile := flags.String("svid-file", "", "files mode: PEM key and chain, leaf first (may be one file)")
	trustBundleFile := flags.String("trust-bundle-file", "", "files mode: PEM CA certificates of -trust-domain")
	timeout := flags.Duration("timeout", 30*time.Second, "overall deadline")
	_ = flags.Parse(args)

	var err error
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	var opts []workloadapi.ClientOption
	if *socket != "" {
		opts = append(opts, workloadapi.WithAddr(*socket))
	}

	var files *fileSource
	if *svidFile != "" {
		if files, err = newFileSource(*svidFile, *trustBundleFile, *trustDomain); err != nil {
			fail(err)
		}
	}
	switch cmd {
	case "fetch-x509":
		err = fetchX509(ctx, opts)
	case "fetch-files":
		err = fetchFiles(files)
	case "fetch-jwt":
		err = fetchJWT(ctx, opts, *audience)
	case "validate-jwt":
		err = validateJWT(ctx, opts, *audience, *token)
	case "mtls-server":
		err = mtlsServer(ctx, opts, files, *listen, *authorize)
	case "mtls-client":
		err = mtlsClient(ctx, opts, files, *connect, *authorize, *count, *interval)
	case "fetch-bundle":
		err = fetchBundle(ctx, *url, *trustDomain, *endpointID, *bundleFile)
	default:
		err = fmt.Errorf("unknown subcommand %q", cmd)
	}
	if err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "spiffe-interop:", err)
	os.Exit(1)
}

func emit(v any) {
	out, _ := json.Marshal(v)
	fmt.Println(string(out))
}

type svidOut struct {
	ID       string `json:"id"`
	Hint     string `json:"hint"`
	Chain    int    `json:"chain"`
	NotAfter string `json:"not_after"`
}

func fetchX509(ctx context.Context, opts []workloadapi.ClientOption) error {
	x509Ctx, err := workloadapi.FetchX509Context(ctx, opts...)
	if err != nil {
		return err
	}
	svids := []svidOut{}
	for _, s := range x509Ctx.SVIDs {
		svids = append(svids, svidOut{s.ID.String(), s.Hint, len(s.Certificates), s.Certificates[0].NotAfter.UTC().Format(time.RFC3339)})
	}
	bundles := map[string]int{}
	for _, b := range x509Ctx.Bundles.Bundles() {
		bundles[b.TrustDomain().String()] = len(b.X509Authorities())
	}
	// The default SVID's chain must verify against its own trust domain's bundle, as go-spiffe verifies peers.
	def := x509Ctx.DefaultSVID()
	if _, _, err := x509svid.Verify(def.Certificates, x509Ctx.Bundles); err != nil {
		return fmt.Errorf("default SVID does not verify: %w", err)
	}
	emit(map[string]any{"svids": svids, "bundles": bundles})
	return nil
}

func fetchJWT(ctx context.Context, opts []workloadapi.ClientOption, audience string) error {
	svid, err := workloadapi.FetchJWTSVID(ctx, jwtsvid.Params{Audience: audience}, opts...)
	if err != nil {
		return err
	}
	emit(map[string]any{"id": svid.ID.String(), "token": svid.Marshal(), "audience": svid.Audience, "hint": svid.Hint})
	return nil
}

func validateJWT(ctx context.Context, opts []workloadapi.ClientOption, audience, token string) error {
	bundles, err := workloadapi.FetchJWTBundles(ctx, opts...)
	if err != nil {
		return err
	}
	svid, err := jwtsvid.ParseAndValidate(token, bundles, []string{audience})
	if err != nil {
		return err
	}
	emit(map[string]any{"id": svid.ID.String(), "audience": svid.Audience, "claims": svid.Claims})
	return nil
}

// x509Sources is where mTLS gets its SVID and bundles: the Workload API (an X509Source), or files.
type x509Sources interface {
	x509svid.Source
	x509bundle.Source
}

func openSources(ctx context.Context, opts []workloadapi.ClientOption, files *fileSource) (x509Sources, func(), error) {
	if files != nil {
		return files, func() {}, nil
	}
	source, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(opts...))
	if err != nil {
		return nil, nil, err
	}
	return source, func() { _ = source.Close() }, nil
}

func mtlsServer(ctx context.Context, opts []workloadapi.ClientOption, files *fileSource, listen, authorize string) error {
	var ids []spiffeid.ID
	for _, text := range strings.Split(authorize, ",") {
		id, err := spiffeid.FromString(text)
		if err != nil {
			return err
		}
		ids = append(ids, id)
	}
	source, closeSource, err := openSources(ctx, opts, files)
	if err != nil {
		return err
	}
	defer closeSource()
	server := &http.Server{
		TLSConfig: tlsconfig.MTLSServerConfig(source, source, tlsconfig.AuthorizeOneOf(ids...)),
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			peer, _ := x509svid.IDFromCert(r.TLS.PeerCertificates[0])
			_, _ = fmt.Fprintf(w, "hello %s", peer)
		}),
		ReadHeaderTimeout: 5 * time.Second,
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return err
	}
	emit(map[string]any{"listening": ln.Addr().String()})
	go func() { <-ctx.Done(); _ = server.Close() }()
	if err := server.ServeTLS(ln, "", ""); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

func mtlsClient(ctx context.Context, opts []workloadapi.ClientOption, files *fileSource, connect, authorize string, count int, interval time.Duration) error {
	id, err := spiffeid.FromString(authorize)
	if err != nil {
		return err
	}
	source, closeSource, err := openSources(ctx, opts, files)
	if err != nil {
		return err
	}
	defer closeSource()
	results := []map[string]any{}
	for i := 0; i < count; i++ {
		if i > 0 {
			time.Sleep(interval)
		}
		// A new transport per attempt: every attempt is a new TLS handshake with the current SVID.
		client := &http.Client{Transport: &http.Transport{TLSClientConfig: tlsconfig.MTLSClientConfig(source, source, tlsconfig.AuthorizeID(id))}, Timeout: 5 * time.Second}
		result := map[string]any{"at": time.Now().UTC().Format(time.RFC3339Nano)}
		if svid, err := source.GetX509SVID(); err == nil {
			result["client_svid_serial"] = svid.Certificates[0].SerialNumber.String()
		}
		resp, err := client.Get("https://" + connect + "/")
		if err != nil {
			result["error"] = err.Error()
		} else {
			body, _ := io.ReadAll(resp.Body)
			_ = resp.Body.Close()
			result["body"] = string(body)
			result["server_svid_serial"] = resp.TLS.PeerCertificates[0].SerialNumber.String()
		}
		results = append(results, result)
	}
	emit(map[string]any{"results": results})
	return nil
}

func fetchBundle(ctx context.Context, url, trustDomain, endpointID, bundleFile string) error {
	td, err := spiffeid.TrustDomainFromString(trustDomain)
	if err != nil {
		return err
	}
	var opts []federation.FetchOption
	if endpointID != "" {
		id, err := spiffeid.FromString(endpointID)
		if err != nil {
			return err
		}
		bootstrap, err := spiffebundle.Load(td, bundleFile)
		if err != nil {
			return err
		}
		opts = append(opts, federation.WithSPIFFEAuth(bootstrap, id))
	} else if bundleFile != "" {
		pem, err := os.ReadFile(bundleFile)
		if err != nil {
			return err
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return errors.New("no certificates in " + bundleFile)
		}
		opts = append(opts, federation.WithWebPKIRoots(pool))
	}
	bundle, err := federation.FetchBundle(ctx, td, url, opts...)
	if err != nil {
		return err
	}
	seq, _ := bundle.SequenceNumber()
	hint, _ := bundle.RefreshHint()
	emit(map[string]any{"trust_domain": bundle.TrustDomain().String(), "x509_authorities": len(bundle.X509Authorities()), "jwt_authorities": len(bundle.JWTAuthorities()), "sequence": seq, "refresh_hint_seconds": hint.Seconds()})
	return nil
}

// fileSource reads the SVID and the trust bundle from PEM files on every call (the kubelet replaces them
// atomically), so a refreshed credential or an updated bundle is used from the next handshake on.
type fileSource struct {
	svidFile, bundleFile string
	trustDomain          spiffeid.TrustDomain
}

// newFileSource checks the files once; the trust domain defaults to the SVID's own.
func newFileSource(svidFile, bundleFile, trustDomain string) (*fileSource, error) {
	if bundleFile == "" {
		return nil, errors.New("-svid-file needs -trust-bundle-file")
	}
	source := &fileSource{svidFile: svidFile, bundleFile: bundleFile}
	svid, err := source.GetX509SVID()
	if err != nil {
		return nil, err
	}
	source.trustDomain = svid.ID.TrustDomain()
	if trustDomain != "" {
		if source.trustDomain, err = spiffeid.TrustDomainFromString(trustDomain); err != nil {
			return nil, err
		}
	}
	return source, nil
}

func (f *fileSource) GetX509SVID() (*x509svid.SVID, error) {
	return x509svid.Load(f.svidFile, f.svidFile)
}

func (f *fileSource) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	if td != f.trustDomain {
		return nil, fmt.Errorf("no bundle for trust domain %q in %s", td, f.bundleFile)
	}
	return x509bundle.Load(td, f.bundleFile)
}

// fetchFiles prints what fetch-x509 prints, for the files: the SVID verified against the bundle file.
func fetchFiles(files *fileSource) error {
	if files == nil {
		return errors.New("fetch-files needs -svid-file and -trust-bundle-file")
	}
	svid, err := files.GetX509SVID()
	if err != nil {
		return err
	}
	bundle, err := files.GetX509BundleForTrustDomain(files.trustDomain)
	if err != nil {
		return err
	}
	if _, _, err := x509svid.Verify(svid.Certificates, files); err != nil {
		return fmt.Errorf("SVID does not verify against %s: %w", files.bundleFile, err)
	}
	leaf := svid.Certificates[0]
	out := svidOut{svid.ID.String(), "", len(svid.Certificates), leaf.NotAfter.UTC().Format(time.RFC3339)}
	emit(map[string]any{"svids": []svidOut{out}, "bundles": map[string]int{bundle.TrustDomain().String(): len(bundle.X509Authorities())}, "serial": leaf.SerialNumber.String()})
	return nil
}
