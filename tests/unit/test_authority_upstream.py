"""kubespiffed's CA under an operator's CA: the intermediate profile, the Secret's rules, the probe check.

Upstream CAs are built by tests/unit/certs.py (cryptography alone), as an operator's PKI would be; what
kubespiffe signs is judged by `spiffe.x509svid.verify_chain`, the verifier SVID consumers run.
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar, cast

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import (
    BestAvailableEncryption,
    Encoding,
    NoEncryption,
    PrivateFormat,
)
from lightkube import AsyncClient
from lightkube.models.meta_v1 import ObjectMeta

from kubespiffe.authority.certmanager import CertificateRequest, CertManagerUpstream, IssuerRef
from kubespiffe.authority.keys import KeyType
from kubespiffe.authority.live import LiveAuthority
from kubespiffe.authority.podcert import sign_pod_certificate
from kubespiffe.authority.rotation import RotationPolicy
from kubespiffe.authority.state import AuthorityState, new_slot
from kubespiffe.authority.store import Stored
from kubespiffe.authority.upstream import (
    MIN_INTERMEDIATE_LIFETIME,
    UpstreamError,
    new_intermediate,
    parse_upstream_secret,
)
from kubespiffe.authority.x509ca import (
    CLOCK_SKEW,
    X509Authority,
    create_intermediate_ca,
    create_self_signed_ca,
    intermediate_csr,
    sign_x509_svid,
)
from kubespiffe.errors import KubespiffeError
from kubespiffe.kube.leader import LeaderElector
from kubespiffe.server.config import parse_args
from kubespiffe.spiffe.spiffeid import SpiffeId, TrustDomain
from kubespiffe.spiffe.x509svid import X509SvidError, verify_chain
from tests.unit.certs import CA_USAGE, DAY, NOW, Issued, ec_key, key_usage, make_ca, rsa_key

E = TypeVar("E", bound=x509.ExtensionType)
TD = TrustDomain("example.org")
PROBE = SpiffeId(TD, "/kubespiffe/kubespiffed")
DNS = ("kubespiffed", "kubespiffed.kubespiffe-system.svc")
YEAR = dt.timedelta(days=365)
HOUR = dt.timedelta(hours=1)
WHERE = "upstream Secret ns/corp-ca"


def _root(**kwargs: object) -> Issued:
    """An operator's root CA: no SPIFFE ID, key identifiers as most PKIs set them."""
    options: dict[str, object] = {
        "trust_domain": None,
        "key_identifiers": True,
        "not_before": NOW - 100 * DAY,
        "not_after": NOW + 3 * YEAR,
    }
    options.update(kwargs)
    return make_ca("corp root", **options)  # type: ignore[arg-type]


def _upstream(issued: Issued, *above: x509.Certificate) -> X509Authority:
    assert not isinstance(issued.key, type(None))
    return X509Authority(issued.key, issued.cert, above)  # type: ignore[arg-type]


def _ext(cert: x509.Certificate, kind: type[E]) -> x509.Extension[E]:
    return cert.extensions.get_extension_for_class(kind)


def _svid(authority: X509Authority, now: dt.datetime = NOW) -> x509.Certificate:
    key = ec_key()
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, hashes.SHA256())
    return sign_x509_svid(authority, csr, SpiffeId(TD, "/ns/a/sa/b"), [], HOUR, now)


# The intermediate profile.


