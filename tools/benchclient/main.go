// Command spiffe-bench drives SPIRE and kubespiffe the same way for bench/vs_spire.py and bench/scale.py.
//
// Workload API subcommands use go-spiffe v2 (the reference client) against either agent's socket. The
// server-side subcommands speak each server's own API, the way that side's agent does when it needs a new
// X.509-SVID: SPIRE's agent API (k8s_psat attestation, then BatchNewX509SVID over mTLS with the agent SVID)
// and kubespiffe's issuer API (MintX509SVID over TLS with the pod's bearer token). Both sides' messages are
// generated Go code: SPIRE's from its API module, kubespiffe's in issuer.pb.go (scripts/gen-proto), which
// issuer-mint checks against the descriptor kubespiffe's Python code carries before it starts.
// Every subcommand prints one JSON document on stdout; times are Unix nanoseconds (CLOCK_REALTIME), so
// the Python driver can compare them with its own clock.
package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	agentv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/agent/v1"
	entryv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/entry/v1"
	svidv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/svid/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/types/descriptorpb"
)

const usage = "usage: spiffe-bench wait-id|fetch-loop|jwt-mint|issuer-mint|spire-mint|spire-entry [flags]"

func main() {
	if len(os.Args) < 2 {
		fail(errors.New(usage))
	}
	cmd, args := os.Args[1], os.Args[2:]
	flags := flag.NewFlagSet(cmd, flag.ExitOnError)
	socket := flags.String("socket", "", "Workload API address, unix:///path (wait-id, fetch-loop, jwt-mint); SPIRE admin socket (spire-entry)")
	id := flags.String("id", "", "wait-id: the SPIFFE ID to wait for (empty: any); spire-entry: the entry's SPIFFE ID")
	poll := flags.Duration("poll", 20*time.Millisecond, "wait-id: pause between attempts")
	count := flags.Int("n", 1000, "calls per loop (fetch-loop) or in total (jwt-mint, issuer-mint, spire-mint)")
	clients := flags.Int("clients", 1, "concurrent clients, each with its own connection")
	audience := flags.String("audience", "bench", "fetch-loop: JWT audience")
	addr := flags.String("addr", "", "issuer-mint, spire-mint: server HOST:PORT")
	bundle := flags.String("bundle", "", "issuer-mint, spire-mint: the server's trust bundle (PEM)")
	serverName := flags.String("server-name", "kubespiffed", "issuer-mint: TLS server name")
	tokenFile := flags.String("token-file", "", "issuer-mint: the pod's token; spire-mint: the k8s_psat token")
	descriptor := flags.String("descriptor", "", "issuer-mint: serialized FileDescriptorProto of issuer.proto")
	cluster := flags.String("cluster", "bench", "spire-mint: k8s_psat cluster name")
	parent := flags.String("parent", "", "spire-entry: parent SPIFFE ID")
	selector := flags.String("selector", "", "spire-entry: TYPE:VALUE")
	rate := flags.Float64("rate", 0, "issuer-mint: calls per second in total on a fixed schedule, every call reported (0: as fast as possible)")
	duration := flags.Duration("duration", 30*time.Second, "issuer-mint with -rate: how long")
	timeout := flags.Duration("timeout", 120*time.Second, "overall deadline")
	_ = flags.Parse(args)

	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	var err error
	switch cmd {
	case "wait-id":
		err = waitID(ctx, *socket, *id, *poll)
	case "fetch-loop":
		err = fetchLoop(ctx, *socket, *audience, *count)
	case "jwt-mint":
		err = jwtMint(ctx, *socket, *clients, *count)
	case "issuer-mint":
		err = issuerMint(ctx, *addr, *bundle, *serverName, *tokenFile, *descriptor, *clients, *count, *rate, *duration)
	case "spire-mint":
		err = spireMint(ctx, *addr, *bundle, *tokenFile, *cluster, *clients, *count)
	case "spire-entry":
		err = spireEntry(ctx, *socket, *id, *parent, *selector)
	default:
		err = fmt.Errorf("unknown subcommand %q; %s", cmd, usage)
	}
	if err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "spiffe-bench:", err)
	os.Exit(1)
}

func emit(v any) {
	out, _ := json.Marshal(v)
	fmt.Println(string(out))
}

