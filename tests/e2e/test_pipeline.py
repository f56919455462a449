"""The example experiment through every service on a real nats-server with the fake LLM:
publish is idempotent; every table, artifact file and CSV line is there; a second delivery of
every event, and a re-emission of every task's events with a new `emitted_at`, change nothing;
`rebuild` from the artifacts alone reproduces the tables; and dead letters, well-formed or not,
become recorded failures."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import nats
import pytest
from nats.js.errors import NotFoundError
from prometheus_client.parser import text_string_to_metric_families
from sqlmodel import Session, select
from typer.testing import CliRunner

from daydream.cli import app
from daydream.stack import EmbeddedStack
from services.tracker.artifacts import read_csv_rows
from services.tracker.check import check as find_problems
from services.tracker.db import engine_for
from services.tracker.recorder import Tracker
from services.tracker.tables import Failure
from shared.events import (
    EVALUATION_DONE,
    EVALUATION_SCORED,
    EVENT_SUBJECTS,
    EXPERIMENT_REQUESTED,
    GENERATION_DONE,
    TierSpec,
    task_subject,
)
from shared.topology import (
    COMBINER_CONSUMER,
    DEAD_LETTER_CONSUMER,
    DEAD_LETTERS_STREAM,
    EVENTS_STREAM,
    TASKS_STREAM,
    TRACKER_SUBJECTS,
)
from tests.conftest import EXAMPLE_RAW
from tests.e2e.chaos import wait_until
from tests.e2e.conftest import nats_and_fake_llm
from tests.e2e.harness import generation_task
from tests.fakes import dump_tables

pytestmark = [pytest.mark.e2e, pytest.mark.integration]
EXPERIMENT = "example-e2e"
GENERATIONS, EVALUATIONS, COMBOS, K_MAX = 16, 32, 4, 3
EXPECTED_ROWS = {
    "experiments": 1,
    "combo_mappings": COMBOS * K_MAX,
    "generation_results": GENERATIONS,
    "evaluation_results": EVALUATIONS,
    "failures": 0,
    "llm_calls": GENERATIONS + EVALUATIONS,
}
EXPECTED_FILES = {
    "3_generation/generation_prompts/*.txt": GENERATIONS,
    "3_generation/generation_responses/*.txt": GENERATIONS,
    "3_generation/generation_responses/*.json": GENERATIONS,
    "4_evaluation/evaluation_prompts/*.txt": EVALUATIONS,
    "4_evaluation/evaluation_responses/*.txt": EVALUATIONS,
    "4_evaluation/evaluation_responses/*.score.json": EVALUATIONS,
    "4_evaluation/evaluation_responses/*.json": 2 * EVALUATIONS,
    f"experiments/{EXPERIMENT}/events/*.json": 2,
    f"experiments/{EXPERIMENT}/events/failures/*.json": 0,
}
"""Call records and scores share the evaluation responses' `*.json`."""
EXPECTED_CSV_LINES = {"generation": GENERATIONS, "evaluation": EVALUATIONS}
TASK_EVENT_SUBJECTS = (GENERATION_DONE, EVALUATION_DONE, EVALUATION_SCORED)
COPY = "copy-"
"""The message-id prefix of the events this module republishes."""


@pytest.fixture(scope="module")
def example_stack(tmp_path_factory: pytest.TempPathFactory):
    data: Path = tmp_path_factory.mktemp("example")
    shutil.copytree(EXAMPLE_RAW, data / "1_raw")
    with nats_and_fake_llm(data, latency_s=0.02) as stack:
        yield stack


@pytest.fixture(scope="module")
def finished_run(example_stack: EmbeddedStack) -> dict[str, list[dict]]:
    """Every row of every table once the example has run through all services (the combiner was
    started by the first test)."""
    for name in ("generator", "evaluator", "parser", "tracker"):
        example_stack.start_service(name)
    tracker = Tracker(example_stack.data, engine_for(example_stack.data))
    wait_until(lambda: tracker.progress(EXPERIMENT).finished, timeout_s=60, what="the experiment to finish")
    return dump_tables(tracker.engine)


