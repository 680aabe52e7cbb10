// sdsclient speaks Envoy's Secret Discovery Service to an SDS server on a Unix socket, as Envoy does, with
// go-control-plane's generated types over grpc-go (code kubespiffe did not write), and reports what it got.
//
//	sdsclient -socket /run/spiffe/agent.sock -names default,ROOTCA -responses 2 -nack-first
//
// Modes: stream (StreamSecrets: request, ACK every response, optionally NACK the first and check that the
// server does not resend it), fetch (FetchSecrets) and delta (DeltaSecrets). Each response is printed as one
// JSON line: its version and nonce, and every Secret decoded: a TLS certificate (chain, SPIFFE ID, whether
// the key matches the leaf, and which validation context of the same response verifies the chain, as
// Envoy's SPIFFE validator would), or a validation context (SPIFFE validator config with its trust domains
// and bundles, or a plain trusted CA). An RPC error ends the run with a {"error": ...} line and exit 0, so
// the caller can assert on the status; anything else unexpected exits 1 with the reason on stderr.
package main

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	grpcstatus "google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
)

const (
	secretTypeURL   = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
	spiffeValidator = "envoy.tls.cert_validator.spiffe"
)

type options struct {
	socket     string
	mode       string
	names      []string
	plainCA    bool
	responses  int
	nackFirst  bool
	quiet      time.Duration
	timeout    time.Duration
	typeURL    string
	staleNonce bool
}

// Secret is one decoded resource.
type Secret struct {
	Name string `json:"name"`
	Kind string `json:"kind"` // "tls" or "validation"
	// TLS certificates.
	SpiffeID   string   `json:"spiffe_id,omitempty"`
	Chain      []string `json:"chain,omitempty"` // SHA-256 of each certificate's DER, leaf first
	KeyMatches bool     `json:"key_matches,omitempty"`
	NotAfter   string   `json:"not_after,omitempty"`
	VerifiedBy []string `json:"verified_by,omitempty"` // validation contexts (same response) that verify it
	// Validation contexts: "spiffe" (the SPIFFE certificate validator) or "trusted_ca".
	Validator    string              `json:"validator,omitempty"`
	TrustDomains map[string][]string `json:"trust_domains,omitempty"` // trust domain -> CA SHA-256s
	TrustedCA    []string            `json:"trusted_ca,omitempty"`

	chain []*x509.Certificate
	roots map[string]*x509.CertPool // by trust domain; "" for trusted_ca
}

// Line is one line of output.
type Line struct {
	Version string         `json:"version,omitempty"`
	Nonce   string         `json:"nonce,omitempty"`
	TypeURL string         `json:"type_url,omitempty"`
	Secrets []*Secret      `json:"secrets,omitempty"`
	Event   string         `json:"event,omitempty"`
	Error   map[string]any `json:"error,omitempty"`
}

func main() {
	var o options
	var names string
	flag.StringVar(&o.socket, "socket", "", "the SDS server's Unix socket")
	flag.StringVar(&o.mode, "mode", "stream", "stream, fetch or delta")
	flag.StringVar(&names, "names", "", "comma-separated resource names (empty: all, an xDS wildcard)")
	flag.BoolVar(&o.plainCA, "no-spiffe-validation", false, "node metadata disable_spiffe_cert_validation: true")
	flag.IntVar(&o.responses, "responses", 1, "stream: responses to read (each ACKed) before leaving")
	flag.BoolVar(&o.nackFirst, "nack-first", false, "stream: NACK the first response and check it is not resent")
	flag.BoolVar(&o.staleNonce, "stale-then-change", false,
		"stream: after the first ACK, ask for ROOTCA too with a made-up nonce (must be ignored)")
	flag.DurationVar(&o.quiet, "quiet", time.Second, "stream: how long no resend must come after a NACK")
	flag.DurationVar(&o.timeout, "timeout", 30*time.Second, "for the whole run")
	flag.StringVar(&o.typeURL, "type-url", secretTypeURL, "the requests' type_url")
	flag.Parse()
	if names != "" {
		o.names = strings.Split(names, ",")
	}
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "sdsclient:", err)
		os.Exit(1)
	}
}

