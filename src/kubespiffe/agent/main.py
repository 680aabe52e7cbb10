"""`kubespiffe agent` entry: logging, signals, and the agent's run loop."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

from kubespiffe import tasks
from kubespiffe.agent.run import Agent, AgentConfig
from kubespiffe.spiffe.spiffeid import SpiffeIdError, TrustDomain


async def _run(config: AgentConfig) -> None:
    agent = Agent(config)
    task = asyncio.create_task(agent.run())
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    tasks.install_dump(loop)
    try:
        await task
    except asyncio.CancelledError:
        logging.getLogger("kubespiffe.agent").info("stopped")


def _socket_mode(text: str) -> int:
    """An octal file mode such as 0660 (ValueError otherwise)."""
    mode = int(text, 8)
    if not 0 <= mode <= 0o777:
        raise ValueError(text)
    return mode


def run_agent(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=os.environ.get("KUBESPIFFE_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    try:
        socket_mode = _socket_mode(args.socket_mode)
    except ValueError:
        print(
            f"kubespiffe agent: --socket-mode {args.socket_mode!r} is not an octal mode (0000-0777)",
            file=sys.stderr,
        )
        return 2
    if args.jwt_cache_size < 0:
        print(
            f"kubespiffe agent: --jwt-cache-size must be 0 or more, not {args.jwt_cache_size}",
            file=sys.stderr,
        )
        return 2
    try:
        trust_domain = TrustDomain.parse(args.trust_domain) if args.trust_domain else None
    except SpiffeIdError as exc:
        print(f"kubespiffe agent: --trust-domain {args.trust_domain!r}: {exc}", file=sys.stderr)
        return 2
    config = AgentConfig(
        server=args.server,
        token_file=Path(args.token_file),
        bundle_file=Path(args.bundle_file),
        socket=Path(args.socket),
        write_dir=Path(args.write_dir) if args.write_dir else None,
        jwt_audience=args.jwt_audience,
        server_name=args.server_name,
        socket_mode=socket_mode,
        jwt_cache_size=args.jwt_cache_size,
        trust_domain=trust_domain,
    )
    asyncio.run(_run(config))
    return 0
