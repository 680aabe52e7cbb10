"""kubespiffed's own X.509-SVID, used to serve TLS, renewed at half-life without a restart.

The key is made in memory at start and never written anywhere. gRPC asks for the certificate
configuration on each new handshake, which is where renewal happens; the HTTPS endpoints build their
SSL context from the same identity.
"""

from __future__ import annotations

import datetime as dt
import ssl
import threading

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from kubespiffe.authority.keys import KeyType, generate_key
from kubespiffe.authority.x509ca import X509Authority, sign_x509_svid
from kubespiffe.server.https import server_context
from kubespiffe.spiffe.spiffeid import SpiffeId
from kubespiffe.spiffe.x509svid import X509Svid

SERVER_SVID_TTL = dt.timedelta(hours=24)


class ServingIdentity:
    def __init__(self, authority: X509Authority, spiffe_id: SpiffeId, dns_names: tuple[str, ...]) -> None:
        self.authority = authority
        self.spiffe_id = spiffe_id
        self.dns_names = dns_names
        self._lock = threading.Lock()
        self.generation = 0
        self._issue()

    def _issue(self) -> None:
        key = generate_key(KeyType.EC_P256)
        csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, hashes.SHA256())
        now = dt.datetime.now(dt.UTC)
        leaf = sign_x509_svid(self.authority, csr, self.spiffe_id, self.dns_names, SERVER_SVID_TTL, now)
        self.svid = X509Svid(self.spiffe_id, (leaf, *self.authority.chain), key)
        self.generation += 1

    def set_authority(self, authority: X509Authority) -> None:
        """A new active CA: issue a new serving SVID from it at once."""
        with self._lock:
            self.authority = authority
            self._issue()

    def refresh(self) -> int:
        """Renew at half-life; returns the generation (it grows with every new certificate)."""
        with self._lock:
            if dt.datetime.now(dt.UTC) >= self.svid.renew_at:
                self._issue()
            return self.generation

    def grpc_credentials(self) -> grpc.ServerCredentials:
        served = {"generation": self.generation}

        def fetch() -> grpc.ServerCertificateConfiguration | None:
            if self.refresh() == served["generation"]:
                return None
            served["generation"] = self.generation
            return grpc.ssl_server_certificate_configuration([(self.svid.key_pem(), self.svid.chain_pem())])

        initial = grpc.ssl_server_certificate_configuration([(self.svid.key_pem(), self.svid.chain_pem())])
        return grpc.dynamic_ssl_server_credentials(
            initial,
            fetch,  # type: ignore[arg-type]  # grpc accepts None for "unchanged"; its stubs say otherwise
            require_client_authentication=False,
        )

    def ssl_context(self) -> ssl.SSLContext:
        """A server context for the HTTPS endpoints with the current certificate."""
        return server_context(self.svid.chain_pem(), self.svid.key_pem())
