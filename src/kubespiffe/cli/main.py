"""`kubespiffe`: fetch SVIDs, and run a local development cluster."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from kubespiffe.agent.files import write_x509_svids
from kubespiffe.agent.issuer_client import DEFAULT_SERVER_NAME, FetchError, fetch_x509
from kubespiffe.spiffe.bundle import BundleError, parse_pem_certificates
from kubespiffe.spiffe.spiffeid import SpiffeId, SpiffeIdError

EXIT_USAGE = 2


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise SystemExit(_fail(f"cannot read the {what} {path}: {exc.strerror}", EXIT_USAGE)) from None


def _fail(message: str, code: int) -> int:
    print(f"kubespiffe: {message}", file=sys.stderr)
    return code


def cmd_fetch_x509(args: argparse.Namespace) -> int:
    token = _read(args.token_file, "token file").decode().strip()
    try:
        bundle = parse_pem_certificates(_read(args.bundle_file, "bundle file"))
        server_id = SpiffeId.parse(args.server_id) if args.server_id else None
    except (BundleError, SpiffeIdError) as exc:
        return _fail(str(exc), EXIT_USAGE)
    try:
        result = asyncio.run(
            fetch_x509(
                args.server,
                token,
                bundle,
                spiffe_id=args.spiffe_id or "",
                server_id=server_id,
                server_name=args.server_name,
            )
        )
    except FetchError as exc:
        return _fail(str(exc), exc.exit_code)
    except ValueError as exc:
        return _fail(str(exc), EXIT_USAGE)
    if args.write:
        write_x509_svids(Path(args.write), result.svids, result.bundle)
    for index, svid in enumerate(result.svids):
        print(f"{index}\t{svid.spiffe_id}\texpires {svid.expires_at.isoformat()}")
    return 0


def cmd_dev_up(args: argparse.Namespace) -> int:
    from kubespiffe.devenv.up import dev_up

    return dev_up(Path(args.dir), args.trust_domain)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kubespiffe", description="SPIFFE identities for Kubernetes pods.")
    commands = parser.add_subparsers(dest="command", required=True)

    fetch = commands.add_parser("fetch", help="fetch SVIDs for this pod").add_subparsers(
        dest="kind", required=True
    )
    x509 = fetch.add_parser(
        "x509",
        help="fetch X.509-SVIDs from kubespiffed",
        description=(
            "Make a private key here, send a CSR with the pod's token, and print the SPIFFE IDs granted. "
            "Exit codes: 3 no registration matches, 4 token refused, 5 server unreachable, "
            "6 server TLS identity wrong, 7 request refused, 2 usage."
        ),
    )
    x509.add_argument("--server", required=True, help="kubespiffed address, HOST:PORT")
    x509.add_argument("--token-file", required=True, help="the pod's projected ServiceAccount token")
    x509.add_argument("--bundle-file", required=True, help="trust bundle (PEM) to verify kubespiffed")
    x509.add_argument("--write", metavar="DIR", help="write svid.N.pem, svid.N.key, bundle.N.pem here")
    x509.add_argument("--spiffe-id", help="only this identity")
    x509.add_argument(
        "--server-id", help="kubespiffed's SPIFFE ID (default spiffe://<td>/kubespiffe/kubespiffed)"
    )
    x509.add_argument(
        "--server-name", default=DEFAULT_SERVER_NAME, help="DNS name in kubespiffed's certificate"
    )
    x509.set_defaults(func=cmd_fetch_x509)

    dev = commands.add_parser("dev", help="local development cluster").add_subparsers(
        dest="action", required=True
    )
    up = dev.add_parser(
        "up",
        help="start a local control plane and kubespiffed; stop them on SIGINT/SIGTERM",
        description=(
            "Writes DIR/kubeconfig, DIR/bundle.pem and DIR/server (host:port), prints 'ready', "
            "and runs until interrupted."
        ),
    )
    up.add_argument("--dir", required=True)
    up.add_argument("--trust-domain", default="example.org")
    up.set_defaults(func=cmd_dev_up)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    sys.exit(args.func(args))


if __name__ == "__main__":
    main()
