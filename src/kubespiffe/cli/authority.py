"""`kubespiffe ca show|rotate` and `kubespiffe bundle show`: the authority as an operator sees it.

They read (and, for rotate, annotate) the authority Secret through the caller's kubeconfig; the Lease
holder among the kubespiffed replicas carries the rotation out.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys

from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Secret
from lightkube.types import PatchType

from kubespiffe.authority import store
from kubespiffe.constants import ROTATE_ANNOTATION
from kubespiffe.federation.fetch import BundleFetchError, Endpoint, fetch_bundle
from kubespiffe.kube.client import load_config, make_client
from kubespiffe.spiffe.bundle import (
    Bundle,
    bundle_to_json,
    certificates_to_pem,
    jwks_json,
    parse_bundle_json,
    parse_pem_certificates,
)
from kubespiffe.spiffe.spiffeid import SpiffeId, TrustDomain
from kubespiffe.spiffe.x509svid import id_from_certificate


async def _load(args: argparse.Namespace) -> store.Stored:
    client = make_client(load_config(args.kubeconfig), field_manager="kubespiffe-cli")
    try:
        stored = await store.load(client, args.namespace, args.secret)
    finally:
        await client.close()
    if stored is None:
        raise SystemExit(
            f"kubespiffe: no authority Secret {args.namespace}/{args.secret}; is kubespiffed running?"
        )
    return stored


def ca_show(args: argparse.Namespace) -> int:
    stored = asyncio.run(_load(args))
    state = stored.state
    print(f"sequence {state.sequence}" + ("   (rotation requested)" if stored.rotate_requested else ""))
    print(f"{'SLOT':<14}{'STATE':<10}{'SINCE':<27}{'CA EXPIRES':<27}JWT KID")
    for slot in state.slots:
        print(
            f"{slot.id[:12]:<14}{slot.state:<10}{slot.since.isoformat(timespec='seconds'):<27}"
            f"{slot.not_after.isoformat(timespec='seconds'):<27}{slot.jwt_kid}"
        )
    return 0


async def _annotate(args: argparse.Namespace) -> None:
    client = make_client(load_config(args.kubeconfig), field_manager="kubespiffe-cli")
    try:
        annotation = {ROTATE_ANNOTATION: dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
        await client.patch(
            Secret,
            args.secret,
            Secret(metadata=ObjectMeta(annotations=annotation)),
            namespace=args.namespace,
            patch_type=PatchType.MERGE,
        )
    finally:
        await client.close()


def ca_rotate(args: argparse.Namespace) -> int:
    stored = asyncio.run(_load(args))
    if stored.state.prepared is not None:
        print(
            "kubespiffe: a prepared CA is already waiting to activate; see `kubespiffe ca show`",
            file=sys.stderr,
        )
        return 1
    asyncio.run(_annotate(args))
    print(
        "rotation requested: the leader publishes a new CA and JWT key now (bundle sequence bumped) and "
        "activates them after 3x the bundle refresh hint; `kubespiffe ca show` follows it"
    )
    return 0


def _from_endpoint(args: argparse.Namespace) -> Bundle:
    """Fetch from a bundle endpoint with the same checks kubespiffed applies (https_spiffe or https_web)."""
    if not args.trust_domain:
        raise SystemExit("kubespiffe: --endpoint needs --trust-domain")
    trust_domain = TrustDomain.parse(args.trust_domain)
    trust = None
    if args.endpoint_id:
        if not args.bootstrap:
            raise SystemExit("kubespiffe: https_spiffe (--endpoint-id) needs --bootstrap, the peer's bundle")
        with open(args.bootstrap, "rb") as f:
            data = f.read()
        trust = (
            parse_bundle_json(trust_domain, data)
            if data.lstrip().startswith(b"{")
            else Bundle(trust_domain, tuple(parse_pem_certificates(data)))
        )
    endpoint = Endpoint(
        trust_domain,
        args.endpoint,
        "https_spiffe" if args.endpoint_id else "https_web",
        SpiffeId.parse(args.endpoint_id) if args.endpoint_id else None,
    )
    try:
        return asyncio.run(fetch_bundle(endpoint, trust))
    except BundleFetchError as exc:
        raise SystemExit(f"kubespiffe: {exc}") from None


def bundle_show(args: argparse.Namespace) -> int:
    if args.endpoint:
        bundle = _from_endpoint(args)
    else:
        state = asyncio.run(_load(args)).state
        trust_domain = id_from_certificate(state.active_x509().certificate).trust_domain
        bundle = Bundle(trust_domain, tuple(state.trust_bundle()), state.jwt_authorities(), state.sequence)
    if args.format == "pem":
        sys.stdout.write(certificates_to_pem(list(bundle.x509_authorities)).decode())
    elif args.format == "jwks":
        sys.stdout.write(jwks_json(bundle.jwt_authorities).decode() + "\n")
    else:
        print(json.dumps(json.loads(bundle_to_json(bundle)), indent=2))
    return 0
