"""Fakes the tests share: a small experiment's events, built with the real contracts, and the
helpers that deliver them to a tracker and read back what it wrote."""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import Engine
from sqlmodel import Session, select

from services.llm_worker.tier_control import TierStopped
from services.tracker.artifacts import read_csv_rows
from services.tracker.recorder import Tracker
from services.tracker.tables import (
    ALL_TABLES,
    ComboMapping,
)
from shared.events import (
    CallParameters,
    CallRecord,
    ComboPlanned,
    ConceptSpec,
    EvaluationDone,
    EvaluationPlan,
    EvaluationScored,
    EvaluationTask,
    EvaluationTemplateSpec,
    Event,
    ExperimentPlanned,
    ExperimentRequested,
    ExperimentSpec,
    GenerationDone,
    GenerationTask,
    ModelSpec,
    Stage,
    TaskCreated,
    TaskFailed,
    TemplateSpec,
    TierSpec,
)
from shared.ids import combo_id, evaluation_task_id, generation_task_id
from shared.llm import LLMError

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
WRITER_TIER = TierSpec(tier="writers", max_concurrent=4)
JUDGE_TIER = TierSpec(tier="judges", max_concurrent=2)
GENERATION_MODELS = [
    ModelSpec(id="gm1", model="vendor/writer-one", provider="openrouter", tier="writers"),
    ModelSpec(id="gm2", model="vendor/writer-two", provider="openrouter", tier="writers"),
]
EVALUATION_MODELS = [
    ModelSpec(id="em1", model="vendor/judge-one", provider="openrouter", tier="judges"),
    ModelSpec(id="em2", model="vendor/judge-two", provider="openrouter", tier="judges"),
]
JUDGE_TEMPLATE = EvaluationTemplateSpec(
    template_id="judge", template_name="Judge", text="Rate {{ response }}", parser="last_number", max_score=9
)
WRITER_TEMPLATE = TemplateSpec(template_id="essay", template_name="Essay", text="Combine {{ concepts }}")
COMBOS = [["c1", "c2"], ["c1", "c3"]]
SCORES = [8.0, 7.0, 5.0, 6.0, 9.0, 9.0, 2.0, None]
"""One per evaluation, in order: generation (combo-major, then model) x judge model; the last one
does not parse."""


def call(task_id: str, text: str, at: datetime) -> CallRecord:
    return CallRecord(
        text=text,
        finish_reason="stop",
        prompt_tokens=100,
        completion_tokens=50,
        cost_usd=0.001,
        latency_s=1.5,
        provider="SomeHost",
        resolved_model="vendor/model-2025",
        response_id=f"resp-{task_id}",
        request_hash=hashlib.sha256(f"{task_id}{text}".encode()).hexdigest(),
        started_at=at,
        finished_at=at + timedelta(seconds=1),
    )


