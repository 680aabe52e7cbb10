"""The asyncio tasks that last as long as the process: a guard for each, and a dump of all of them.

    group.create_task(tasks.for_life("identity stream", loop, stopping=lambda: stop.is_set()))
    tasks.install_dump(loop)   # SIGUSR1 logs where every task waits

Why a guard: a TaskGroup drops a child that ends with CancelledError without a word. A library that
interrupts a call by cancelling the calling task and never withdraws the request (grpclib does; on
Python 3.11.0-3.11.3 asyncio.timeout then turns the task's next timeout into a CancelledError) once ended
the agent's identity stream loop that way, and the agent served on without bundle updates. A loop that is
cancelled while the process is not stopping now raises LoopEnded, which fails the group and the process,
so that it is restarted instead of running without that loop.

Why a dump: a stall (a stream that stopped delivering, a call that never returns) shows no thread stack:
a thread dump (py-spy, faulthandler) shows the event loop idle in `select`. The coroutine chain of each
task is the only place that says what it waits for. SIGUSR1 (`kill -USR1 <pid>`, or from the node for a
container's process) logs one block per task at WARNING and changes nothing else.
"""

from __future__ import annotations

import asyncio
import io
import logging
import signal
from collections.abc import Awaitable, Callable

from kubespiffe.errors import KubespiffeError

log = logging.getLogger("kubespiffe.tasks")


class LoopEnded(KubespiffeError):
    """A loop that lasts as long as the process was cancelled while the process was not stopping."""


async def for_life(name: str, loop: Callable[[], Awaitable[object]], stopping: Callable[[], bool]) -> None:
    """Run `loop`; a cancellation while not `stopping()` is LoopEnded (a normal return stays one)."""
    try:
        await loop()
    except asyncio.CancelledError:
        if not stopping():
            raise LoopEnded(f"the {name} loop was cancelled, not by a stop") from None
        raise


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


def install_dump(loop: asyncio.AbstractEventLoop) -> None:
    """Log every task's stack on SIGUSR1."""
    loop.add_signal_handler(signal.SIGUSR1, lambda: log.warning("task dump (SIGUSR1):\n%s", format_tasks()))