func run(o options) error {
	if o.socket == "" {
		return errors.New("-socket is required")
	}
	conn, err := grpc.NewClient("unix://"+o.socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
	defer cancel()
	client := secretv3.NewSecretDiscoveryServiceClient(conn)
	out := json.NewEncoder(os.Stdout)
	var runErr error
	switch o.mode {
	case "fetch":
		var resp *discoveryv3.DiscoveryResponse
		if resp, runErr = client.FetchSecrets(ctx, request(o, "", "")); runErr == nil {
			line, err := decode(resp)
			if err != nil {
				return err
			}
			return out.Encode(line)
		}
	case "delta":
		runErr = delta(ctx, client)
	case "stream":
		runErr = stream(ctx, client, o, out)
	default:
		return fmt.Errorf("unknown -mode %q", o.mode)
	}
	if s, ok := grpcstatus.FromError(runErr); ok && runErr != nil && s.Code() != codes.Unknown {
		return out.Encode(Line{Error: map[string]any{"code": s.Code().String(), "message": s.Message()}})
	}
	return runErr
}

func request(o options, version, nonce string) *discoveryv3.DiscoveryRequest {
	metadata := map[string]any{}
	if o.plainCA {
		metadata["disable_spiffe_cert_validation"] = true
	}
	meta, _ := structpb.NewStruct(metadata)
	return &discoveryv3.DiscoveryRequest{
		VersionInfo:   version,
		ResponseNonce: nonce,
		ResourceNames: o.names,
		TypeUrl:       o.typeURL,
		Node: &corev3.Node{
			Id: "sdsclient", Cluster: "kubespiffe-tests", Metadata: meta,
			UserAgentName: "envoy",
		},
	}
}

func delta(ctx context.Context, client secretv3.SecretDiscoveryServiceClient) error {
	s, err := client.DeltaSecrets(ctx)
	if err != nil {
		return err
	}
	// io.EOF from Send: the server has already ended the call; Recv says how.
	err = s.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: secretTypeURL, ResourceNamesSubscribe: []string{"default"}})
	if err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	_, err = s.Recv()
	if err == nil {
		return errors.New("DeltaSecrets answered")
	}
	return err
}

type received struct {
	resp *discoveryv3.DiscoveryResponse
	err  error
}

func stream(ctx context.Context, client secretv3.SecretDiscoveryServiceClient, o options, out *json.Encoder) error {
	s, err := client.StreamSecrets(ctx)
	if err != nil {
		return err
	}
	responses := make(chan received, 16)
	go func() {
		for {
			resp, err := s.Recv()
			responses <- received{resp, err}
			if err != nil {
				return
			}
		}
	}()
	send := func(req *discoveryv3.DiscoveryRequest) error {
		err := s.Send(req)
		if !errors.Is(err, io.EOF) {
			return err
		}
		// The server has already ended the call: its status comes with the next receive.
		for r := range responses {
			if r.err != nil {
				return r.err
			}
		}
		return err
	}
	if err := send(request(o, "", "")); err != nil {
		return err
	}
	acked := ""
	for n := 0; n < o.responses; n++ {
		var r received
		select {
		case r = <-responses:
		case <-ctx.Done():
			return fmt.Errorf("waiting for response %d: %w", n+1, ctx.Err())
		}
		if r.err != nil {
			return r.err
		}
		line, err := decode(r.resp)
		if err != nil {
			return err
		}
		if err := out.Encode(line); err != nil {
			return err
		}
		if n == 0 && o.nackFirst {
			// A NACK: the version last applied (none yet), the nonce answered, and why.
			nack := request(o, acked, r.resp.Nonce)
			nack.ErrorDetail = &status.Status{Code: int32(codes.InvalidArgument), Message: "sdsclient rejects this on purpose"}
			if err := send(nack); err != nil {
				return err
			}
			select {
			case again := <-responses:
				if again.err != nil {
					return again.err
				}
				return fmt.Errorf("the server resent after a NACK (version %s)", again.resp.VersionInfo)
			case <-time.After(o.quiet):
			}
			if err := out.Encode(Line{Event: "nack-not-resent"}); err != nil {
				return err
			}
			continue
		}
		acked = r.resp.VersionInfo
		if err := send(request(o, acked, r.resp.Nonce)); err != nil {
			return err
		}
		if n == 0 && o.staleNonce {
			stale := request(o, acked, "not-a-nonce-the-server-sent")
			stale.ResourceNames = append(append([]string{}, o.names...), "ROOTCA")
			if err := send(stale); err != nil {
				return err
			}
			select {
			case again := <-responses:
				if again.err != nil {
					return again.err
				}
				return fmt.Errorf("the server answered a stale nonce (version %s)", again.resp.VersionInfo)
			case <-time.After(o.quiet):
			}
			if err := out.Encode(Line{Event: "stale-ignored"}); err != nil {
				return err
			}
		}
	}
	return s.CloseSend()
}

func fingerprint(der []byte) string {
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:])
}

func decode(resp *discoveryv3.DiscoveryResponse) (*Line, error) {
	line := &Line{Version: resp.VersionInfo, Nonce: resp.Nonce, TypeURL: resp.TypeUrl}
	for _, item := range resp.Resources {
		if item.TypeUrl != secretTypeURL {
			return nil, fmt.Errorf("a resource of type %s", item.TypeUrl)
		}
		secret := &tlsv3.Secret{}
		if err := item.UnmarshalTo(secret); err != nil {
			return nil, err
		}
		decoded, err := decodeSecret(secret)
		if err != nil {
			return nil, fmt.Errorf("secret %q: %w", secret.Name, err)
		}
		line.Secrets = append(line.Secrets, decoded)
	}
	for _, cert := range line.Secrets {
		if cert.Kind != "tls" {
			continue
		}
		for _, context := range line.Secrets {
			if context.Kind == "validation" && verifies(context, cert) {
				cert.VerifiedBy = append(cert.VerifiedBy, context.Name)
			}
		}
	}
	return line, nil
}

