// oidcverify verifies a JWT-SVID the way a cloud provider's OIDC federation does: discover the issuer's
// /.well-known/openid-configuration, fetch the JWKS it names, and verify the token's signature, iss, aud
// and exp with github.com/coreos/go-oidc/v3 (an implementation kubespiffe did not write).
//
//	oidcverify -issuer https://localhost:8447 -ca oidc-ca.pem -audience sts.amazonaws.com < token
//
// The token is read from standard input. On success it prints one JSON object (the verified claims and the
// discovery document) and exits 0; on failure it prints the reason on standard error and exits 1.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
)

func main() {
	issuer := flag.String("issuer", "", "issuer URL, exactly as the tokens' iss claim")
	caFile := flag.String("ca", "", "PEM file of the CA that signed the discovery endpoint's certificate")
	audience := flag.String("audience", "", "audience the token must carry (the client ID)")
	flag.Parse()
	if err := run(*issuer, *caFile, *audience); err != nil {
		fmt.Fprintln(os.Stderr, "oidcverify:", err)
		os.Exit(1)
	}
}

func run(issuer, caFile, audience string) error {
	if issuer == "" || caFile == "" || audience == "" {
		return fmt.Errorf("-issuer, -ca and -audience are required")
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return err
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		return fmt.Errorf("%s holds no PEM certificate", caFile)
	}
	raw, err := io.ReadAll(io.LimitReader(os.Stdin, 1<<20))
	if err != nil {
		return err
	}
	client := &http.Client{
		Timeout:   10 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}},
	}
	ctx := oidc.ClientContext(context.Background(), client)
	provider, err := oidc.NewProvider(ctx, issuer)
	if err != nil {
		return fmt.Errorf("discovery: %w", err)
	}
	token, err := provider.Verifier(&oidc.Config{ClientID: audience}).Verify(ctx, strings.TrimSpace(string(raw)))
	if err != nil {
		return fmt.Errorf("verify: %w", err)
	}
	var claims, discovery map[string]any
	if err := token.Claims(&claims); err != nil {
		return err
	}
	if err := provider.Claims(&discovery); err != nil {
		return err
	}
	return json.NewEncoder(os.Stdout).Encode(map[string]any{"claims": claims, "discovery": discovery})
}
