"""Background work a service owns for its lifetime (the consumer poller) and how it is stopped."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger("daydream")
STOP_PATIENCE_S = 5.0
"""How long a stop waits for cancelled work to finish; a library that swallows a cancellation
must not hold the process past the supervisor's SIGKILL."""


class BackgroundTasks:
    def __init__(self) -> None:
        self._tasks: set[asyncio.Task] = set()

    def start(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work, name=getattr(work, "__qualname__", None))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=STOP_PATIENCE_S)
        for task in pending:
            log.warning("background task %s did not stop within %.0f s; leaving it", task.get_name(), STOP_PATIENCE_S)
