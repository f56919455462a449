"""Background work a service owns for its lifetime (the consumer poller, message renewals) and how it
is stopped."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterator
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


class Renewals:
    """Keeps held JetStream messages from being redelivered, with one ticker per period for all of
    them: a task started and cancelled per message cost more than the message's own handling."""

    def __init__(self, every_s: float) -> None:
        self.every_s = every_s
        self._held: dict[int, Callable[[], Awaitable[None]]] = {}
        self._tokens = itertools.count()
        self._ticker: asyncio.Task | None = None

    def keep(self, renew: Callable[[], Awaitable[None]]) -> Callable[[], None]:
        """Call `renew` every period until the returned function is called."""
        token = next(self._tokens)
        self._held[token] = renew
        if self._ticker is None or self._ticker.done():
            self._ticker = asyncio.create_task(self._tick(), name="renewals")

        def forget() -> None:
            self._held.pop(token, None)

        return forget

    @contextlib.contextmanager
    def keeping(self, renew: Callable[[], Awaitable[None]]) -> Iterator[None]:
        forget = self.keep(renew)
        try:
            yield
        finally:
            forget()

    async def _tick(self) -> None:
        while self._held:
            await asyncio.sleep(self.every_s)
            await asyncio.gather(*(renew() for renew in list(self._held.values())), return_exceptions=True)

    async def stop(self) -> None:
        if self._ticker:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
