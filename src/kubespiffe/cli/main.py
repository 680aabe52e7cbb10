"""`kubespiffe`: fetch and validate SVIDs, run the in-pod agent, run a local development cluster.

fetch/validate talk either to a Workload API socket (`--socket`, default $SPIFFE_ENDPOINT_SOCKET) or
directly to kubespiffed (`--server` with the pod's token and the trust bundle).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeAlias

from kubespiffe.agent.jwtcache import DEFAULT_SIZE as JWT_CACHE_SIZE
from kubespiffe.constants import SERVER_NAME as DEFAULT_SERVER_NAME


def _seconds(text: str) -> float:
    """A finite number of seconds, 0 or more; anything else is a usage error (exit 2) saying so."""
    try:
        seconds = float(text)
    except ValueError:
        seconds = float("nan")
    if not 0 <= seconds < float("inf"):  # NaN too
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds, 0 or more")
    return seconds


def cmd_fetch_or_validate(args: argparse.Namespace) -> int:
    if not args.server:
        from kubespiffe.cli.workload import run

        return run(args)
    from kubespiffe.cli.direct import run_direct

    return run_direct(args)


# Subcommands import their machinery lazily: `kubespiffe probe` runs in every injected pod's start (its
# postStart hook) and as its readiness probe, and should not pay for cryptography, the agent runtime or
# the dev environment (tests/unit/test_cli_imports.py).


def cmd_agent(args: argparse.Namespace) -> int:
    from kubespiffe.agent.main import run_agent

    return run_agent(args)


def cmd_authority(args: argparse.Namespace) -> int:
    from kubespiffe.cli import authority

    handler = {
        "ca": {"show": authority.ca_show, "rotate": authority.ca_rotate},
        "bundle": {"show": authority.bundle_show},
    }
    return handler[args.command][args.action](args)


def cmd_dev_up(args: argparse.Namespace) -> int:
    from kubespiffe.devenv.up import dev_up, dev_up_node

    if args.node:
        if args.clusters != 1:
            print("kubespiffe dev up: --node runs one cluster (one node per machine)", file=sys.stderr)
            return 2
        return dev_up_node(Path(args.dir), args.trust_domain)
    return dev_up(Path(args.dir), args.trust_domain, args.clusters)


def _endpoint_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--socket", help="Workload API address (default: $SPIFFE_ENDPOINT_SOCKET)")
    parser.add_argument("--server", help="talk to kubespiffed at HOST:PORT instead of a Workload API socket")
    parser.add_argument("--token-file", help="with --server: the pod's projected ServiceAccount token")
    parser.add_argument("--bundle-file", help="with --server: trust bundle (PEM) to verify kubespiffed")
    parser.add_argument(
        "--server-id", help="kubespiffed's SPIFFE ID (default spiffe://<td>/kubespiffe/kubespiffed)"
    )
    parser.add_argument(
        "--server-name", default=DEFAULT_SERVER_NAME, help="DNS name in kubespiffed's certificate"
    )
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds")


EXIT_CODES = (
    "Exit codes: 3 no identity for this pod, 4 token refused, 5 server or socket unreachable, "
    "6 server TLS identity wrong, 7 request refused, 8 invalid JWT-SVID, 2 usage."
)


def _authority_target(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kubeconfig", help="default: $KUBECONFIG or ~/.kube/config")
    parser.add_argument("--namespace", default="kubespiffe-system", help="kubespiffed's namespace")
    parser.add_argument("--secret", default="kubespiffe-authority", help="the authority Secret")


Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def _add_ca(commands: Commands) -> None:
    ca = commands.add_parser("ca", help="the trust domain's signing keys").add_subparsers(
        dest="action", required=True
    )
    show = ca.add_parser("show", help="slots (CA + JWT key), their states and times, and the bundle sequence")
    _authority_target(show)
    rotate = ca.add_parser(
        "rotate", help="prepare a new CA and JWT key now; they activate after the grace period"
    )
    _authority_target(rotate)
    for parser in (show, rotate):
        parser.set_defaults(func=cmd_authority)


def _add_bundle(commands: Commands) -> None:
    bundle = commands.add_parser("bundle", help="the trust bundle").add_subparsers(
        dest="action", required=True
    )
    bshow = bundle.add_parser(
        "show", help="print this trust domain's bundle, e.g. to bootstrap a federated peer"
    )
    _authority_target(bshow)
    bshow.add_argument("--format", choices=["spiffe", "pem", "jwks"], default="spiffe")
    bshow.add_argument(
        "--endpoint", metavar="URL", help="fetch from this bundle endpoint instead of the cluster"
    )
    bshow.add_argument("--trust-domain", help="with --endpoint: the endpoint's trust domain")
    bshow.add_argument("--endpoint-id", help="with --endpoint: https_spiffe, the endpoint's exact SPIFFE ID")
    bshow.add_argument(
        "--bootstrap", metavar="FILE", help="with --endpoint-id: the peer's bundle (SPIFFE or PEM)"
    )
    bshow.set_defaults(func=cmd_authority)


def _add_fetch(commands: Commands) -> None:
    fetch = commands.add_parser("fetch", help="fetch SVIDs for this pod").add_subparsers(
        dest="kind", required=True
    )
    x509 = fetch.add_parser("x509", help="fetch X.509-SVIDs", description=EXIT_CODES)
    _endpoint_flags(x509)
    x509.add_argument("--write", metavar="DIR", help="write svid.N.pem, svid.N.key, bundle.N.pem here")
    x509.add_argument("--spiffe-id", help="only this identity (with --server)")
    x509.set_defaults(func=cmd_fetch_or_validate)
    jwt = fetch.add_parser(
        "jwt", help="fetch JWT-SVIDs; prints each token and its claims", description=EXIT_CODES
    )
    _endpoint_flags(jwt)
    jwt.add_argument("--audience", action="append", required=True, help="repeat for several audiences")
    jwt.add_argument("--spiffe-id", help="only this identity")
    jwt.set_defaults(func=cmd_fetch_or_validate)


def _add_validate(commands: Commands) -> None:
    validate_cmd = commands.add_parser("validate", help="validate SVIDs").add_subparsers(
        dest="kind", required=True
    )
    validate_jwt = validate_cmd.add_parser(
        "jwt", help="validate a JWT-SVID for an audience", description=EXIT_CODES
    )
    _endpoint_flags(validate_jwt)
    validate_jwt.add_argument("--audience", required=True)
    validate_jwt.add_argument("--token", required=True)
    validate_jwt.set_defaults(func=cmd_fetch_or_validate)


def _add_probe(commands: Commands) -> None:
    probe = commands.add_parser(
        "probe",
        help="exit 0 when the agent holds a valid X.509-SVID (for startup/readiness exec probes)",
    )
    probe.add_argument("--socket", help="Workload API address (default: $SPIFFE_ENDPOINT_SOCKET)")
    probe.add_argument("--timeout", type=float, default=1.0)
    probe.add_argument(
        "--upstream", action="store_true", help="instead: exit 0 while kubespiffed is reachable"
    )
    probe.add_argument(
        "--wait",
        type=_seconds,
        default=0.0,
        metavar="SECONDS",
        help="ask until the answer is yes or SECONDS have passed (a postStart hook), instead of once",
    )
    probe.set_defaults(func=cmd_fetch_or_validate, server=None)


def _add_agent(commands: Commands) -> None:
    agent = commands.add_parser(
        "agent",
        help="serve the SPIFFE Workload API inside the pod",
        description="Keeps the pod's SVIDs fresh and serves them on a Unix socket (and optionally as files).",
    )
    agent.add_argument("--server", required=True, help="kubespiffed address, HOST:PORT")
    agent.add_argument(
        "--token-file", required=True, help="projected ServiceAccount token (re-read every call)"
    )
    agent.add_argument(
        "--bundle-file", required=True, help="bootstrap trust bundle (PEM) to verify kubespiffed"
    )
    agent.add_argument("--socket", required=True, help="Unix socket path to serve the Workload API on")
    agent.add_argument("--write-dir", help="also write svid.0.pem, svid.0.key, bundle.0.pem here")
    agent.add_argument("--jwt-audience", help="with --write-dir: also keep jwt.0.token for this audience")
    agent.add_argument("--server-name", default=DEFAULT_SERVER_NAME)
    agent.add_argument(
        "--trust-domain",
        help="kubespiffed's trust domain (default: the one the bundle's CA names; required when the "
        "bundle holds an operator's root: docs/upstream-authority.md)",
    )
    agent.add_argument(
        "--socket-mode",
        default="0666",
        help="octal mode of the socket (default 0666: the pod is the boundary)",
    )
    agent.add_argument(
        "--jwt-cache-size",
        type=int,
        default=JWT_CACHE_SIZE,
        help=f"JWT-SVID answers kept, least recently used leave first (default {JWT_CACHE_SIZE}; 0: none)",
    )
    agent.set_defaults(func=cmd_agent)


def _add_dev(commands: Commands) -> None:
    dev = commands.add_parser("dev", help="local development cluster").add_subparsers(
        dest="action", required=True
    )
    up = dev.add_parser(
        "up",
        help="start a local control plane and kubespiffed; stop them on SIGINT/SIGTERM",
        description="Writes DIR/kubeconfig, DIR/bundle.pem and DIR/server (host:port) (with --clusters 2: "
        "under DIR/a and DIR/b), prints 'ready', and runs until interrupted.",
    )
    up.add_argument("--dir", required=True)
    up.add_argument("--trust-domain", default="example.org", help="with one cluster")
    up.add_argument(
        "--clusters",
        type=int,
        choices=[1, 2],
        default=1,
        help="2: clusters a and b (trust domains a and b), federated; files under DIR/a and DIR/b",
    )
    up.add_argument(
        "--node",
        action="store_true",
        help="as root: also a real node (containerd, kubelet, kube-proxy), kubespiffe installed from its "
        "image and Helm chart with sidecar injection; writes DIR/image (the local image reference) too",
    )
    up.set_defaults(func=cmd_dev_up)


# Each subcommand's parser, in the order `kubespiffe --help` lists them.
SUBCOMMANDS: dict[str, Callable[[Commands], None]] = {
    "fetch": _add_fetch,
    "validate": _add_validate,
    "probe": _add_probe,
    "agent": _add_agent,
    "ca": _add_ca,
    "bundle": _add_bundle,
    "dev": _add_dev,
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """`kubespiffe`'s parser; given the subcommand a command line names first, that subcommand's only.

    The parse of such a command line is the same either way: its usage, help and errors are the
    subcommand's parser's own, and the one error left to the top parser (unrecognized arguments) shows
    every subcommand in its usage line as ever. `kubespiffe agent`, in every pod, and `kubespiffe probe`,
    every readiness probe, then do not build the others' parsers: about 6 ms of the agent's start.
    """
    parser = argparse.ArgumentParser(prog="kubespiffe", description="SPIFFE identities for Kubernetes pods.")
    if command not in SUBCOMMANDS:
        commands = parser.add_subparsers(dest="command", required=True)
        for add in SUBCOMMANDS.values():
            add(commands)
        return parser
    every = "{" + ",".join(SUBCOMMANDS) + "}"  # as argparse names the full set
    SUBCOMMANDS[command](parser.add_subparsers(dest="command", required=True, metavar=every))
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """`kubespiffe`'s arguments (default: the process's), parsed by the parser of the subcommand named."""
    argv = sys.argv[1:] if argv is None else argv
    return build_parser(argv[0] if argv else None).parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    sys.exit(args.func(args))


if __name__ == "__main__":
    main()
