"""The budget gate: no new call of an experiment starts once its recorded spend plus its calls in
flight reach the budget its tasks carry (`max_cost`).

The recorded spend is the tracker's; a call counts as in flight from its start until the tracker
has recorded it (a failed call, never recorded, until it returns), at its estimate
(`shared.estimate`: its prompt, the model's max_tokens, its prices) or, for a model with no
price, at the experiment's mean recorded call. Each stage's worker shares what it has in flight
through the spend bucket (`shared.spend`), so the writer's and the judge's calls add up.
A refused task fails with reason `budget`, its task kept, so raising the budget and
`daydream rerun ID --failed --max-cost USD` continues it; a stored response is reused before the
gate is asked, so resuming never pays twice. Several replicas of one stage's worker share one key
and overwrite each other's count: the budget can then be passed by the other replicas' calls.
"""

from __future__ import annotations

import contextlib
import itertools
from collections import defaultdict, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol

from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from shared.estimate import call_cost, completion_tokens, prompt_tokens
from shared.events import STAGES, TaskCreated
from shared.llm import ErrorKind, LLMError
from shared.settings import Settings
from shared.spend import Spend, open_spend_bucket, put_unrecorded, read_spend, read_unrecorded


class SpendBoard(Protocol):
    """Where the recorded spend is read and each stage's calls in flight are shared."""

    async def recorded(self, experiment_id: str) -> Spend: ...

    async def in_flight(self, experiment_id: str, stage: str) -> float: ...

    async def announce(self, experiment_id: str, stage: str, usd: float) -> None: ...


@dataclass
class MemoryBoard:
    """A board in this process only: a worker with no bus (tests) and nothing recorded elsewhere."""

    spend: dict[str, Spend] = field(default_factory=dict)
    stages: dict[tuple[str, str], float] = field(default_factory=dict)

    async def recorded(self, experiment_id: str) -> Spend:
        return self.spend.get(experiment_id, Spend())

    async def in_flight(self, experiment_id: str, stage: str) -> float:
        return self.stages.get((experiment_id, stage), 0.0)

    async def announce(self, experiment_id: str, stage: str, usd: float) -> None:
        self.stages[experiment_id, stage] = usd


@dataclass
class KvBoard:
    kv: KeyValue

    async def recorded(self, experiment_id: str) -> Spend:
        return await read_spend(self.kv, experiment_id)

    async def in_flight(self, experiment_id: str, stage: str) -> float:
        return await read_unrecorded(self.kv, experiment_id, stage)

    async def announce(self, experiment_id: str, stage: str, usd: float) -> None:
        await put_unrecorded(self.kv, experiment_id, stage, usd)


@dataclass
class _Ledger:
    """One experiment's calls of this process that the recorded spend does not hold yet."""

    in_flight: dict[int, float] = field(default_factory=dict)
    answered: deque[float] = field(default_factory=deque)
    """Returned, not yet recorded: counted until the tracker's count of this stage's calls has
    grown past them, so the moment between an answer and its row is covered."""
    recorded: int | None = None
    """This stage's recorded calls when last read."""

    def catch_up(self, spend: Spend, stage: str) -> None:
        recorded = spend.calls_by_stage.get(stage, 0)
        for _ in range(min(recorded - self.recorded, len(self.answered)) if self.recorded is not None else 0):
            self.answered.popleft()
        self.recorded = recorded

    def usd(self) -> float:
        return sum(self.in_flight.values()) + sum(self.answered)


@dataclass
class BudgetGate:
    settings: Settings = field(default_factory=Settings)
    board: SpendBoard = field(default_factory=MemoryBoard)
    _ledgers: dict[str, _Ledger] = field(default_factory=lambda: defaultdict(_Ledger))
    _tickets: itertools.count = field(default_factory=itertools.count)

    @classmethod
    async def open(cls, js: JetStreamContext, settings: Settings) -> BudgetGate:
        return cls(settings, KvBoard(await open_spend_bucket(js, settings)))

    def in_flight_usd(self, experiment_id: str) -> float:
        """The estimates of this process's calls that are not yet in the recorded spend."""
        return self._ledgers[experiment_id].usd()

    @contextlib.asynccontextmanager
    async def spending(self, task: TaskCreated) -> AsyncIterator[None]:
        """Around one call: raises a permanent `LLMError` (reason `budget`) instead of starting it
        when the budget is reached; otherwise counts the call as in flight while it lasts and
        until it is recorded."""
        if task.max_cost is None:
            yield
            return
        experiment_id, ledger = task.experiment_id, self._ledgers[task.experiment_id]
        spend = await self.board.recorded(experiment_id)
        ledger.catch_up(spend, task.stage)
        in_flight = ledger.usd() + sum([await self.board.in_flight(experiment_id, stage)
                                        for stage in STAGES if stage != task.stage])
        if spend.cost_usd + in_flight >= task.max_cost:
            raise LLMError(ErrorKind.BUDGET, (
                f"experiment {experiment_id} has spent ${spend.cost_usd:.6f} with ${in_flight:.6f} in flight, "
                f"reaching its budget of ${task.max_cost:.6f}: raise it and resume with "
                f"`daydream rerun {experiment_id} --failed --max-cost USD`"))
        ticket = next(self._tickets)
        ledger.in_flight[ticket] = estimate = self.estimate_usd(task, spend)
        try:
            await self.board.announce(experiment_id, task.stage, ledger.usd())
            yield
        except BaseException:
            del ledger.in_flight[ticket]
            with contextlib.suppress(Exception):
                await self.board.announce(experiment_id, task.stage, ledger.usd())
            raise
        del ledger.in_flight[ticket]
        # The answer is paid for and not yet stored: a bus hiccup from here on must not fail the task.
        with contextlib.suppress(Exception):
            ledger.catch_up(await self.board.recorded(experiment_id), task.stage)
        ledger.answered.append(estimate)
        with contextlib.suppress(Exception):
            await self.board.announce(experiment_id, task.stage, ledger.usd())

    def estimate_usd(self, task: TaskCreated, spend: Spend) -> float:
        cost = call_cost(task.model, prompt_tokens(task.prompt), completion_tokens(task.model, self.settings))
        if cost is not None:
            return cost
        return spend.cost_usd / spend.calls if spend.calls else 0.0
