"""`kubespiffe fetch|validate --server`: straight to kubespiffed with the pod's token and trust bundle.

Its own module so that the socket commands, `probe` above all, do not import the issuer client (and with
it cryptography).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
from pathlib import Path

from kubespiffe.agent.files import write_x509_svids
from kubespiffe.agent.issuer_client import IssuerClient, IssuerError
from kubespiffe.spiffe.bundle import BundleError, parse_pem_certificates
from kubespiffe.spiffe.jwtsvid import JwtSvidError, validate
from kubespiffe.spiffe.spiffeid import SpiffeId, SpiffeIdError

EXIT_USAGE = 2
EXIT_INVALID = 8


def _fail(message: str, code: int) -> int:
    print(f"kubespiffe: {message}", file=sys.stderr)
    return code


def _client(args: argparse.Namespace) -> tuple[IssuerClient, str]:
    """An issuer API client and the pod token, from --server/--token-file/--bundle-file."""
    if not args.token_file or not args.bundle_file:
        raise ValueError("--server needs --token-file and --bundle-file")
    try:
        token = Path(args.token_file).read_text().strip()
        bundle = parse_pem_certificates(Path(args.bundle_file).read_bytes())
    except OSError as exc:
        raise ValueError(f"cannot read {exc.filename}: {exc.strerror}") from None
    server_id = SpiffeId.parse(args.server_id) if args.server_id else None
    return IssuerClient(args.server, bundle, server_id=server_id, server_name=args.server_name), token


async def _direct(args: argparse.Namespace) -> int:
    client, token = _client(args)
    try:
        if args.command == "validate":
            bundles = await anext(aiter(client.watch_bundles(token)))
            keys = {b.trust_domain: b.jwt_authorities for b in bundles.bundles()}
            result = validate(args.token, args.audience, keys, dt.datetime.now(dt.UTC))
            print(json.dumps({"spiffe_id": str(result.spiffe_id), "claims": dict(result.claims)}, indent=2))
        elif args.kind == "x509":
            x509 = await client.mint_x509(token, args.spiffe_id or "")
            if args.write:
                write_x509_svids(Path(args.write), x509.svids, x509.bundle)
            for index, svid in enumerate(x509.svids):
                print(f"{index}\t{svid.spiffe_id}\texpires {svid.expires_at.isoformat()}")
        else:
            for jwt_svid in await client.mint_jwt(token, args.audience, args.spiffe_id or ""):
                print(jwt_svid.token)
                print(
                    json.dumps(
                        {"spiffe_id": str(jwt_svid.spiffe_id), "expires": jwt_svid.expires_at.isoformat()}
                    )
                )
        return 0
    finally:
        await client.close()


def run_direct(args: argparse.Namespace) -> int:
    """The command against kubespiffed; its failures as one line and the documented exit code."""
    try:
        return asyncio.run(_direct(args))
    except IssuerError as exc:
        return _fail(str(exc), exc.exit_code)
    except JwtSvidError as exc:
        return _fail(f"invalid JWT-SVID: {exc}", EXIT_INVALID)
    except (ValueError, BundleError, SpiffeIdError) as exc:
        return _fail(str(exc), EXIT_USAGE)
