"""Helpers for the stress tests: a small experiment of a chosen size, a stack with a short ack
wait, and the results of a run reduced to what two runs must agree on."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlmodel import Session, select

from daydream.publish_cmd import prepare_experiment, publish_experiment
from daydream.stack import EmbeddedStack
from services.tracker.artifacts import read_csv_rows
from services.tracker.db import engine_for
from services.tracker.recorder import Tracker
from services.tracker.tables import EvaluationResult, Failure, GenerationResult
from shared.events import ExperimentSpec
from shared.settings import Settings
from tests.conftest import EXAMPLE_RAW
from tests.e2e.conftest import FAST_RETRIES

ACK_WAIT_S = 5.0
"""A worker killed with unacked tasks gets them back after this: the default 60 s would stall a test."""
CONCEPTS = ("default-mode-network", "dearth-ai-discoveries", "generator-verifier-gap", "economic-moat",
            "mind-wandering", "data-flywheel")


@dataclass(frozen=True)
class Model:
    id: str
    model: str
    generation: bool
    evaluation: bool
    tier: str = "paid"


WRITERS = [Model(f"writer_{n}", f"fake/writer-{n}", True, False) for n in "abc"]
JUDGES = [Model(f"judge_{n}", f"fake/judge-{n}", False, True) for n in "ab"]
STRESS_MODELS = WRITERS + JUDGES
"""With the defaults of `write_raw`: 20 combos x 3 writers = 60 generations, x 2 templates x 2
judges = 240 evaluations — 300 LLM calls."""


def write_raw(data: Path, models: list[Model], *, concepts: int = 6, k_max: int = 3, tier_cap: int = 5,
              evaluation_templates: int = 2) -> Path:
    """The example inputs cut to size: C(concepts, k_max) combos x 1 generation template x the
    generation models, each judged by every evaluation template x evaluation model — each model on
    its tier (`paid` unless it says), every tier with no rate limit."""
    raw = data / "1_raw"
    shutil.copytree(EXAMPLE_RAW, raw)
    chosen = CONCEPTS[:concepts]
    lines = (raw / "concepts_metadata.csv").read_text(encoding="utf-8").splitlines()
    (raw / "concepts_metadata.csv").write_text("\n".join(
        [lines[0]] + [line.rsplit(",", 1)[0] + (",true" if line.split(",", 1)[0] in chosen else ",false")
                      for line in lines[1:]]) + "\n", encoding="utf-8")
    (raw / "generation_templates.csv").write_text(
        "template_id,template_name,description,active\nessay,Connecting essay,An essay,true\n", encoding="utf-8")
    evaluation_rows = (raw / "evaluation_templates.csv").read_text(encoding="utf-8").splitlines()
    (raw / "evaluation_templates.csv").write_text(
        "\n".join(evaluation_rows[:1 + evaluation_templates]) + "\n", encoding="utf-8")
    (raw / "llm_models.csv").write_text(
        "id,model,provider,tier,for_generation,for_evaluation,active,temperature,max_tokens\n"
        + "".join(f"{m.id},{m.model},fake,{m.tier},{str(m.generation).lower()},{str(m.evaluation).lower()},true,0.7,\n"
                  for m in models), encoding="utf-8")
    tiers = sorted({m.tier for m in models})
    (raw / "tiers.csv").write_text("tier,max_concurrent,requests_per_minute\n"
                                   + "".join(f"{tier},{tier_cap},\n" for tier in tiers), encoding="utf-8")
    (raw / "experiment.toml").write_text(
        f'name = "stress"\nk_max = {k_max}\ndescription_level = "paragraph"\nreplicates = 1\n', encoding="utf-8")
    return raw


def prepare(data: Path, experiment_id: str) -> ExperimentSpec:
    return prepare_experiment(data, experiment_id, None, None, None, False)


def short_ack_settings(nats_url: str, **overrides) -> Settings:
    return Settings(nats_url=nats_url, ack_wait_s=ACK_WAIT_S, **overrides)


def publish(stack: EmbeddedStack, spec: ExperimentSpec) -> None:
    asyncio.run(publish_experiment(short_ack_settings(stack.nats_url), spec))


@contextmanager
def running_stack(data: Path, spec: ExperimentSpec, *fake_args: str, latency_s: float = 0.05,
                  env: dict[str, str] | None = None) -> Iterator[EmbeddedStack]:
    """nats-server, the topology for `spec`, the fake LLM (started with `fake_args`) and the five
    services, stopped on the way out."""
    stack = EmbeddedStack(data, llm_base_url=None, fake_llm_latency=latency_s,
                          extra_env={**FAST_RETRIES, "DAYDREAM_ACK_WAIT_S": str(ACK_WAIT_S), **(env or {})})
    try:
        stack.start_nats()
        stack.declare_topology(short_ack_settings(stack.nats_url), spec.tiers)  # before any service declares the default ack wait
        stack.start_fake_llm(*fake_args)
        stack.start_services()
        yield stack
    finally:
        stack.stop()


def cross_experiment_keys(data: Path, stage: str) -> list[tuple[str, str]]:
    return [(row["experiment_id"], row["task_id"])
            for row in read_csv_rows(data / "7_cross_experiment" / f"{stage}_results.csv")]


def tracker_of(data: Path) -> Tracker:
    return Tracker(data, engine_for(data))


def wait_until(condition: Callable[[], bool], *, timeout_s: float, what: str, poll_s: float = 0.2) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(poll_s)


def wait_finished(tracker: Tracker, experiment_id: str, timeout_s: float = 90.0):
    wait_until(lambda: tracker.progress(experiment_id).finished, timeout_s=timeout_s,
               what=f"experiment {experiment_id} to finish")
    return tracker.progress(experiment_id)




@dataclass(frozen=True)
class Outcome:
    """What a run produced, in the terms two runs of the same experiment must agree on."""

    generations: dict[str, str]
    """task id -> response text"""
    scores: dict[str, float | None]
    """evaluation task id -> score"""
    failures: dict[str, str]
    """task id -> reason, unresolved failures only"""
    missing_files: list[str | None]


def outcome(tracker: Tracker, experiment_id: str) -> Outcome:
    data = tracker.layout.data_dir
    with Session(tracker.engine) as session:
        generations = session.exec(select(GenerationResult).where(GenerationResult.experiment_id == experiment_id)).all()
        evaluations = session.exec(select(EvaluationResult).where(EvaluationResult.experiment_id == experiment_id)).all()
        failures = session.exec(select(Failure).where(Failure.experiment_id == experiment_id,
                                                      Failure.resolved == False)).all()  # noqa: E712
    paths: list[str | None] = [path for row in generations for path in (row.prompt_path, row.response_path, row.call_path)]
    paths += [path for row in evaluations
              for path in (row.prompt_path, row.response_path, row.call_path, row.score_path)]
    return Outcome(
        generations={row.task_id: (data / row.response_path).read_text(encoding="utf-8") for row in generations},
        scores={row.task_id: row.score for row in evaluations},
        failures={row.task_id: row.reason for row in failures},
        missing_files=[path for path in paths if not path or not (data / path).is_file()],
    )