func decodeSecret(secret *tlsv3.Secret) (*Secret, error) {
	switch kind := secret.Type.(type) {
	case *tlsv3.Secret_TlsCertificate:
		return decodeTLS(secret.Name, kind.TlsCertificate)
	case *tlsv3.Secret_ValidationContext:
		return decodeValidation(secret.Name, kind.ValidationContext)
	default:
		return nil, fmt.Errorf("unexpected secret type %T", kind)
	}
}

func decodeTLS(name string, cert *tlsv3.TlsCertificate) (*Secret, error) {
	chainPEM := cert.GetCertificateChain().GetInlineBytes()
	keyPEM := cert.GetPrivateKey().GetInlineBytes()
	// tls.X509KeyPair is what Go's TLS stack loads: it refuses a key that does not match the leaf.
	_, err := tls.X509KeyPair(chainPEM, keyPEM)
	out := &Secret{Name: name, Kind: "tls", KeyMatches: err == nil}
	chain, err := parsePEM(chainPEM)
	if err != nil || len(chain) == 0 {
		return nil, fmt.Errorf("certificate chain: %v", err)
	}
	out.chain = chain
	for _, c := range chain {
		out.Chain = append(out.Chain, fingerprint(c.Raw))
	}
	if len(chain[0].URIs) == 1 {
		out.SpiffeID = chain[0].URIs[0].String()
	}
	out.NotAfter = chain[0].NotAfter.UTC().Format(time.RFC3339)
	return out, nil
}

func decodeValidation(name string, context *tlsv3.CertificateValidationContext) (*Secret, error) {
	out := &Secret{Name: name, Kind: "validation", roots: map[string]*x509.CertPool{}}
	if custom := context.GetCustomValidatorConfig(); custom != nil {
		if custom.Name != spiffeValidator {
			return nil, fmt.Errorf("custom validator %q", custom.Name)
		}
		config := &tlsv3.SPIFFECertValidatorConfig{}
		if err := custom.TypedConfig.UnmarshalTo(config); err != nil {
			return nil, err
		}
		out.Validator = "spiffe"
		out.TrustDomains = map[string][]string{}
		for _, td := range config.TrustDomains {
			certs, err := parsePEM(td.GetTrustBundle().GetInlineBytes())
			if err != nil || len(certs) == 0 {
				return nil, fmt.Errorf("trust domain %s: bundle %v", td.Name, err)
			}
			pool := x509.NewCertPool()
			for _, c := range certs {
				pool.AddCert(c)
				out.TrustDomains[td.Name] = append(out.TrustDomains[td.Name], fingerprint(c.Raw))
			}
			out.roots[td.Name] = pool
		}
		return out, nil
	}
	certs, err := parsePEM(context.GetTrustedCa().GetInlineBytes())
	if err != nil || len(certs) == 0 {
		return nil, fmt.Errorf("neither a SPIFFE validator nor a trusted CA (%v)", err)
	}
	out.Validator = "trusted_ca"
	pool := x509.NewCertPool()
	for _, c := range certs {
		pool.AddCert(c)
		out.TrustedCA = append(out.TrustedCA, fingerprint(c.Raw))
	}
	out.roots[""] = pool
	return out, nil
}

// verifies says whether the validation context accepts the certificate's chain: with the SPIFFE validator,
// only the bundle of the leaf's own trust domain counts (as in Envoy); a trusted CA is one pool.
func verifies(context, cert *Secret) bool {
	leaf := cert.chain[0]
	pool := context.roots[""]
	if context.Validator == "spiffe" {
		if len(leaf.URIs) != 1 || leaf.URIs[0].Scheme != "spiffe" {
			return false
		}
		pool = context.roots[leaf.URIs[0].Host]
	}
	if pool == nil {
		return false
	}
	intermediates := x509.NewCertPool()
	for _, c := range cert.chain[1:] {
		intermediates.AddCert(c)
	}
	_, err := leaf.Verify(x509.VerifyOptions{
		Roots: pool, Intermediates: intermediates, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	})
	return err == nil
}

func parsePEM(data []byte) ([]*x509.Certificate, error) {
	var der []byte
	for {
		block, rest := pem.Decode(data)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("a PEM block of type %q", block.Type)
		}
		der = append(der, block.Bytes...)
		data = rest
	}
	return x509.ParseCertificates(der)
}