@pytest.mark.parametrize("key_type", [KeyType.EC_P256, KeyType.EC_P384, KeyType.RSA_2048])
def test_intermediate_profile(key_type: KeyType) -> None:
    root = _root()
    ca = create_intermediate_ca(_upstream(root), TD, key_type, YEAR, NOW)
    cert = ca.certificate
    constraints = _ext(cert, x509.BasicConstraints)
    assert constraints.critical and constraints.value == x509.BasicConstraints(ca=True, path_length=0)
    usage = _ext(cert, x509.KeyUsage)
    assert usage.critical and usage.value.key_cert_sign and usage.value.crl_sign
    assert not usage.value.digital_signature
    san = _ext(cert, x509.SubjectAlternativeName).value
    assert isinstance(san, x509.SubjectAlternativeName)
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://example.org"]
    assert len(list(san)) == 1
    root_ski = _ext(root.cert, x509.SubjectKeyIdentifier).value
    aki = _ext(cert, x509.AuthorityKeyIdentifier).value
    assert isinstance(root_ski, x509.SubjectKeyIdentifier) and isinstance(aki, x509.AuthorityKeyIdentifier)
    assert aki.key_identifier == root_ski.digest
    cert.verify_directly_issued_by(root.cert)
    assert cert.not_valid_before_utc == NOW - dt.timedelta(seconds=30)
    assert cert.not_valid_after_utc == NOW + YEAR
    # What leaves carry and what bundles publish.
    assert ca.above == (root.cert,)
    assert ca.chain == (cert,)
    assert ca.trust_anchor == root.cert


def test_every_intermediate_has_its_own_name() -> None:
    upstream = _upstream(_root())
    first, second = (create_intermediate_ca(upstream, TD, KeyType.EC_P256, YEAR, NOW) for _ in range(2))
    assert first.certificate.subject != second.certificate.subject


def test_intermediate_never_outlives_the_upstream() -> None:
    root = _root(not_after=NOW + 10 * DAY, not_before=NOW - DAY)
    ca = create_intermediate_ca(_upstream(root), TD, KeyType.EC_P256, YEAR, NOW)
    assert ca.certificate.not_valid_after_utc == root.cert.not_valid_after_utc
    early = create_intermediate_ca(_upstream(root), TD, KeyType.EC_P256, YEAR, NOW - DAY)
    assert early.certificate.not_valid_before_utc == root.cert.not_valid_before_utc


def test_an_expired_upstream_signs_nothing() -> None:
    root = _root(not_after=NOW - DAY)
    with pytest.raises(ValueError, match="upstream CA expired"):
        create_intermediate_ca(_upstream(root), TD, KeyType.EC_P256, YEAR, NOW)


def test_chain_under_an_upstream_intermediate_ends_at_the_root() -> None:
    root = _root()
    corp = make_ca("corp issuing", root, trust_domain=None, key_identifiers=True, not_after=NOW + YEAR)
    ca = create_intermediate_ca(_upstream(corp, root.cert), TD, KeyType.EC_P256, YEAR, NOW)
    assert ca.above == (corp.cert, root.cert)
    assert ca.chain == (ca.certificate, corp.cert)
    assert ca.trust_anchor == root.cert
    leaf = _svid(ca)
    assert verify_chain([leaf, *ca.chain], {TD: [root.cert]}, NOW) == SpiffeId(TD, "/ns/a/sa/b")
    with pytest.raises(X509SvidError):
        verify_chain([leaf, ca.certificate], {TD: [root.cert]}, NOW)  # the upstream intermediate is needed


def test_svids_verify_against_the_root_alone_and_the_state_publishes_it_once() -> None:
    root = _root()
    upstream = _upstream(root)
    first = create_intermediate_ca(upstream, TD, KeyType.EC_P256, YEAR, NOW)
    second = create_intermediate_ca(upstream, TD, KeyType.EC_P384, YEAR, NOW + DAY)
    state = AuthorityState.new(first, now=NOW).prepare(new_slot(second, KeyType.EC_P256, "prepared", NOW))
    assert state.trust_bundle() == [root.cert]
    again = AuthorityState.from_secret_data(state.to_secret_data())
    assert again.trust_bundle() == [root.cert]
    for authority in (first, second, again.active_x509()):
        leaf = _svid(authority, NOW + DAY)
        assert verify_chain([leaf, *authority.chain], {TD: again.trust_bundle()}, NOW + DAY)
    with pytest.raises(X509SvidError):
        verify_chain([_svid(first)], {TD: [root.cert]}, NOW)  # without the intermediate: no path


def test_self_signed_authority_is_its_own_anchor() -> None:
    ca = create_self_signed_ca(TD, KeyType.EC_P256, YEAR, NOW)
    assert ca.above == () and ca.chain == () and ca.trust_anchor == ca.certificate


