"""Write the seed corpora, tests/fuzz/corpus/<target>/, from the unit tests' kinds of cases.

    python -m tests.fuzz.seeds [TARGET ...]

Seeds are named by content (seed-<sha256 prefix>), so rerunning adds nothing twice; CSRs and
certificates come out different on every run (fresh keys), so rerun only to add cases, and commit only
the new files. Inputs that once crashed a target are added by hand as regression-<what>, never removed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sys
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import (
    BasicConstraints,
    DNSName,
    Name,
    NameAttribute,
    SubjectAlternativeName,
    UniformResourceIdentifier,
)
from cryptography.x509.oid import NameOID
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import struct_pb2

from kubespiffe.constants import API_VERSION
from kubespiffe.spiffe.bundle import Bundle, bundle_to_json, certificates_to_der, certificates_to_pem
from tests.fuzz.common import SEPARATOR
from tests.fuzz.fuzz_spiffe import SVID_CA, TRUST_DOMAIN
from tests.fuzz.fuzz_tokens import AUDIENCE, ISSUER, JWT_AUDIENCE, sign
from tests.fuzz.targets import CORPUS
from tests.unit.certs import DAY, NOW, csr_der, make_ca, make_csr, make_leaf, rsa_key, uris

FAR_FUTURE = 4102444800  # 2100-01-01: signed seeds stay unexpired


def _spiffe_ids() -> list[bytes]:
    texts = [
        "spiffe://example.org/ns/a/sa/web",
        "spiffe://example.org",
        "SPIFFE://EXAMPLE.org/Keep/Case",
        "spiffe://a-b_c.d/x-y_z.0",
        "spiffe://example.org/..a/a../.a.",
        "spiffe://example.org/a/../b",
        "spiffe://example.org//a",
        "spiffe://example.org/a?x=1",
        "spiffe://example.org/a#frag",
        "spiffe://user@example.org/a",
        "spiffe://example.org:8443/a",
        "spiffe://exa%6dple.org/a",
        "spiffe://\u212aube.example/x",
        "spiffe://[::1]/a",
        "example.org",
        "https://example.org/a",
        "spiffe://" + "a" * 255 + "/x",
    ]
    return [t.encode() for t in texts]


def _bundles() -> tuple[list[bytes], list[bytes], list[bytes]]:
    cas = [make_ca("one"), make_ca("two", key=rsa_key())]
    jwt_key = ec.generate_private_key(ec.SECP256R1()).public_key()
    document = bundle_to_json(Bundle(TRUST_DOMAIN, tuple(c.cert for c in cas), {"k1": jwt_key}, 3, 300))
    keys = json.loads(document)["keys"]
    extras = [
        {"keys": []},
        {"keys": [{**keys[2], "d": "AAAA"}]},
        {"keys": [{**keys[0], "x5c": [keys[1]["x5c"][0]]}]},
        {"keys": [{"kty": "OKP", "use": "jwt-svid", "kid": "o"}, {"use": "other"}], "spiffe_sequence": -1},
        {"keys": [{**keys[2], "kid": ""}, keys[2]]},
    ]
    json_seeds = [document] + [json.dumps(e).encode() for e in extras]
    pem = certificates_to_pem([c.cert for c in cas])
    pem_seeds = [pem, b"text before\n" + pem, pem[:-30], pem.replace(b"CERTIFICATE", b"PRIVATE KEY", 2)]
    der = certificates_to_der([c.cert for c in cas])
    ed_leaf = make_leaf(cas[0], key=ed25519.Ed25519PrivateKey.generate())
    der_seeds = [der, der[:300], ed_leaf.cert.public_bytes(Encoding.DER)]
    return json_seeds, pem_seeds, der_seeds


def _csrs() -> list[bytes]:
    requests = [
        make_csr(ec.generate_private_key(ec.SECP256R1())),
        make_csr(ec.generate_private_key(ec.SECP384R1()), Name([NameAttribute(NameOID.COMMON_NAME, "x")])),
        make_csr(rsa_key()),
        make_csr(
            ec.generate_private_key(ec.SECP256R1()),
            extensions=[
                (BasicConstraints(ca=True, path_length=None), True),
                (SubjectAlternativeName([UniformResourceIdentifier("spiffe://evil/x"), DNSName("a")]), False),
            ],
        ),
        make_csr(ec.generate_private_key(ec.SECP521R1())),
        make_csr(ed25519.Ed25519PrivateKey.generate()),
    ]
    ders = [csr_der(r) for r in requests]
    return [*ders, ders[0][:-4] + b"\x00\x00\x00\x00"]


def _claims(**changes: object) -> bytes:
    claims = {
        "iss": ISSUER,
        "aud": [AUDIENCE],
        "sub": "system:serviceaccount:team:web",
        "iat": int(time.time()),
        "exp": FAR_FUTURE,
        "kubernetes.io": {
            "namespace": "team",
            "serviceaccount": {"name": "web", "uid": "sa-uid"},
            "pod": {"name": "web-1", "uid": "pod-uid"},
            "node": {"name": "node-a", "uid": "node-uid"},
        },
    }
    return json.dumps({**claims, **changes}).encode()


def _tokens() -> tuple[list[bytes], list[bytes], list[bytes], list[bytes]]:
    claims = [
        _claims(),
        _claims(aud=AUDIENCE),
        _claims(aud=[AUDIENCE, "https://kubernetes.default.svc"]),
        _claims(iss="https://evil"),
        _claims(exp=1),
        _claims(**{"kubernetes.io": {"namespace": "team", "pod": None}}),
        _claims(sub="system:serviceaccount:other:web"),
    ]
    tokens = [sign(c).encode() for c in claims]
    unsigned = [
        b"e30.e30.",
        b"eyJhbGciOiJub25lIn0." + base64.urlsafe_b64encode(claims[0]).rstrip(b"=") + b".",
        tokens[0].rsplit(b".", 1)[0] + b".AAAA",
        sign(claims[0], kid="unknown").encode(),
    ]
    svid_claims = [
        json.dumps({"sub": "spiffe://example.org/w", "aud": [JWT_AUDIENCE], "exp": FAR_FUTURE}).encode(),
        json.dumps(
            {"sub": "spiffe://example.org/w", "aud": JWT_AUDIENCE, "exp": FAR_FUTURE, "iat": 1}
        ).encode(),
        json.dumps({"sub": "spiffe://other.org/w", "aud": [JWT_AUDIENCE], "exp": FAR_FUTURE}).encode(),
        json.dumps({"sub": "spiffe://example.org/w", "aud": ["x"], "exp": FAR_FUTURE}).encode(),
    ]
    svids = [sign(c).encode() for c in svid_claims]
    return claims, tokens + unsigned, svid_claims, svids + unsigned


_FACTS = SEPARATOR.join([b"team", b"web", b"web-1", b"pod-uid", b"node-a", b"app=web\nexample.com/tier=db"])
_HOSTILE_FACTS = SEPARATOR.join([b"a/b", b"", b"..", b"\xff", b"N", b"app=x/y\nexample.com/tier=UPPER"])


def _templates() -> tuple[list[bytes], list[bytes]]:
    spiffe = [
        "spiffe://{trustDomain}/ns/{namespace}/sa/{serviceAccount}",
        "spiffe://{trustDomain}/app/{label:app}",
        "spiffe://{trustDomain}/t/{label:example.com/tier}",
        "spiffe://{trustDomain}/{namespace}-{serviceAccount}.v1",
        "spiffe://example.org/node/{nodeName}/uid/{podUID}/{podName}",
        "spiffe://{trustDomain}/x/./y",
        "spiffe://{trustDomain}/{bogus}",
        "spiffe://{trustDomain}/{label:-app}",
        "spiffe://{namespace}.example.org/a",
        "http://{trustDomain}/x",
    ]
    dns = [
        "{podName}.{namespace}.svc",
        "{label:app}-{nodeName}.example.com",
        "{label:example.com/tier}.example",
        "web.team.svc.cluster.local",
        "*.team.svc",
        "{trustDomain}.x",
        "a..b",
        "p{podUID}.example",
    ]
    with_facts = [t.encode() + SEPARATOR + f for t in spiffe for f in (_FACTS, _HOSTILE_FACTS)]
    dns_with_facts = [t.encode() + SEPARATOR + f for t in dns for f in (_FACTS, _HOSTILE_FACTS)]
    return with_facts, dns_with_facts


def _registrations() -> list[bytes]:
    meta = {"name": "r", "uid": "u", "generation": 1, "creationTimestamp": "2026-01-01T00:00:00Z"}
    full_spec = {
        "spiffeIDTemplate": "spiffe://{trustDomain}/app/{label:app}",
        "serviceAccountNames": ["web", "api"],
        "podSelector": {
            "matchLabels": {"app": "web"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["db"]},
                {"key": "example.com/x", "operator": "Exists"},
            ],
        },
        "dnsNameTemplates": ["{podName}.{namespace}.svc"],
        "x509SVIDTTL": "1h",
        "jwtSVIDTTL": "5m",
        "federatesWith": ["partner.example"],
        "hint": "internal",
    }
    objects = [
        {"apiVersion": API_VERSION, "kind": "WorkloadRegistration", "metadata": {**meta, "namespace": "a"}},
        {
            "apiVersion": API_VERSION,
            "kind": "WorkloadRegistration",
            "metadata": {**meta, "namespace": "a"},
            "spec": full_spec,
        },
        {
            "apiVersion": API_VERSION,
            "kind": "ClusterWorkloadRegistration",
            "metadata": meta,
            "spec": {**full_spec, "namespaceSelector": {"matchLabels": {"team": "x"}}},
        },
        {"apiVersion": API_VERSION, "kind": "WorkloadRegistration", "metadata": meta, "spec": {"bogus": 1}},
    ]
    return [json.dumps(o).encode() for o in objects]


def _reviews() -> list[bytes]:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web", "namespace": "apps", "annotations": {"a": "b"}},
        "spec": {
            "containers": [{"name": "app", "image": "app:1", "env": [{"name": "X", "value": "1"}]}],
            "initContainers": [{"name": "init", "image": "i:1"}],
            "volumes": [{"name": "data", "emptyDir": {}}],
        },
    }

    def review(operation: str, sub: str = "", obj: object = pod, old: object = None) -> bytes:
        request = {
            "uid": "u-1",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "operation": operation,
            "namespace": "apps",
            "subResource": sub,
            "object": obj,
            "oldObject": old,
        }
        return json.dumps(
            {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}
        ).encode()

    debug = {**pod, "spec": {**pod["spec"], "ephemeralContainers": [{"name": "dbg", "image": "busybox"}]}}  # type: ignore[dict-item]
    injected_meta = {**pod["metadata"], "annotations": {"kubespiffe.io/injected": "0.1.0"}}  # type: ignore[dict-item]
    return [
        review("CREATE"),
        review("CREATE", obj={**pod, "spec": {"hostNetwork": True, "containers": []}}),
        review("UPDATE", "ephemeralcontainers", {**debug, "metadata": injected_meta}, pod),
        review("DELETE"),
        b'{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{}}',
    ]


def _sds() -> list[bytes]:
    metadata = struct_pb2.Struct()
    metadata.update({"disable_spiffe_cert_validation": True})
    requests = [
        discovery_pb2.DiscoveryRequest(resource_names=["default", "ROOTCA"]),
        discovery_pb2.DiscoveryRequest(resource_names=["ALL", "spiffe://fed.test"], version_info="1"),
        discovery_pb2.DiscoveryRequest(
            resource_names=["spiffe://example.org/ns/a/sa/web"], node=base_pb2.Node(id="n", metadata=metadata)
        ),
        discovery_pb2.DiscoveryRequest(),
        discovery_pb2.DiscoveryRequest(
            resource_names=["Default", "spiffe://elsewhere.test"], response_nonce="x"
        ),
    ]
    return [r.SerializeToString() for r in requests]


def _chains() -> list[bytes]:
    intermediate = make_ca("fuzz intermediate", SVID_CA)
    chains = [
        [make_leaf(SVID_CA)],
        [make_leaf(intermediate, "spiffe://example.org/ns/a/sa/web"), intermediate],
        [make_leaf(SVID_CA, names=uris("spiffe://example.org/a", "spiffe://example.org/b"))],
        [make_leaf(SVID_CA, not_after=NOW - DAY)],
        [make_leaf(SVID_CA, ca=True)],
        [make_leaf(make_ca("stranger"))],
        [make_leaf(SVID_CA, "spiffe://other.org/x")],
    ]
    return [certificates_to_der([c.cert for c in chain]) for chain in chains]


def _federations() -> list[bytes]:
    spec = {
        "trustDomain": "partner.example",
        "bundleEndpointURL": "https://bundle.partner.example:8443/bundle",
        "bundleEndpointProfile": {
            "type": "https_spiffe",
            "endpointSPIFFEID": "spiffe://partner.example/kubespiffe/kubespiffed",
        },
        "trustDomainBundle": '{"keys": [], "spiffe_sequence": 1}',
    }
    meta = {"name": "partner", "uid": "uid-1", "generation": 3}
    web = {**spec, "bundleEndpointProfile": {"type": "https_web"}, "bundleEndpointURL": "https://1.2.3.4/b?x"}
    objects = [
        {"apiVersion": API_VERSION, "kind": "FederatedTrustDomain", "metadata": meta, "spec": spec},
        {"apiVersion": API_VERSION, "kind": "FederatedTrustDomain", "metadata": meta, "spec": web},
        {
            "apiVersion": API_VERSION,
            "kind": "FederatedTrustDomain",
            "metadata": meta,
            "spec": {**spec, "bundleEndpointURL": "https://u:p@host:99999/#f"},
            "status": {"bundle": "{}", "sequence": 4},
        },
    ]
    return [json.dumps(o).encode() for o in objects]


def _oidc() -> list[bytes]:
    urls = [
        "https://oidc.example.com",
        "https://oidc.example.com:8443/tenant/",
        "http://oidc.example.com",
        "https://user@oidc.example.com",
        "https://oidc.example.com/?q",
        "https://[::1]:99999",
        "https://",
    ]
    return [u.encode() for u in urls]


def main(only: list[str]) -> None:
    bundle_json, bundle_pem, bundle_der = _bundles()
    claims, tokens, svid_claims, svids = _tokens()
    spiffe_templates, dns_templates = _templates()
    corpora = {
        "spiffeid": _spiffe_ids(),
        "bundle_json": bundle_json,
        "bundle_pem": bundle_pem,
        "bundle_der": bundle_der,
        "x509svid": _chains(),
        "oidc": _oidc(),
        "csr": _csrs(),
        "token": tokens,
        "token_signed": claims,
        "token_review": tokens,
        "jwtsvid": svids,
        "jwtsvid_signed": svid_claims,
        "template_spiffe": spiffe_templates,
        "template_dns": dns_templates,
        "registration": _registrations(),
        "federation": _federations(),
        "review": _reviews(),
        "sds": _sds(),
    }
    for name, inputs in corpora.items():
        if only and name not in only:
            continue
        directory = CORPUS / name
        directory.mkdir(parents=True, exist_ok=True)
        for data in inputs:
            path: Path = directory / f"seed-{hashlib.sha256(data).hexdigest()[:16]}"
            if not path.exists():
                path.write_bytes(data)
        print(f"{name}: {len(list(directory.iterdir()))} files")


if __name__ == "__main__":
    main(sys.argv[1:])  # target names: only those (default: every target)
