"""A budget on the real stack, driven as a user does: `daydream run --max-cost` on the fake LLM
(which reports a cost per call) stops starting calls once the recorded spend plus the calls in
flight reach the budget, `status` says "stopped: budget", and `rerun --failed` with a higher
budget finishes the experiment without paying for any call twice. (The run is over the call
threshold set here, so `--yes` is what lets it start.)"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlmodel import Session, select

from daydream.fake_llm import FakeLLMServer
from services.tracker.tables import LlmCall
from tests.e2e.chaos import ACK_WAIT_S, Model, tracker_of, write_raw
from tests.e2e.conftest import FAST_RETRIES
from tests.e2e.test_fault_matrix import daydream_cli

pytestmark = [pytest.mark.e2e, pytest.mark.integration]
BUDGET_USD = 0.005
"""A few of the fake's calls here (each costs about $0.001 to $0.0017)."""
PLANNED_CALLS = 12
"""C(4, 2) = 6 combos x 1 writer = 6 generations, each judged once."""


def paid_calls(data: Path, experiment_id: str) -> list[float]:
    with Session(tracker_of(data).engine) as session:
        return list(session.exec(select(LlmCall.cost_usd).where(LlmCall.experiment_id == experiment_id,
                                                               LlmCall.cached == False)).all())  # noqa: E712


def test_a_budget_stops_the_experiment_and_a_higher_one_resumes_it(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_raw(data, [Model("writer", "fake/writer", True, False), Model("judge", "fake/judge", False, True)],
              concepts=4, k_max=2, tier_cap=1, evaluation_templates=1)
    models = data / "1_raw" / "llm_models.csv"
    lines = models.read_text(encoding="utf-8").splitlines()
    # The fake's own prices (see `_completion` in daydream/fake_llm.py), so the calls in flight are estimated well.
    models.write_text("\n".join([lines[0] + ",prompt_price,completion_price"] + [line + ",1,2" for line in lines[1:]])
                      + "\n", encoding="utf-8")
    with FakeLLMServer(latency_s=0.05) as fake:
        env = {**FAST_RETRIES, "DAYDREAM_LLM_BASE_URL": fake.base_url, "DAYDREAM_ACK_WAIT_S": str(ACK_WAIT_S),
               "DAYDREAM_ESTIMATE_COMPLETION_TOKENS": "400", "DAYDREAM_CONFIRM_CALLS": "5"}
        run = daydream_cli("run", "--data", str(data), "--experiment-id", "capped", "--max-cost", str(BUDGET_USD),
                           "--yes", env=env)
        calls_of_run = fake.stats()["total_calls"]
        spent = paid_calls(data, "capped")
        status = daydream_cli("status", "capped", "--data", str(data), env=env)
        rerun = daydream_cli("rerun", "capped", "--failed", "--max-cost", "1", "--data", str(data), env=env)
        calls_in_all = fake.stats()["total_calls"]

    output = run.stdout + run.stderr
    print(f"budget ${BUDGET_USD}: {len(spent)} calls, ${sum(spent):.6f}: {spent}")
    assert run.returncode == 1, output
    assert "estimated cost: $" in output and "budget: $0.0050" in output
    assert "stopped: budget" in output and "daydream rerun capped --failed --max-cost USD" in output
    assert 0 < calls_of_run == len(spent) < PLANNED_CALLS
    # Stopped within a call or two of the budget: calls in flight count at their estimate, and the
    # writer and the judge run in two processes, each seeing only its own call in flight.
    assert BUDGET_USD - 2 * max(spent) <= sum(spent) <= BUDGET_USD + 2 * max(spent)
    assert status.returncode == 0, status.stdout + status.stderr
    assert "stopped: budget" in status.stdout and "budget" in status.stdout

    rerun_output = rerun.stdout + rerun.stderr
    assert rerun.returncode == 0, rerun_output
    assert "budget: $1.0000" in rerun_output
    progress = tracker_of(data).progress("capped")
    assert progress.finished and progress.failures_by_reason == {}
    assert progress.stages["scoring"].done == PLANNED_CALLS // 2
    assert calls_in_all == PLANNED_CALLS, "a call was paid for twice"