def test_intermediate_csr_names_the_trust_domain() -> None:
    key = ec_key()
    csr = intermediate_csr(key, TD)
    assert csr.is_signature_valid and csr.public_key() == key.public_key()
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://example.org"]


# The Secret.


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _secret(
    issued: Issued, *above: x509.Certificate, ca: list[x509.Certificate] | None = None
) -> dict[str, str]:
    chain = b"".join(c.public_bytes(Encoding.PEM) for c in (issued.cert, *above))
    data = {"tls.crt": _b64(chain), "tls.key": _b64(issued.key_pem)}
    if ca is not None:
        data["ca.crt"] = _b64(b"".join(c.public_bytes(Encoding.PEM) for c in ca))
    return data


def test_a_root_alone_is_an_upstream() -> None:
    root = _root()
    upstream = parse_upstream_secret(_secret(root), NOW, WHERE)
    assert upstream.certificate == root.cert and upstream.above == ()


def test_ca_crt_supplies_the_root_above_an_issuing_ca() -> None:
    root = _root()
    other = _root()
    corp = make_ca("corp issuing", root, trust_domain=None, not_after=NOW + YEAR)
    upstream = parse_upstream_secret(_secret(corp, ca=[other.cert, root.cert]), NOW, WHERE)
    assert upstream.certificate == corp.cert and upstream.above == (root.cert,)
    with_root = parse_upstream_secret(_secret(corp, root.cert, ca=[root.cert]), NOW, WHERE)
    assert with_root.above == (root.cert,)


def test_traditional_key_formats_are_accepted() -> None:
    root = _root(key=rsa_key())
    data = _secret(root)
    data["tls.key"] = _b64(
        root.key.private_bytes(Encoding.PEM, PrivateFormat.TraditionalOpenSSL, NoEncryption())
    )
    assert parse_upstream_secret(data, NOW, WHERE).certificate == root.cert


def _bad_cases() -> dict[str, tuple[dict[str, str], str]]:
    root = _root()
    corp = make_ca("corp issuing", root, trust_domain=None, not_after=NOW + YEAR)
    leaf_only = make_ca("not a ca", root, trust_domain=None, ca=False, usage={"digital_signature"})
    no_cert_sign = make_ca("no certSign", None, trust_domain=None, usage={"digital_signature", "crl_sign"})
    expired = _root(not_before=NOW - 2 * YEAR, not_after=NOW - DAY)
    future = _root(not_before=NOW + DAY, not_after=NOW + YEAR)
    encrypted = _secret(root)
    encrypted["tls.key"] = _b64(
        root.key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, BestAvailableEncryption(b"secret"))
    )
    mismatched = _secret(root)
    mismatched["tls.key"] = _secret(_root())["tls.key"]
    broken = _secret(corp, _root().cert)
    garbage = _secret(root)
    garbage["tls.crt"] = _b64(b"-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n")
    return {
        "no keys at all": ({}, r"has no tls\.crt and no tls\.key"),
        "no tls.key": ({"tls.crt": _secret(root)["tls.crt"]}, r"has no tls\.key \(it needs"),
        "ca.crt and ca.key (another layout)": (
            {"ca.crt": _secret(root)["tls.crt"], "ca.key": _secret(root)["tls.key"]},
            r"has no tls\.crt and no tls\.key",
        ),
        "tls.crt not PEM": (garbage, r"tls\.crt is not PEM certificates"),
        "tls.crt not base64": ({**_secret(root), "tls.crt": "%%%"}, r"tls\.crt is not PEM certificates"),
        "encrypted key": (encrypted, r"tls\.key is not an unencrypted PEM private key"),
        "key does not match": (mismatched, r"tls\.key does not match the first certificate of tls\.crt"),
        "not a CA": (
            _secret(leaf_only),
            r"tls\.crt is not a CA that can sign intermediates: .*cA=true missing",
        ),
        "no keyCertSign": (_secret(no_cert_sign), r"not a CA that can sign intermediates: .*keyCertSign"),
        "expired": (_secret(expired), r"CN=corp root,O=kubespiffe tests expired at"),
        "not yet valid": (_secret(future), r"is not valid before"),
        "chain does not link": (broken, r"CN=corp issuing,O=kubespiffe tests is not issued by"),
        "ca.crt is not the issuer": (_secret(corp, ca=[_root().cert]), r"no certificate in ca\.crt issued"),
    }


