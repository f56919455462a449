"""The generator, made to die the instant a response is stored and before its result is published
or its task acked: the window where a careless worker would pay for the call again."""

import os

from services.llm_worker.response_store import ResponseStore

_put = ResponseStore.put


async def put_then_die(self: ResponseStore, record) -> None:
    await _put(self, record)
    os._exit(70)


ResponseStore.put = put_then_die  # type: ignore[method-assign]

from services.generator.app import app, settings  # noqa: E402
from shared.service import serve  # noqa: E402

serve(app, settings)