func millis(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// waitID polls FetchX509SVID (a new client per attempt, so a socket that does not exist yet or an agent
// that refused costs no gRPC reconnect backoff) until the agent serves `want`, and says when it first did.
func waitID(ctx context.Context, socket, want string, poll time.Duration) error {
	attempts, errs := 0, map[string]int{}
	for {
		attempts++
		x509Ctx, err := workloadapi.FetchX509Context(ctx, workloadapi.WithAddr(socket))
		seen := time.Now()
		if err == nil {
			for _, svid := range x509Ctx.SVIDs {
				if want == "" || svid.ID.String() == want {
					emit(map[string]any{"id": svid.ID.String(), "seen_ns": seen.UnixNano(), "attempts": attempts, "errors": errs})
					return nil
				}
			}
			errs["other identities"]++
		} else {
			key := err.Error()
			if i := strings.Index(key, "desc = "); i >= 0 {
				key = key[i+7:]
			}
			if len(key) > 80 {
				key = key[:80]
			}
			errs[key]++
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s not served after %d attempts: %v", want, attempts, errs)
		case <-time.After(poll):
		}
	}
}

// fetchLoop times cached fetches on one connection: FetchX509SVID (a new stream, its first message) and
// FetchJWTSVID with one audience (served from the agent's JWT cache after the first call).
func fetchLoop(ctx context.Context, socket, audience string, n int) error {
	client, err := workloadapi.New(ctx, workloadapi.WithAddr(socket))
	if err != nil {
		return err
	}
	defer client.Close()
	if _, err := client.FetchJWTSVID(ctx, jwtsvid.Params{Audience: audience}); err != nil {
		return err
	}
	x509ms, jwtms := make([]float64, 0, n), make([]float64, 0, n)
	for i := 0; i < n; i++ {
		start := time.Now()
		if _, err := client.FetchX509Context(ctx); err != nil {
			return err
		}
		x509ms = append(x509ms, millis(time.Since(start)))
	}
	for i := 0; i < n; i++ {
		start := time.Now()
		if _, err := client.FetchJWTSVID(ctx, jwtsvid.Params{Audience: audience}); err != nil {
			return err
		}
		jwtms = append(jwtms, millis(time.Since(start)))
	}
	emit(map[string]any{"x509_ms": x509ms, "jwt_ms": jwtms})
	return nil
}

// run calls `call` n times in total from `clients` goroutines, each with its own state from `setup`.
func run[T any](ctx context.Context, clients, n int, setup func() (T, func(), error), call func(context.Context, T) error) error {
	states := make([]T, clients)
	for i := range states {
		state, done, err := setup()
		if err != nil {
			return err
		}
		defer done()
		states[i] = state
		if err := call(ctx, state); err != nil { // warm-up: connection and handshake outside the timing
			return fmt.Errorf("warm-up: %w", err)
		}
	}
	latencies := make([][]float64, clients)
	errs := make([]error, clients)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range states {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			for j := 0; j < n/clients; j++ {
				t := time.Now()
				if err := call(ctx, states[i]); err != nil {
					errs[i] = err
					return
				}
				latencies[i] = append(latencies[i], millis(time.Since(t)))
			}
		}(i)
	}
	wg.Wait()
	elapsed := time.Since(start)
	if err := errors.Join(errs...); err != nil {
		return err
	}
	all := []float64{}
	for _, l := range latencies {
		all = append(all, l...)
	}
	sort.Float64s(all)
	emit(map[string]any{
		"clients":    clients,
		"calls":      len(all),
		"seconds":    elapsed.Seconds(),
		"per_second": float64(len(all)) / elapsed.Seconds(),
		"p50_ms":     all[len(all)/2],
		"p99_ms":     all[min(len(all)-1, len(all)*99/100)],
	})
	return nil
}

// jwtMint asks for a JWT-SVID with a new audience on every call, so that each one is minted at the server
// (neither agent can answer it from its cache): the Workload API's own path to a fresh signature.
func jwtMint(ctx context.Context, socket string, clients, n int) error {
	var mu sync.Mutex
	serial := 0
	next := func() string {
		mu.Lock()
		defer mu.Unlock()
		serial++
		return fmt.Sprintf("bench-%d-%d", time.Now().UnixNano(), serial)
	}
	setup := func() (*workloadapi.Client, func(), error) {
		client, err := workloadapi.New(ctx, workloadapi.WithAddr(socket))
		if err != nil {
			return nil, nil, err
		}
		return client, func() { _ = client.Close() }, nil
	}
	return run(ctx, clients, n, setup, func(ctx context.Context, client *workloadapi.Client) error {
		_, err := client.FetchJWTSVID(ctx, jwtsvid.Params{Audience: next()})
		return err
	})
}

func newCSR() ([]byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	return x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
}

func pemPool(path string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, errors.New("no certificates in " + path)
	}
	return pool, nil
}

