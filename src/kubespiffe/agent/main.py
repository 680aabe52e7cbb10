"""`kubespiffe agent` entry: logging, signals, and the agent's run loop."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from pathlib import Path

from kubespiffe.agent.run import Agent, AgentConfig


async def _run(config: AgentConfig) -> None:
    agent = Agent(config)
    task = asyncio.create_task(agent.run())
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    try:
        await task
    except asyncio.CancelledError:
        logging.getLogger("kubespiffe.agent").info("stopped")


def run_agent(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=os.environ.get("KUBESPIFFE_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    config = AgentConfig(
        server=args.server,
        token_file=Path(args.token_file),
        bundle_file=Path(args.bundle_file),
        socket=Path(args.socket),
        write_dir=Path(args.write_dir) if args.write_dir else None,
        jwt_audience=args.jwt_audience,
        server_name=args.server_name,
    )
    asyncio.run(_run(config))
    return 0
