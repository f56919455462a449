"""The example experiment through every service on a real nats-server with the fake LLM:
publish is idempotent, every table, file and CSV row is there, and a second delivery of every
event doubles nothing."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import nats
import pytest
from sqlmodel import Session, func, select
from typer.testing import CliRunner

from daydream.cli import app
from daydream.stack import EmbeddedStack
from services.tracker.artifacts import read_csv_rows
from services.tracker.db import engine_for
from services.tracker.recorder import Tracker
from services.tracker.tables import ComboMapping, EvaluationResult, Experiment, GenerationResult, LlmCall
from shared.events import EVENT_SUBJECTS
from shared.topology import EVENTS_STREAM, TASKS_STREAM, TRACKER_SUBJECTS
from tests.conftest import EXAMPLE_RAW
from tests.e2e.chaos import wait_until
from tests.e2e.conftest import FAST_RETRIES

pytestmark = [pytest.mark.e2e, pytest.mark.integration]
EXPERIMENT = "example-e2e"
GENERATIONS, EVALUATIONS, COMBOS, K_MAX = 16, 32, 4, 3


@pytest.fixture(scope="module")
def example_stack(tmp_path_factory: pytest.TempPathFactory):
    data: Path = tmp_path_factory.mktemp("example")
    shutil.copytree(EXAMPLE_RAW, data / "1_raw")
    stack = EmbeddedStack(data, llm_base_url=None, fake_llm_latency=0.02, extra_env=FAST_RETRIES)
    stack.start_nats()
    stack.start_fake_llm()
    try:
        yield stack
    finally:
        stack.stop()


def publish(stack: EmbeddedStack) -> None:
    result = CliRunner().invoke(app, ["publish", "--data", str(stack.data), "--experiment-id", EXPERIMENT],
                                env={"NATS_URL": stack.nats_url})
    assert result.exit_code == 0, result.output
    assert EXPERIMENT in result.output


async def stream_messages(nats_url: str, stream: str) -> int:
    nc = await nats.connect(nats_url)
    info = await nc.jetstream().stream_info(stream)
    await nc.close()
    return info.state.messages


def test_publishing_twice_plans_once_and_creates_each_task_once(example_stack: EmbeddedStack) -> None:
    example_stack.start_service("combiner")
    publish(example_stack)
    publish(example_stack)
    wait_until(lambda: asyncio.run(stream_messages(example_stack.nats_url, TASKS_STREAM)) >= GENERATIONS,
               timeout_s=60, what="generation tasks")
    time.sleep(1.0)
    assert asyncio.run(stream_messages(example_stack.nats_url, TASKS_STREAM)) == GENERATIONS
    assert asyncio.run(stream_messages(example_stack.nats_url, EVENTS_STREAM)) == 2  # requested + planned
    assert (example_stack.data / "experiments" / EXPERIMENT / "spec.json").exists()
    assert len(read_csv_rows(example_stack.data / "2_tasks" / "generation_tasks.csv")) == GENERATIONS
    assert len(read_csv_rows(example_stack.data / "2_tasks" / "evaluation_tasks.csv")) == EVALUATIONS


def count(engine, table, **where) -> int:
    with Session(engine) as session:
        query = select(func.count()).select_from(table)
        for column, value in where.items():
            query = query.where(getattr(table, column) == value)
        return session.exec(query).one()


def test_every_table_file_and_csv_row_after_the_run(example_stack: EmbeddedStack) -> None:
    for name in ("generator", "evaluator", "parser", "tracker"):
        example_stack.start_service(name)
    engine = engine_for(example_stack.data)
    tracker = Tracker(example_stack.data, engine)
    wait_until(lambda: tracker.progress(EXPERIMENT).finished, timeout_s=60, what="the experiment to finish")

    progress = tracker.progress(EXPERIMENT)
    assert {s: (p.planned, p.done, p.failed) for s, p in progress.stages.items()} == {
        "generation": (GENERATIONS, GENERATIONS, 0),
        "evaluation": (EVALUATIONS, EVALUATIONS, 0),
        "scoring": (EVALUATIONS, EVALUATIONS, 0),
    }
    assert count(engine, Experiment) == 1
    assert count(engine, ComboMapping) == COMBOS * K_MAX
    assert count(engine, GenerationResult, experiment_id=EXPERIMENT) == GENERATIONS
    assert count(engine, EvaluationResult, experiment_id=EXPERIMENT, status="scored") == EVALUATIONS
    assert count(engine, LlmCall, experiment_id=EXPERIMENT) == GENERATIONS + EVALUATIONS

    with Session(engine) as session:
        generations = session.exec(select(GenerationResult)).all()
        evaluations = session.exec(select(EvaluationResult)).all()
    for row in [*generations, *evaluations]:
        for path in (row.prompt_path, row.response_path, row.call_path):
            assert (example_stack.data / path).is_file(), path
    assert all(0 <= row.score <= 9 for row in evaluations)
    generation_text = (example_stack.data / generations[0].response_path).read_text()
    assert "SIMULATED" in generation_text

    cross = example_stack.data / "7_cross_experiment"
    assert len(read_csv_rows(cross / "generation_results.csv")) == GENERATIONS
    evaluation_rows = read_csv_rows(cross / "evaluation_results.csv")
    assert len(evaluation_rows) == EVALUATIONS
    assert {row["experiment_id"] for row in evaluation_rows} == {EXPERIMENT}
    assert all(row["score"] != "" for row in evaluation_rows)


async def redeliver_every_event(nats_url: str) -> int:
    """Publish a second copy of every event under a new message id, as a crash-and-redeliver would."""
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    info = await js.stream_info(EVENTS_STREAM)
    copied = 0
    for sequence in range(info.state.first_seq, info.state.last_seq + 1):
        message = await js.get_msg(EVENTS_STREAM, sequence)
        if message.subject in EVENT_SUBJECTS:
            await js.publish(message.subject, message.data, headers={"Nats-Msg-Id": f"again-{sequence}"})
            copied += 1
    await nc.close()
    return copied


async def tracker_idle(nats_url: str) -> bool:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    infos = [await js.consumer_info(EVENTS_STREAM, durable) for durable in TRACKER_SUBJECTS]
    await nc.close()
    return all(i.num_pending == 0 and i.num_ack_pending == 0 for i in infos)


def test_a_second_delivery_of_every_event_doubles_nothing(example_stack: EmbeddedStack) -> None:
    engine = engine_for(example_stack.data)
    copied = asyncio.run(redeliver_every_event(example_stack.nats_url))
    assert copied == 2 + GENERATIONS + 2 * EVALUATIONS  # requested, planned, 16 generated, 32 judged, 32 scored
    time.sleep(0.5)
    wait_until(lambda: asyncio.run(tracker_idle(example_stack.nats_url)), timeout_s=60, what="the tracker to catch up")
    time.sleep(1.0)

    assert count(engine, GenerationResult) == GENERATIONS
    assert count(engine, EvaluationResult) == EVALUATIONS
    assert count(engine, LlmCall) == GENERATIONS + EVALUATIONS
    assert count(engine, ComboMapping) == COMBOS * K_MAX
    cross = example_stack.data / "7_cross_experiment"
    assert len(read_csv_rows(cross / "generation_results.csv")) == GENERATIONS
    assert len(read_csv_rows(cross / "evaluation_results.csv")) == EVALUATIONS
    responses = list((example_stack.data / "3_generation" / "generation_responses").glob("*.txt"))
    assert len(responses) == GENERATIONS
