"""The budget gate without a broker: a dict for the tracker's recorded spend. What a user relies
on: once recorded spend plus the calls in flight reach the budget no new call starts, the task
fails as `budget` with the task kept (so a rerun with a higher budget continues it), a stored
answer is still reused, and an experiment without a budget is never held back."""

from __future__ import annotations

import asyncio

import pytest

from services.llm_worker.budget import BudgetGate, MemoryBoard
from services.llm_worker.worker import Completed, GaveUp, LLMWorker
from shared.llm import ErrorKind, LLMError
from shared.spend import Spend
from tests.fakes import FakeTierGate
from tests.unit.test_llm_worker import SETTINGS, DictStore, FakeClient, no_heartbeat, task


def gate(recorded: dict[str, Spend]) -> BudgetGate:
    return BudgetGate(SETTINGS, MemoryBoard(recorded))


def priced(**changes):
    """A call estimated at 100 prompt + 1000 completion tokens at $1 / $9 per million = $0.0091."""
    base = task(prompt="x" * 400, max_cost=1.0)
    model = base.model.model_copy(update={"max_tokens": 1000, "prompt_price": 1.0, "completion_price": 9.0})
    return base.model_copy(update={"model": model, **changes})


async def test_the_recorded_spend_reaching_the_budget_stops_new_calls_with_a_kept_task() -> None:
    recorded = {"exp": Spend(cost_usd=0.99, calls=3)}
    client, store = FakeClient(["an essay"]), DictStore()
    runner = LLMWorker(client, store, SETTINGS, FakeTierGate(), gate(recorded))  # type: ignore[arg-type]
    assert isinstance(await runner.run(priced(), attempt=1, heartbeat=no_heartbeat), Completed)
    recorded["exp"] = Spend(cost_usd=1.0, calls=4)
    second = priced(task_id="t2", prompt="y" * 400)
    verdict = await runner.run(second, attempt=1, heartbeat=no_heartbeat)
    assert isinstance(verdict, GaveUp) and verdict.failure.reason == ErrorKind.BUDGET
    assert verdict.failure.task == second
    assert "daydream rerun exp --failed --max-cost" in verdict.failure.message
    assert client.calls == 1
    raised = second.model_copy(update={"max_cost": 2.0})
    client.outcomes.append("continued")
    assert isinstance(await runner.run(raised, attempt=1, heartbeat=no_heartbeat), Completed)


async def test_a_stored_answer_is_reused_over_budget() -> None:
    store = DictStore()
    runner = LLMWorker(FakeClient(["paid once"]), store, SETTINGS, FakeTierGate())  # type: ignore[arg-type]
    await runner.run(priced(), attempt=1, heartbeat=no_heartbeat)
    over = LLMWorker(FakeClient([]), store, SETTINGS, FakeTierGate(), gate({"exp": Spend(cost_usd=5.0, calls=1)}))  # type: ignore[arg-type]
    verdict = await over.run(priced(), attempt=2, heartbeat=no_heartbeat)
    assert isinstance(verdict, Completed) and verdict.record.text == "paid once"


async def test_calls_count_at_their_estimate_until_the_tracker_has_recorded_them() -> None:
    recorded = {"exp": Spend(cost_usd=0.982, calls=1, calls_by_stage={"generation": 1})}
    budget = gate(recorded)
    release = asyncio.Event()

    async def call(one) -> None:
        async with budget.spending(one):
            await release.wait()

    first = asyncio.create_task(call(priced(task_id="t1")))
    await asyncio.sleep(0)
    assert budget.in_flight_usd("exp") == pytest.approx(0.0091)
    second = asyncio.create_task(call(priced(task_id="t2")))
    await asyncio.sleep(0)  # 0.982 + 0.0091 < 1: admitted too
    with pytest.raises(LLMError) as refused:
        async with budget.spending(priced(task_id="t3")):
            raise AssertionError("0.982 + 2 x 0.0091 in flight passes 1.0: no third call may start")
    assert refused.value.kind == ErrorKind.BUDGET
    release.set()
    await asyncio.gather(first, second)
    # Answered, not yet recorded: still counted, so a call cannot slip in before the rows land.
    assert budget.in_flight_usd("exp") == pytest.approx(2 * 0.0091)
    recorded["exp"] = Spend(cost_usd=0.985, calls=2, calls_by_stage={"generation": 2})  # one recorded
    async with budget.spending(priced(task_id="t3")):
        assert budget.in_flight_usd("exp") == pytest.approx(2 * 0.0091)  # the other, and t3


async def test_a_failed_call_stops_counting_when_it_returns() -> None:
    budget = gate({"exp": Spend(cost_usd=0.5, calls=1)})
    with pytest.raises(LLMError):
        async with budget.spending(priced()):
            raise LLMError(ErrorKind.SERVER_ERROR, "502")
    assert budget.in_flight_usd("exp") == 0.0


async def test_a_model_without_prices_counts_in_flight_at_the_mean_recorded_call() -> None:
    budget = gate({})
    assert budget.estimate_usd(task(max_cost=1.0), Spend(cost_usd=0.3, calls=3)) == pytest.approx(0.1)
    assert budget.estimate_usd(task(max_cost=1.0), Spend()) == 0.0


async def test_the_other_stages_calls_in_flight_count_too() -> None:
    board = MemoryBoard({"exp": Spend(cost_usd=0.991)})
    writer, judge = BudgetGate(SETTINGS, board), BudgetGate(SETTINGS, board)
    async with writer.spending(priced()):
        with pytest.raises(LLMError):
            async with judge.spending(priced(task_id="e1", stage="evaluation")):
                raise AssertionError("0.991 + the writer's 0.0091 in flight reaches 1.0")


class UnreadableBoard(MemoryBoard):
    async def recorded(self, experiment_id: str) -> Spend:
        raise AssertionError("no budget, no spend lookup")


async def test_an_experiment_without_a_budget_never_reads_its_spend() -> None:
    async with BudgetGate(SETTINGS, UnreadableBoard()).spending(task()):
        pass