def publish(stack: EmbeddedStack) -> None:
    result = CliRunner().invoke(app, ["publish", "--data", str(stack.data), "--experiment-id", EXPERIMENT],
                                env=stack.client_env())
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

    # Past the request's own dedup (a publish after the duplicate window): the combiner plans
    # again, and its tasks' message ids keep every task single.
    asyncio.run(request_again(example_stack.nats_url))
    wait_until(lambda: asyncio.run(combiner_idle(example_stack.nats_url)), timeout_s=60, what="the combiner to replan")
    assert asyncio.run(stream_messages(example_stack.nats_url, EVENTS_STREAM)) == 3  # + the second request
    assert asyncio.run(stream_messages(example_stack.nats_url, TASKS_STREAM)) == GENERATIONS


async def request_again(nats_url: str) -> None:
    """The stored request, republished under a message id the server has not seen."""
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    stored = await js.get_last_msg(EVENTS_STREAM, EXPERIMENT_REQUESTED)
    assert stored.data is not None
    await js.publish(EXPERIMENT_REQUESTED, stored.data, headers={"Nats-Msg-Id": f"{COPY}requested-after-the-window"})
    await nc.close()


async def combiner_idle(nats_url: str) -> bool:
    nc = await nats.connect(nats_url)
    info = await nc.jetstream().consumer_info(EVENTS_STREAM, COMBINER_CONSUMER)
    await nc.close()
    return info.delivered.stream_seq >= 3 and info.num_pending == 0 and info.num_ack_pending == 0


def row_counts(tables: dict[str, list[dict]]) -> dict[str, int]:
    return {name: len(rows) for name, rows in tables.items()}


def file_counts(data: Path) -> dict[str, int]:
    return {pattern: len(list(data.glob(pattern))) for pattern in EXPECTED_FILES}


def csv_lines(data: Path, stage: str) -> list[dict[str, str]]:
    return read_csv_rows(data / "7_cross_experiment" / f"{stage}_results.csv")


def sorted_csv_lines(data: Path, stage: str) -> list[tuple[str, ...]]:
    return sorted(tuple(line.values()) for line in csv_lines(data, stage))


def csv_line_counts(data: Path) -> dict[str, int]:
    return {stage: len(csv_lines(data, stage)) for stage in EXPECTED_CSV_LINES}


def test_every_table_file_and_csv_row_after_the_run(example_stack: EmbeddedStack, finished_run) -> None:
    data = example_stack.data
    progress = Tracker(data, engine_for(data)).progress(EXPERIMENT)
    assert {s: (p.planned, p.done, p.failed) for s, p in progress.stages.items()} == {
        "generation": (GENERATIONS, GENERATIONS, 0),
        "evaluation": (EVALUATIONS, EVALUATIONS, 0),
        "scoring": (EVALUATIONS, EVALUATIONS, 0),
    }
    assert row_counts(finished_run) == EXPECTED_ROWS
    assert file_counts(data) == EXPECTED_FILES
    assert csv_line_counts(data) == EXPECTED_CSV_LINES

    [experiment] = finished_run["experiments"]
    assert (experiment["generation_tasks_planned"], experiment["evaluation_tasks_planned"]) == (GENERATIONS,
                                                                                                EVALUATIONS)
    assert experiment["finished_at"] is not None
    generations, evaluations = finished_run["generation_results"], finished_run["evaluation_results"]
    for row in [*generations, *evaluations]:
        for column in ("prompt_path", "response_path", "call_path"):
            assert (data / row[column]).is_file(), row[column]
    assert all((data / row["score_path"]).is_file() for row in evaluations)
    assert {row["status"] for row in evaluations} == {"scored"}
    assert all(0 <= row["score"] <= row["max_score"] for row in evaluations)
    assert "SIMULATED" in (data / generations[0]["response_path"]).read_text()
    assert {call["stage"] for call in finished_run["llm_calls"]} == {"generation", "evaluation"}

    model_by_generation = {row["task_id"]: row["generation_model"] for row in generations}
    evaluation_lines = csv_lines(data, "evaluation")
    assert {line["experiment_id"] for line in evaluation_lines} == {EXPERIMENT}
    assert all(line["score"] != "" for line in evaluation_lines)
    assert all(line["generation_model"] == model_by_generation[line["generation_task_id"]] for line in evaluation_lines)
    assert {line["revision"] for line in [*csv_lines(data, "generation"), *evaluation_lines]} == {"1"}