func readToken(path string) (string, error) {
	raw, err := os.ReadFile(path)
	return strings.TrimSpace(string(raw)), err
}

// issuerMint calls kubespiffe's MintX509SVID as the agent does: TLS verified against the trust bundle,
// the pod's token as a bearer token, a P-256 CSR (one, reused: the server verifies it on every call).
func issuerMint(ctx context.Context, addr, bundlePath, serverName, tokenFile, descriptorPath string, clients, n int, rate float64, duration time.Duration) error {
	pool, err := pemPool(bundlePath)
	if err != nil {
		return err
	}
	token, err := readToken(tokenFile)
	if err != nil {
		return err
	}
	if err := sameIssuerAPI(descriptorPath); err != nil {
		return err
	}
	fullMethod := fmt.Sprintf("/%s/MintX509SVID", File_issuer_proto.Services().ByName("Issuer").FullName())
	csr, err := newCSR()
	if err != nil {
		return err
	}
	request := &MintX509SVIDRequest{Csr: csr}
	creds := credentials.NewTLS(&tls.Config{RootCAs: pool, ServerName: serverName, MinVersion: tls.VersionTLS12})
	ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
	setup := func() (*grpc.ClientConn, func(), error) {
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
		if err != nil {
			return nil, nil, err
		}
		return conn, func() { _ = conn.Close() }, nil
	}
	mint := func(ctx context.Context, conn *grpc.ClientConn) error {
		response := &MintX509SVIDResponse{}
		if err := conn.Invoke(ctx, fullMethod, request, response); err != nil {
			return err
		}
		if len(response.Svids) == 0 {
			return errors.New("MintX509SVID returned no SVID")
		}
		return nil
	}
	if rate > 0 {
		return paced(ctx, clients, rate, duration, setup, mint)
	}
	return run(ctx, clients, n, setup, mint)
}

// sameIssuerAPI fails when issuer.pb.go was generated from another issuer.proto than the one kubespiffe
// serves (descriptorPath: its serialized FileDescriptorProto), so a stale copy cannot measure the wrong API.
func sameIssuerAPI(descriptorPath string) error {
	raw, err := os.ReadFile(descriptorPath)
	if err != nil {
		return err
	}
	served := &descriptorpb.FileDescriptorProto{}
	if err := proto.Unmarshal(raw, served); err != nil {
		return err
	}
	compiled := protodesc.ToFileDescriptorProto(File_issuer_proto)
	// Neither comments nor JSON names are part of the wire API (the Python copy carries neither).
	for _, file := range []*descriptorpb.FileDescriptorProto{served, compiled} {
		file.SourceCodeInfo = nil
		for _, message := range file.MessageType {
			for _, field := range message.Field {
				field.JsonName = nil
			}
		}
	}
	if !proto.Equal(served, compiled) {
		return errors.New("tools/benchclient/issuer.pb.go does not match kubespiffe's issuer.proto: run scripts/gen-proto")
	}
	return nil
}

