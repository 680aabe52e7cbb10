"""SIGUSR1 logs where every asyncio task of the process is waiting (like a Go program's SIGQUIT dump).

Why: the agent and kubespiffed are asyncio programs, and a stall (a stream that stopped delivering, a call
that never returns) shows no thread stack: a thread dump (py-spy, faulthandler) shows the event loop idle in
`select`. The coroutine chain of each task is the only place that says what it waits for. Sending SIGUSR1
(`kill -USR1 <pid>`, or from the node for a container's process) logs one block per task at WARNING and
changes nothing else; the process keeps running.
"""

from __future__ import annotations

import asyncio
import io
import logging
import signal

log = logging.getLogger("kubespiffe.tasks")


def format_tasks() -> str:
    """Every task of the running loop with the stack of the coroutine it is suspended in.

    Frames are named by file, line and function only: Task.print_stack reads source lines, and fails on
    the frames of compiled coroutines (grpcio's) whose line is unknown.
    """
    out = io.StringIO()
    tasks = sorted(asyncio.all_tasks(), key=lambda t: t.get_name())
    out.write(f"{len(tasks)} asyncio tasks\n")
    for task in tasks:
        out.write(f"{task!r}\n")
        for frame in task.get_stack():
            code = frame.f_code
            out.write(f"  {code.co_filename}:{frame.f_lineno} in {code.co_name}\n")
    return out.getvalue()


def install(loop: asyncio.AbstractEventLoop) -> None:
    """Log every task's stack on SIGUSR1."""
    loop.add_signal_handler(signal.SIGUSR1, lambda: log.warning("task dump (SIGUSR1):\n%s", format_tasks()))
