"""`kubespiffed` entry point."""

from __future__ import annotations

import asyncio
import logging
import os

from kubespiffe.server.app import run
from kubespiffe.server.config import parse_args


def main(argv: list[str] | None = None) -> None:
    config = parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("KUBESPIFFED_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    # httpx logs every request URL at INFO; keep the log to decisions.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpx2").setLevel(logging.WARNING)
    asyncio.run(run(config))


if __name__ == "__main__":
    main()