// spireMint attests as a SPIRE agent would (k8s_psat), then calls BatchNewX509SVID for one entry whose
// parent is that agent, over mTLS with the agent SVID: the call a SPIRE agent makes for every X.509-SVID
// it needs. The entry must exist already (spire-entry); it is waited for in the server's entry cache.
func spireMint(ctx context.Context, addr, bundlePath, tokenFile, cluster string, clients, n int) error {
	pool, err := pemPool(bundlePath)
	if err != nil {
		return err
	}
	token, err := readToken(tokenFile)
	if err != nil {
		return err
	}
	agentKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	agentCSR, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, agentKey)
	if err != nil {
		return err
	}
	// Attestation: TLS that verifies the server against the bundle, no client certificate yet. The server's
	// certificate names only its SPIFFE ID, so the chain is verified here rather than by host name.
	verifyOnly := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: true, VerifyPeerCertificate: chainVerifier(pool)} //nolint:gosec // chain verified by chainVerifier
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(verifyOnly)))
	if err != nil {
		return err
	}
	defer conn.Close()
	stream, err := agentv1.NewAgentClient(conn).AttestAgent(ctx)
	if err != nil {
		return err
	}
	payload, _ := json.Marshal(map[string]string{"cluster": cluster, "token": token})
	if err := stream.Send(&agentv1.AttestAgentRequest{Step: &agentv1.AttestAgentRequest_Params_{Params: &agentv1.AttestAgentRequest_Params{
		Data:   &types.AttestationData{Type: "k8s_psat", Payload: payload},
		Params: &agentv1.AgentX509SVIDParams{Csr: agentCSR},
	}}}); err != nil {
		return err
	}
	resp, err := stream.Recv()
	if err != nil {
		return fmt.Errorf("k8s_psat attestation: %w", err)
	}
	result := resp.GetResult()
	if result == nil {
		return errors.New("attestation answered with a challenge; k8s_psat has none")
	}
	agentCert := tls.Certificate{Certificate: result.Svid.CertChain, PrivateKey: agentKey}
	mtls := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: true, VerifyPeerCertificate: chainVerifier(pool), Certificates: []tls.Certificate{agentCert}} //nolint:gosec // chain verified by chainVerifier
	creds := credentials.NewTLS(mtls)
	agentConn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		return err
	}
	defer agentConn.Close()
	entryID := ""
	for entryID == "" {
		entries, err := entryv1.NewEntryClient(agentConn).GetAuthorizedEntries(ctx, &entryv1.GetAuthorizedEntriesRequest{})
		if err != nil {
			return err
		}
		for _, entry := range entries.Entries {
			entryID = entry.Id
		}
		if entryID == "" {
			select {
			case <-ctx.Done():
				return errors.New("no entry authorized for agent " + result.Svid.Id.Path)
			case <-time.After(200 * time.Millisecond):
			}
		}
	}
	csr, err := newCSR()
	if err != nil {
		return err
	}
	request := &svidv1.BatchNewX509SVIDRequest{Params: []*svidv1.NewX509SVIDParams{{EntryId: entryID, Csr: csr}}}
	setup := func() (svidv1.SVIDClient, func(), error) {
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
		if err != nil {
			return nil, nil, err
		}
		return svidv1.NewSVIDClient(conn), func() { _ = conn.Close() }, nil
	}
	return run(ctx, clients, n, setup, func(ctx context.Context, client svidv1.SVIDClient) error {
		resp, err := client.BatchNewX509SVID(ctx, request)
		if err != nil {
			return err
		}
		if status := resp.Results[0].Status; status.Code != 0 {
			return fmt.Errorf("BatchNewX509SVID: %s", status.Message)
		}
		return nil
	})
}

func chainVerifier(pool *x509.CertPool) func([][]byte, [][]*x509.Certificate) error {
	return func(raw [][]byte, _ [][]*x509.Certificate) error {
		certs := make([]*x509.Certificate, len(raw))
		for i, der := range raw {
			cert, err := x509.ParseCertificate(der)
			if err != nil {
				return err
			}
			certs[i] = cert
		}
		intermediates := x509.NewCertPool()
		for _, cert := range certs[1:] {
			intermediates.AddCert(cert)
		}
		_, err := certs[0].Verify(x509.VerifyOptions{Roots: pool, Intermediates: intermediates, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
		return err
	}
}

// spireEntry creates one registration entry through SPIRE's admin API on its local socket and says when
// the call was made, so that "registration -> SVID" starts at the registration itself, not at a CLI's start.
func spireEntry(ctx context.Context, socket, id, parent, selector string) error {
	conn, err := grpc.NewClient(socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	client := entryv1.NewEntryClient(conn)
	// Connect before the clock starts.
	if _, err := client.CountEntries(ctx, &entryv1.CountEntriesRequest{}); err != nil {
		return err
	}
	spiffeID, err := toSPIFFEID(id)
	if err != nil {
		return err
	}
	parentID, err := toSPIFFEID(parent)
	if err != nil {
		return err
	}
	kind, value, ok := strings.Cut(selector, ":")
	if !ok {
		return errors.New("selector must be TYPE:VALUE")
	}
	entry := &types.Entry{SpiffeId: spiffeID, ParentId: parentID, Selectors: []*types.Selector{{Type: kind, Value: value}}}
	created := time.Now()
	resp, err := client.BatchCreateEntry(ctx, &entryv1.BatchCreateEntryRequest{Entries: []*types.Entry{entry}})
	if err != nil {
		return err
	}
	result := resp.Results[0]
	if result.Status.Code != 0 {
		return fmt.Errorf("BatchCreateEntry: %s", result.Status.Message)
	}
	emit(map[string]any{"entry_id": result.Entry.Id, "created_ns": created.UnixNano()})
	return nil
}

func toSPIFFEID(s string) (*types.SPIFFEID, error) {
	rest, ok := strings.CutPrefix(s, "spiffe://")
	if !ok {
		return nil, fmt.Errorf("%q is not a SPIFFE ID", s)
	}
	td, path, _ := strings.Cut(rest, "/")
	return &types.SPIFFEID{TrustDomain: td, Path: "/" + path}, nil
}