async def republish_events(nats_url: str, subjects: tuple[str, ...], *, tag: str, restamp: bool) -> int:
    """Publish a second copy of each original event on `subjects` under a new message id, as a
    crash and redelivery would (the same bytes) or a service doing the work again would
    (`restamp`: the same event with a new `emitted_at`)."""
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    info = await js.stream_info(EVENTS_STREAM)
    copied = 0
    for sequence in range(info.state.first_seq, info.state.last_seq + 1):
        message = await js.get_msg(EVENTS_STREAM, sequence)
        if message.subject not in subjects or (message.headers or {}).get("Nats-Msg-Id", "").startswith(COPY):
            continue
        body = message.data or b""
        if restamp:
            body = json.dumps({**json.loads(body), "emitted_at": datetime.now(UTC).isoformat()}).encode()
        await js.publish(message.subject, body, headers={"Nats-Msg-Id": f"{COPY}{tag}-{sequence}"})
        copied += 1
    await nc.close()
    return copied


async def tracker_idle(nats_url: str) -> bool:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    infos = [await js.consumer_info(EVENTS_STREAM, durable) for durable in TRACKER_SUBJECTS]
    await nc.close()
    return all(i.num_pending == 0 and i.num_ack_pending == 0 for i in infos)


def wait_for_the_tracker(stack: EmbeddedStack) -> None:
    time.sleep(0.5)
    wait_until(lambda: asyncio.run(tracker_idle(stack.nats_url)), timeout_s=60, what="the tracker to catch up")
    time.sleep(1.0)


def assert_unchanged(stack: EmbeddedStack, finished_run: dict[str, list[dict]]) -> None:
    assert dump_tables(engine_for(stack.data)) == finished_run
    assert file_counts(stack.data) == EXPECTED_FILES
    assert csv_line_counts(stack.data) == EXPECTED_CSV_LINES


def test_a_second_delivery_of_every_event_changes_nothing(example_stack: EmbeddedStack, finished_run) -> None:
    copied = asyncio.run(republish_events(example_stack.nats_url, EVENT_SUBJECTS, tag="again", restamp=False))
    assert copied == 2 + GENERATIONS + 2 * EVALUATIONS  # requested, planned, 16 generated, 32 judged, 32 scored
    wait_for_the_tracker(example_stack)
    assert_unchanged(example_stack, finished_run)


def test_task_events_re_emitted_with_a_new_time_change_nothing(example_stack: EmbeddedStack, finished_run) -> None:
    """A redelivered task's result, or a re-parse of the same answer, arrives as a new event with
    the same content: no row, file or CSV line may move (`scored_at` included)."""
    copied = asyncio.run(republish_events(example_stack.nats_url, TASK_EVENT_SUBJECTS, tag="restamped", restamp=True))
    assert copied == GENERATIONS + 2 * EVALUATIONS
    wait_for_the_tracker(example_stack)
    assert_unchanged(example_stack, finished_run)


def test_rebuild_without_the_database_reproduces_the_tables_and_csvs(
    example_stack: EmbeddedStack, finished_run, tmp_path: Path
) -> None:
    """On a copy of the data directory, so the running tracker keeps its database."""
    copy = tmp_path / "copy"
    shutil.copytree(example_stack.data, copy, ignore=shutil.ignore_patterns("daydream.db*", "nats", "logs"))
    for path in (copy / "7_cross_experiment").glob("*.csv"):
        path.unlink()

    outcome = CliRunner().invoke(app, ["rebuild", "--data", str(copy)], env={"DAYDREAM_DATABASE_URL": None})
    assert outcome.exit_code == 0, outcome.output
    engine = engine_for(copy)
    assert dump_tables(engine) == finished_run
    for stage in EXPECTED_CSV_LINES:
        assert sorted_csv_lines(copy, stage) == sorted_csv_lines(example_stack.data, stage)
    assert find_problems(copy, engine) == []
    assert find_problems(example_stack.data, engine_for(example_stack.data)) == []
    engine.dispose()