BAD = _bad_cases()


@pytest.mark.parametrize("case", list(BAD))
def test_bad_upstream_secrets_are_refused_with_the_reason(case: str) -> None:
    data, message = BAD[case]
    with pytest.raises(UpstreamError, match=f"^{WHERE}.*{message}") as caught:
        parse_upstream_secret(data, NOW, WHERE)
    assert isinstance(caught.value, KubespiffeError)
    assert "BEGIN" not in str(caught.value) and "PRIVATE" not in str(caught.value)


# The probe: what verifiers will do with SVIDs under the new intermediate, checked before it is used.


class _Fixed:
    """An upstream that signs with a given CA (the Secret's job, without the API server)."""

    def __init__(self, upstream: X509Authority) -> None:
        self.upstream = upstream

    def __str__(self) -> str:
        return "test upstream"

    async def sign(
        self, trust_domain: TrustDomain, key_type: KeyType, ttl: dt.timedelta, now: dt.datetime
    ) -> X509Authority:
        return create_intermediate_ca(self.upstream, trust_domain, key_type, ttl, now)

    def adopts(self, authority: X509Authority) -> bool:
        return authority.above[:1] == (self.upstream.certificate,)


def _constrained(permitted: list[x509.GeneralName] | None, excluded: list[x509.GeneralName] | None) -> Issued:
    constraint = x509.NameConstraints(permitted_subtrees=permitted, excluded_subtrees=excluded)
    return _root(extra=[(constraint, True)])


async def test_new_intermediate_passes_the_probe() -> None:
    root = _root()
    ca = await new_intermediate(_Fixed(_upstream(root)), TD, KeyType.EC_P256, YEAR, NOW, PROBE, DNS)
    assert ca.trust_anchor == root.cert and ca.chain == (ca.certificate,)


@pytest.mark.parametrize(
    ("issued", "message"),
    [
        (
            _constrained([x509.UniformResourceIdentifier("other.org")], None),
            r"spiffe://example\.org/kubespiffe/kubespiffed is outside the name constraints",
        ),
        (
            _constrained(None, [x509.UniformResourceIdentifier("example.org")]),
            r"spiffe://example\.org/kubespiffe/kubespiffed is excluded by the name constraints",
        ),
        (
            _constrained([x509.DNSName("corp.internal")], None),
            r"kubespiffed is outside the name constraints",
        ),
        (_root(path_length=0), r"allows 0 CAs below it"),
    ],
    ids=["URI permitted elsewhere", "trust domain excluded", "DNS names not permitted", "pathLen 0"],
)
async def test_an_upstream_that_cannot_sign_for_the_trust_domain_is_refused(
    issued: Issued, message: str
) -> None:
    with pytest.raises(
        UpstreamError, match=f"^test upstream: an SVID for {PROBE} .*would not verify: .*{message}"
    ):
        await new_intermediate(_Fixed(_upstream(issued)), TD, KeyType.EC_P256, YEAR, NOW, PROBE, DNS)


async def test_name_constraints_that_admit_the_trust_domain_are_fine() -> None:
    issued = _constrained(
        [
            x509.UniformResourceIdentifier("example.org"),
            x509.DNSName("kubespiffe-system.svc"),
            x509.DNSName("kubespiffed"),
        ],
        None,
    )
    ca = await new_intermediate(_Fixed(_upstream(issued)), TD, KeyType.EC_P256, YEAR, NOW, PROBE, DNS)
    leaf = _svid(ca)
    assert verify_chain([leaf, *ca.chain], {TD: [issued.cert]}, NOW) == SpiffeId(TD, "/ns/a/sa/b")


