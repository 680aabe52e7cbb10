"""Every error kubespiffe raises on purpose, in one tree: catch a family, not a list of classes.

    KubespiffeError                      root: `except KubespiffeError` catches anything kubespiffe refuses
    ├── InvalidInput (also ValueError)   data handed to us breaks a rule; the message names the rule
    │   ├── SpiffeIdError                  spiffe.spiffeid     a SPIFFE ID or trust domain
    │   ├── X509SvidError                  spiffe.x509svid     an X.509-SVID or its chain
    │   ├── JwtSvidError                   spiffe.jwtsvid      a JWT-SVID
    │   ├── BundleError                    spiffe.bundle       a bundle document or certificate list
    │   ├── CsrError                       authority.x509ca    a CSR sent for signing
    │   ├── PodKeyRefused                  authority.podcert   a PodCertificateRequest's key
    │   ├── StateError                     authority.state     the authority Secret's document
    │   ├── RegistrationError              registry.models     a (Cluster)WorkloadRegistration's spec
    │   ├── TemplateError                  registry.template   a SPIFFE ID or DNS name template
    │   ├── TenancyError                   registry.tenancy    an ID outside what its registration may grant
    │   ├── PodCertificateDenied           registry.podcert    a PodCertificateRequest's pod or identity
    │   ├── FederationSpecError            registry.federation a FederatedTrustDomain's spec
    │   ├── OidcIssuerError                federation.oidc     an OIDC issuer URL
    │   ├── SdsRequestError                agent.sdsresources  an SDS request for a resource the pod lacks
    │   └── MalformedReview                injection.review    an AdmissionReview kubespiffed cannot answer
    ├── TokenRejected                    attestation.token   a caller's token or its pod does not attest
    ├── ClusterUnreachable               attestation.pod     a pod not in the caches, and no API server to ask
    ├── StaleStateError                  authority.store     another replica wrote the authority Secret first
    ├── PodCertificateFailed             authority.podcert   the CA cannot issue what the API accepts (Failed)
    ├── UpstreamError                    authority.upstream  the upstream CA cannot give a usable intermediate
    ├── WorkerFailed                     server.workers      an issuer API worker process cannot start
    ├── BundleFetchError                 federation.fetch    a peer's bundle endpoint failed or lied
    ├── IssuerError                      agent.issuer_client kubespiffed said no or could not be asked
    │   ├── NoIdentity                     (exit 3) the pod has no identity (or not the one asked for)
    │   ├── TokenRefused                   (exit 4) kubespiffed refused the token
    │   ├── ServerUnreachable              (exit 5) kubespiffed could not be reached
    │   ├── ServerIdentityWrong            (exit 6) whoever answered is not kubespiffed
    │   └── RequestFailed                  (exit 7) any other refusal, or an answer that cannot be used
    │       └── RequestInvalid             (exit 7) kubespiffed found the request invalid
    ├── LoopEnded                        tasks               a lifelong loop was cancelled, not by a stop
    └── WorkloadError                    cli.workload        a Workload API call from the CLI failed

Each class is defined next to the rule it guards (the module named above); this module holds the root
and the families, imports nothing, and so sits below every package, `spiffe/` included. An error keeps
its class on the way up: callers translate it into a protocol status (gRPC code, HTTP status, exit code,
a Kubernetes condition) at the edge, never into another kubespiffe error. The one kind of wrapping kept
is a parser naming the field a nested value came from (a RegistrationError saying `spec.spiffeIDTemplate:
<the TemplateError>`, a JwtSvidError saying `sub is not a SPIFFE ID: <the SpiffeIdError>`): the outer
error is then the one about the caller's input, and the inner one is its cause.
"""


class KubespiffeError(Exception):
    """Root of every error kubespiffe raises on purpose."""


class InvalidInput(KubespiffeError, ValueError):
    """Data handed to kubespiffe breaks a rule (also a ValueError, as parsers' errors usually are)."""