@dataclass
class FakeExperiment:
    """Two combos x one template x two writers, each judged by two judges."""

    experiment_id: str = "exp1"
    text_suffix: str = ""
    start: datetime = T0
    requested: ExperimentRequested = field(init=False)
    planned: ExperimentPlanned = field(init=False)
    generations: list[GenerationDone] = field(init=False)
    evaluations: list[EvaluationDone] = field(init=False)
    scores: list[EvaluationScored] = field(init=False)

    def __post_init__(self) -> None:
        spec = ExperimentSpec(
            experiment_id=self.experiment_id,
            name="fake",
            k_max=2,
            description_level="sentence",
            concepts=[
                ConceptSpec(concept_id=c, name=c.upper(), content=f"about {c}", description_level="sentence")
                for c in ("c1", "c2", "c3")
            ],
            generation_templates=[WRITER_TEMPLATE],
            evaluation_templates=[JUDGE_TEMPLATE],
            generation_models=GENERATION_MODELS,
            evaluation_models=EVALUATION_MODELS,
            tiers=[WRITER_TIER, JUDGE_TIER],
        )
        self.requested = ExperimentRequested(spec=spec, emitted_at=self.start)
        combos = [ComboPlanned(combo_id=combo_id(members, "sentence", 2), concept_ids=members) for members in COMBOS]
        self.planned = ExperimentPlanned(
            experiment_id=self.experiment_id,
            name="fake",
            k_max=2,
            description_level="sentence",
            replicates=1,
            combos=combos,
            generation_tasks=4,
            evaluation_tasks=8,
            tasks_by_tier={"generation": {"writers": 4}, "evaluation": {"judges": 8}},
            emitted_at=self.start + timedelta(seconds=1),
        )
        self.generations, self.evaluations, self.scores = [], [], []
        moment = self.start + timedelta(seconds=10)
        for combo in combos:
            for model in GENERATION_MODELS:
                writing = self.generation_task(combo.combo_id, model)
                self.generations.append(
                    GenerationDone(
                        task=writing,
                        call=call(writing.task_id, f"idea from {writing.task_id}{self.text_suffix}", moment),
                        emitted_at=moment,
                    )
                )
                moment += timedelta(seconds=5)
        for generation in self.generations:
            for judge in EVALUATION_MODELS:
                task = self.evaluation_task(generation, judge)
                score = SCORES[len(self.evaluations)]
                self.evaluations.append(
                    EvaluationDone(task=task, call=call(task.task_id, f"SCORE: {score}", moment), emitted_at=moment)
                )
                self.scores.append(
                    EvaluationScored(
                        task=task,
                        parser="last_number",
                        score=score,
                        parse_error=None if score is not None else "no number found",
                        candidates=[] if score is None else [score],
                        emitted_at=moment + timedelta(seconds=2),
                    )
                )
                moment += timedelta(seconds=5)

    def generation_task(self, combo: str, model: ModelSpec) -> GenerationTask:
        task_id = generation_task_id(combo, WRITER_TEMPLATE.template_id, model.id)
        return GenerationTask(
            experiment_id=self.experiment_id,
            task_id=task_id,
            tier=WRITER_TIER,
            model=model,
            parameters=CallParameters(temperature=0.7),
            prompt=f"Combine the concepts of {combo}",
            combo_id=combo,
            generation_template_id=WRITER_TEMPLATE.template_id,
            generation_model_id=model.id,
            generation_task_id=task_id,
            evaluation_plan=EvaluationPlan(templates=[JUDGE_TEMPLATE], models=EVALUATION_MODELS, tiers=[JUDGE_TIER]),
        )

    def evaluation_task(self, generation: GenerationDone, judge: ModelSpec) -> EvaluationTask:
        parent = generation.task
        return EvaluationTask(
            experiment_id=self.experiment_id,
            task_id=evaluation_task_id(parent.task_id, JUDGE_TEMPLATE.template_id, judge.id),
            tier=JUDGE_TIER,
            model=judge,
            parameters=CallParameters(),
            prompt=f"Rate: {generation.call.text}",
            combo_id=parent.combo_id,
            generation_template_id=parent.generation_template_id,
            generation_model_id=parent.generation_model_id,
            generation_task_id=parent.task_id,
            evaluation_template_id=JUDGE_TEMPLATE.template_id,
            evaluation_model_id=judge.id,
            parser="last_number",
            max_score=9,
        )

    def events(self) -> list:
        return [self.requested, self.planned, *self.generations, *self.evaluations, *self.scores]

    def failure(self, task: TaskCreated, at: datetime, reason: str = "server_error") -> TaskFailed:
        return TaskFailed(
            stage=task.stage,
            experiment_id=task.experiment_id,
            task_id=task.task_id,
            reason=reason,
            message="502 from upstream after 6 attempts",
            attempts=6,
            tier=task.tier.tier,
            model_id=task.model.id,
            task=task,
            emitted_at=at,
        )


def deliver(tracker: Tracker, event: Event) -> None:
    """What the tracker's app does with a decoded event, without a broker."""
    tracker.record(event)


def dump_tables(engine: Engine, experiment_ids: set[str] | None = None) -> dict[str, list[dict]]:
    """Every row of every tracker table (without surrogate ids), sorted, for comparisons."""
    dumped = {}
    with Session(engine) as session:
        for table in ALL_TABLES:
            rows = [row.model_dump(exclude={"id"}) for row in session.exec(select(table)).all()]
            if experiment_ids is not None and table is not ComboMapping:
                rows = [row for row in rows if row["experiment_id"] in experiment_ids]
            dumped[table.__tablename__] = sorted(rows, key=lambda row: json.dumps(row, sort_keys=True, default=str))
    return dumped


def csv_lines(data_dir: Path, stage: str) -> list[dict[str, str]]:
    return read_csv_rows(data_dir / "7_cross_experiment" / f"{stage}_results.csv")


def csv_keys(data_dir: Path, stage: str) -> list[tuple[str, str]]:
    return sorted((row["experiment_id"], row["task_id"]) for row in csv_lines(data_dir, stage))


@dataclass
class FakeTierGate:
    """A tier gate in one process: it records what the worker asked of the tier, in order."""

    stopped_with: TierStopped | None = None
    log: list[tuple[str, ...]] = field(default_factory=list)
    while_waiting: Callable[[], None] | None = None
    """Runs while the worker waits for its slot: what another worker does meanwhile."""

    def stopped(self, tier: str) -> TierStopped | None:
        return self.stopped_with

    @contextlib.asynccontextmanager
    async def slot(self, tier: str, stage: Stage) -> AsyncIterator[None]:
        if self.stopped_with:
            raise self.stopped_with
        if self.while_waiting:
            self.while_waiting()
        self.log.append(("take", tier, stage))
        try:
            yield
        finally:
            self.log.append(("give back", tier))

    async def succeeded(self, tier: str) -> None:
        self.log.append(("succeeded", tier))

    async def failed(self, tier: str, error: LLMError) -> None:
        self.log.append(("failed", tier, error.kind.value))