class _Later(_Fixed):
    """An upstream that signs `later` than the `now` it was given, starting its certificate then, as
    cert-manager's CA issuer does (no backdating; kubespiffed's own CAs start CLOCK_SKEW early)."""

    def __init__(self, upstream: X509Authority, later: dt.timedelta) -> None:
        super().__init__(upstream)
        self.later = later

    async def sign(
        self, trust_domain: TrustDomain, key_type: KeyType, ttl: dt.timedelta, now: dt.datetime
    ) -> X509Authority:
        return create_intermediate_ca(
            self.upstream, trust_domain, key_type, ttl, now + self.later + CLOCK_SKEW
        )


async def test_an_intermediate_starting_after_now_is_used_from_its_start() -> None:
    """A CertificateRequest answered in the next second: its intermediate starts after `now` (CI run at
    e540582: kubespiffed refused to start, "not valid before")."""
    now = dt.datetime.now(dt.UTC)
    root = _root_now()
    later = dt.timedelta(seconds=1)  # the next second whatever `now`'s fraction: a start after `now`
    started = time.monotonic()
    ca = await new_intermediate(_Later(_upstream(root), later), TD, KeyType.EC_P256, YEAR, now, PROBE, DNS)
    assert ca.certificate.not_valid_before_utc == (now + later).replace(microsecond=0)
    assert time.monotonic() - started < 2.5, "waited for its start, no longer"
    with pytest.raises(UpstreamError, match=r"is not valid before"):
        await new_intermediate(
            _Later(_upstream(root), CLOCK_SKEW * 2), TD, KeyType.EC_P256, YEAR, now, PROBE, DNS
        )


async def test_an_upstream_about_to_expire_is_refused() -> None:
    root = _root(not_after=NOW + MIN_INTERMEDIATE_LIFETIME - dt.timedelta(minutes=1))
    with pytest.raises(
        UpstreamError, match=r"the intermediate would expire in 0:59:00 .*renew the upstream CA"
    ):
        await new_intermediate(_Fixed(_upstream(root)), TD, KeyType.EC_P256, YEAR, NOW, PROBE, DNS)


async def test_a_short_upstream_is_used_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    root = _root(not_after=NOW + 10 * DAY)
    with caplog.at_level(logging.WARNING, "kubespiffed.authority"):
        ca = await new_intermediate(_Fixed(_upstream(root)), TD, KeyType.EC_P256, YEAR, NOW, PROBE, DNS)
    assert ca.certificate.not_valid_after_utc == NOW + 10 * DAY
    assert "before --ca-ttl" in caplog.text


# Flags.


@pytest.mark.parametrize(
    ("text", "ref"),
    [
        ("ClusterIssuer/corp-ca", IssuerRef("ClusterIssuer", "corp-ca")),
        ("Issuer/ca", IssuerRef("Issuer", "ca")),
        (
            "AWSPCAClusterIssuer/pca/awspca.cert-manager.io",
            IssuerRef("AWSPCAClusterIssuer", "pca", "awspca.cert-manager.io"),
        ),
    ],
)
def test_issuer_refs(text: str, ref: IssuerRef) -> None:
    assert IssuerRef.parse(text) == ref
    assert str(ref) == text


@pytest.mark.parametrize("text", ["corp-ca", "Issuer/", "/ca", "a/b/c/d", "Issuer//g"])
def test_bad_issuer_refs(text: str) -> None:
    with pytest.raises(ValueError, match="is not kind/name"):
        IssuerRef.parse(text)


def test_flags_exclude_each_other_and_the_webhook_passes_the_trust_domain(
    capsys: pytest.CaptureFixture[str],
) -> None:
    base = ["--trust-domain", "example.org", "--namespace", "ks"]
    with pytest.raises(SystemExit):
        parse_args([*base, "--upstream-ca-secret", "a", "--upstream-cert-manager-issuer", "Issuer/b"])
    assert "exclude each other" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args([*base, "--upstream-cert-manager-issuer", "corp-ca"])
    assert "--upstream-cert-manager-issuer: 'corp-ca' is not kind/name" in capsys.readouterr().err
    webhook = [*base, "--webhook-port", "9446", "--agent-image", "agent:1"]
    plain = parse_args(webhook).injection().agent_command()
    assert "--trust-domain" not in plain  # a self-signed CA names its trust domain in the bundle
    for flag in (["--upstream-ca-secret", "corp-ca"], ["--upstream-cert-manager-issuer", "ClusterIssuer/c"]):
        command = parse_args([*webhook, *flag]).injection().agent_command()
        assert command[-2:] == ["--trust-domain", "example.org"]