def tracker_metric(stack: EmbeddedStack, name: str, labels: dict[str, str]) -> float:
    text = httpx.get(f"http://127.0.0.1:{stack.ports['tracker']}/metrics", timeout=5).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


async def dead_letter(nats_url: str, advisory: bytes, task: bytes | None) -> int | None:
    """Put a task no worker serves into the tasks stream, then the advisory JetStream raises when
    a task runs out of deliveries; returns the task's stream sequence."""
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    sequence = None
    if task is not None:
        sequence = (await js.publish(task_subject("generation", "unserved"), task)).seq
        advisory = advisory.replace(b"SEQUENCE", str(sequence).encode())
    await js.publish("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.DD_TASKS.generator-unserved", advisory)
    await nc.close()
    return sequence


async def dead_letter_consumer_settled(nats_url: str) -> bool:
    nc = await nats.connect(nats_url)
    info = await nc.jetstream().consumer_info(DEAD_LETTERS_STREAM, DEAD_LETTER_CONSUMER)
    await nc.close()
    return info.num_pending == info.num_ack_pending == info.num_redelivered == 0


async def task_message_gone(nats_url: str, sequence: int) -> bool:
    nc = await nats.connect(nats_url)
    try:
        await nc.jetstream().get_msg(TASKS_STREAM, sequence)
        return False
    except NotFoundError:
        return True
    finally:
        await nc.close()


def failures(stack: EmbeddedStack, **where: str) -> list[Failure]:
    with Session(engine_for(stack.data)) as session:
        query = select(Failure)
        for column, value in where.items():
            query = query.where(getattr(Failure, column) == value)
        return list(session.exec(query).all())


def test_dead_letters_become_failures_and_a_malformed_advisory_is_terminated(
    example_stack: EmbeddedStack, finished_run
) -> None:
    task = generation_task("dead-letter-e2e", 1, "fake/writer", TierSpec(tier="unserved", max_concurrent=1))
    counted = tracker_metric(example_stack, "daydream_tasks_failed_total",
                             {"stage": "generation", "reason": "max_deliveries"})
    advisory = (b'{"type":"io.nats.jetstream.advisory.v1.max_deliver","stream":"DD_TASKS",'
                b'"consumer":"generator-unserved","stream_seq":SEQUENCE,"deliveries":6}')
    sequence = asyncio.run(dead_letter(example_stack.nats_url, advisory, task.model_dump_json().encode()))
    asyncio.run(dead_letter(example_stack.nats_url, b'{"stream": "DD_TASKS", "stream_seq": "not a number"', None))

    wait_until(lambda: bool(failures(example_stack, experiment_id="dead-letter-e2e"))
               and bool(failures(example_stack, stage="dead_letter")), timeout_s=30, what="both dead letters recorded")
    [failure] = failures(example_stack, experiment_id="dead-letter-e2e")
    assert (failure.task_id, failure.reason, failure.attempts) == (task.task_id, "max_deliveries", 6)
    assert Tracker(example_stack.data, engine_for(example_stack.data)).failed_tasks("dead-letter-e2e") == [task]
    assert sequence is not None and asyncio.run(task_message_gone(example_stack.nats_url, sequence))
    assert tracker_metric(example_stack, "daydream_tasks_failed_total",
                          {"stage": "generation", "reason": "max_deliveries"}) == counted + 1
    [poison] = failures(example_stack, stage="dead_letter")
    assert poison.reason == "poison_message" and "MAX_DELIVERIES" in poison.message
    wait_until(lambda: asyncio.run(dead_letter_consumer_settled(example_stack.nats_url)), timeout_s=10,
               what="the malformed advisory to be terminated, not redelivered")
    assert dump_tables(engine_for(example_stack.data), {EXPERIMENT}) == finished_run