def test_pod_certificates_carry_the_intermediate() -> None:
    root = _root()
    ca = create_intermediate_ca(_upstream(root), TD, KeyType.EC_P256, YEAR, NOW)
    key = ec_key()
    issued = sign_pod_certificate(ca, key.public_key(), SpiffeId(TD, "/ns/a/sa/b"), [], HOUR, 24 * HOUR, NOW)
    chain = x509.load_pem_x509_certificates(issued.chain_pem.encode())
    assert chain == [issued.leaf, ca.certificate]
    assert verify_chain(chain, {TD: [root.cert]}, NOW)


# cert-manager: what each state of a CertificateRequest becomes (the real controller runs in
# tests/integration/test_upstream_certmanager.py).


class _FakeRequests:
    """Enough of lightkube's AsyncClient for CertManagerUpstream: one request, whose status a test sets."""

    def __init__(self, status: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        self._status = status
        self.created: dict[str, Any] = {}
        self.deleted: list[str] = []

    async def create(self, obj: Any) -> Any:
        self.created = obj.to_dict()
        return CertificateRequest(metadata=ObjectMeta(name="kubespiffe-intermediate-x", namespace="ks"))

    async def get(self, kind: Any, name: str, namespace: str) -> Any:
        return CertificateRequest.from_dict({**self.created, "status": self._status(self.created)})

    async def delete(self, kind: Any, name: str, namespace: str) -> None:
        self.deleted.append(name)


def _issue(root: Issued, with_ca: bool = True) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """What cert-manager's CA issuer writes: the CSR's key certified as a CA by `root`."""

    def status(created: dict[str, Any]) -> dict[str, Any]:
        csr = x509.load_pem_x509_csr(base64.b64decode(created["spec"]["request"]))
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(csr.subject)
            .issuer_name(root.cert.subject)
            .public_key(csr.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - HOUR)
            .not_valid_after(now + YEAR)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .add_extension(key_usage(CA_USAGE), True)
            .add_extension(csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value, False)
            .sign(root.key, hashes.SHA256())
        )
        result = {
            "conditions": [{"type": "Ready", "status": "True", "reason": "Issued"}],
            "certificate": _b64(cert.public_bytes(Encoding.PEM)),
        }
        if with_ca:
            result["ca"] = _b64(root.cert_pem)
        return result

    return status


def _root_now() -> Issued:
    return _root(not_before=dt.datetime.now(dt.UTC) - DAY, not_after=dt.datetime.now(dt.UTC) + 3 * YEAR)


async def test_cert_manager_request_and_result() -> None:
    root = _root_now()
    fake = _FakeRequests(_issue(root))
    upstream = CertManagerUpstream(
        cast(AsyncClient, fake), "ks", IssuerRef("ClusterIssuer", "corp"), poll=0.01
    )
    ca = await upstream.sign(TD, KeyType.EC_P256, YEAR, dt.datetime.now(dt.UTC))
    spec = fake.created["spec"]
    assert spec["isCA"] is True and spec["usages"] == ["cert sign", "crl sign"]
    assert spec["issuerRef"] == {"kind": "ClusterIssuer", "name": "corp", "group": "cert-manager.io"}
    assert spec["duration"] == f"{int(YEAR.total_seconds())}s"
    assert fake.created["metadata"]["labels"]["app.kubernetes.io/component"] == "upstream-authority"
    assert ca.above == (root.cert,) and ca.trust_anchor == root.cert and fake.deleted
    assert upstream.adopts(ca) and not upstream.adopts(create_self_signed_ca(TD, KeyType.EC_P256, YEAR, NOW))


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (
            {"conditions": [{"type": "Denied", "status": "True", "message": "policy says no"}]},
            "is Denied: policy says no",
        ),
        (
            {"conditions": [{"type": "Ready", "status": "False", "reason": "Failed", "message": "bad CSR"}]},
            "failed: bad CSR",
        ),
        (
            {"conditions": [{"type": "InvalidRequest", "status": "True", "message": "no"}]},
            "is InvalidRequest: no",
        ),
        (
            {
                "conditions": [
                    {"type": "Ready", "status": "False", "reason": "Pending", "message": "issuer not found"}
                ]
            },
            r"not Ready after 0s \(Ready=False Pending: issuer not found\); is cert-manager running",
        ),
    ],
    ids=["denied", "failed", "invalid", "pending"],
)
async def test_cert_manager_refusals_are_upstream_errors(status: dict[str, Any], message: str) -> None:
    fake = _FakeRequests(lambda _: status)
    upstream = CertManagerUpstream(
        cast(AsyncClient, fake), "ks", IssuerRef("Issuer", "corp"), timeout=0.05, poll=0.01
    )
    with pytest.raises(
        UpstreamError,
        match=f"^cert-manager Issuer/corp: CertificateRequest kubespiffe-intermediate-x {message}",
    ):
        await upstream.sign(TD, KeyType.EC_P256, YEAR, dt.datetime.now(dt.UTC))
    assert fake.deleted == ["kubespiffe-intermediate-x"]


async def test_cert_manager_without_a_ca_to_publish_is_refused() -> None:
    fake = _FakeRequests(_issue(_root_now(), with_ca=False))
    upstream = CertManagerUpstream(cast(AsyncClient, fake), "ks", IssuerRef("Issuer", "corp"), poll=0.01)
    with pytest.raises(UpstreamError, match=r"returned no CA certificate \(status\.ca\) to publish"):
        await upstream.sign(TD, KeyType.EC_P256, YEAR, dt.datetime.now(dt.UTC))


# The leader: an upstream that cannot sign leaves the current slot signing, and is asked again later.


class _Failing(_Fixed):
    def __init__(self, upstream: X509Authority) -> None:
        super().__init__(upstream)
        self.calls = 0
        self.fail = True

    async def sign(
        self, trust_domain: TrustDomain, key_type: KeyType, ttl: dt.timedelta, now: dt.datetime
    ) -> X509Authority:
        self.calls += 1
        if self.fail:
            raise UpstreamError("test upstream: down for maintenance")
        return await super().sign(trust_domain, key_type, ttl, now)


async def test_the_leader_keeps_signing_when_the_upstream_cannot(caplog: pytest.LogCaptureFixture) -> None:
    now = dt.datetime.now(dt.UTC)
    root = _root_now()
    upstream = _Failing(_upstream(root))
    state = AuthorityState.new(create_self_signed_ca(TD, KeyType.EC_P256, YEAR, now), now=now)
    authority = LiveAuthority(
        cast(AsyncClient, None),
        namespace="ks",
        secret="authority",
        stored=Stored(state, "1"),
        trust_domain=TD,
        ca_key_type=KeyType.EC_P256,
        ca_ttl=YEAR,
        jwt_key_type=KeyType.EC_P256,
        policy=RotationPolicy(dt.timedelta(minutes=5), dt.timedelta(days=30), dt.timedelta(hours=24)),
        leader=cast(LeaderElector, None),
        upstream=upstream,
        probe=(PROBE, DNS),
        upstream_retry=dt.timedelta(seconds=30),
    )
    assert authority._wants_upstream(state)  # a self-signed slot is not the upstream's: rotate at once
    with caplog.at_level(logging.ERROR, "kubespiffed.authority"):
        assert await authority._new_slot(state, now) is None
    assert f"still signing with slot {state.active.id}: test upstream: down for maintenance" in caplog.text
    upstream.fail = False
    assert await authority._new_slot(state, now + dt.timedelta(seconds=10)) is None  # not asked again yet
    assert upstream.calls == 1
    slot = await authority._new_slot(state, now + dt.timedelta(seconds=31))
    assert slot is not None and slot.authority.trust_anchor == root.cert and upstream.calls == 2
    assert not authority._wants_upstream(state.prepare(slot))
    assert authority.bundle().x509_authorities == (state.active_x509().certificate,)
