"""The tracker turns events into rows, files and CSV lines, whatever the order and however often
they arrive. Also home of the small fake experiment the other tracker tests reuse."""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, select

from services.tracker.artifacts import CsvHeaderMismatch, read_csv_rows
from services.tracker.csv_log import EVALUATION_CSV_COLUMNS, GENERATION_CSV_COLUMNS
from services.tracker.db import make_engine
from services.tracker.recorder import Tracker
from services.tracker.tables import (
    ALL_TABLES,
    ComboMapping,
    EvaluationResult,
    Experiment,
    Failure,
    GenerationResult,
    LlmCall,
)
from shared.events import (
    CallParameters,
    CallRecord,
    ComboPlanned,
    ConceptSpec,
    EvaluationDone,
    EvaluationPlan,
    EvaluationScored,
    EvaluationTemplateSpec,
    ExperimentPlanned,
    ExperimentRequested,
    ExperimentSpec,
    GenerationDone,
    ModelSpec,
    TaskCreated,
    TaskFailed,
    TemplateSpec,
    TierSpec,
)
from shared.ids import combo_id, evaluation_task_id, generation_task_id

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=timezone.utc)
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
                task = self.generation_task(combo.combo_id, model)
                self.generations.append(
                    GenerationDone(
                        task=task,
                        call=call(task.task_id, f"idea from {task.task_id}{self.text_suffix}", moment),
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

    def generation_task(self, combo: str, model: ModelSpec) -> TaskCreated:
        task_id = generation_task_id(combo, WRITER_TEMPLATE.template_id, model.id)
        return TaskCreated(
            stage="generation",
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

    def evaluation_task(self, generation: GenerationDone, judge: ModelSpec) -> TaskCreated:
        parent = generation.task
        return TaskCreated(
            stage="evaluation",
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


def deliver(tracker: Tracker, event) -> None:
    handlers = {
        ExperimentRequested: tracker.record_requested,
        ExperimentPlanned: tracker.record_planned,
        GenerationDone: tracker.record_generation,
        EvaluationDone: tracker.record_evaluation,
        EvaluationScored: tracker.record_score,
        TaskFailed: tracker.record_failure,
    }
    handlers[type(event)](event)


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


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def engine(data_dir: Path) -> Engine:
    engine = make_engine(f"sqlite:///{data_dir / 'daydream.db'}")
    yield engine
    engine.dispose()


@pytest.fixture
def tracker(data_dir: Path, engine: Engine) -> Tracker:
    return Tracker(data_dir, engine)


def test_a_whole_experiment_lands_in_every_table_file_and_csv(tracker: Tracker, data_dir: Path, engine: Engine) -> None:
    fake = FakeExperiment()
    for event in fake.events():
        deliver(tracker, event)

    with Session(engine) as session:
        experiment = session.get(Experiment, "exp1")
        assert (
            experiment.name,
            experiment.k_max,
            experiment.generation_tasks_planned,
            experiment.evaluation_tasks_planned,
        ) == ("fake", 2, 4, 8)
        assert experiment.tasks_by_tier == {"generation": {"writers": 4}, "evaluation": {"judges": 8}}
        assert experiment.snapshot_path == "experiments/exp1"
        assert experiment.started_at == datetime(2025, 3, 1, 12, 0, 10, tzinfo=timezone.utc)
        assert experiment.finished_at == datetime(2025, 3, 1, 12, 1, 7, tzinfo=timezone.utc)
        assert len(session.exec(select(ComboMapping)).all()) == 4
        assert len(session.exec(select(GenerationResult)).all()) == 4
        assert len(session.exec(select(LlmCall)).all()) == 12
        evaluations = session.exec(select(EvaluationResult).order_by(EvaluationResult.finished_at)).all()
        assert [row.score for row in evaluations] == SCORES
        assert [row.status for row in evaluations] == ["scored"] * 7 + ["parse_error"]
        assert evaluations[-1].parse_error == "no number found"

    generation = fake.generations[0]
    task_id = generation.task.task_id
    responses = data_dir / "3_generation" / "generation_responses"
    assert (data_dir / "3_generation" / "generation_prompts" / f"{task_id}.txt").read_text() == generation.task.prompt
    assert (responses / f"{task_id}.txt").read_text() == generation.call.text
    record = json.loads((responses / f"{task_id}.json").read_text())
    assert record["experiment_id"] == "exp1" and record["call"]["request_hash"] == generation.call.request_hash
    assert (
        record["task"]["combo_id"] == generation.task.combo_id
        and record["response_path"] == f"3_generation/generation_responses/{task_id}.txt"
    )
    evaluation_id = fake.evaluations[0].task.task_id
    score_record = json.loads(
        (data_dir / "4_evaluation" / "evaluation_responses" / f"{evaluation_id}.score.json").read_text()
    )
    assert score_record["score"] == 8.0

    generation_lines = read_csv_rows(data_dir / "7_cross_experiment" / "generation_results.csv")
    evaluation_lines = read_csv_rows(data_dir / "7_cross_experiment" / "evaluation_results.csv")
    assert list(generation_lines[0]) == list(GENERATION_CSV_COLUMNS)
    assert list(evaluation_lines[0]) == list(EVALUATION_CSV_COLUMNS)
    assert len(generation_lines) == 4 and len(evaluation_lines) == 8
    first = evaluation_lines[0]
    assert (first["experiment_id"], first["task_id"], first["score"], first["evaluation_model"]) == (
        "exp1",
        evaluation_id,
        "8.0",
        "vendor/judge-one",
    )
    assert generation_lines[0]["generation_model"] == "vendor/writer-one"
    assert [line["generation_model"] for line in evaluation_lines[:4]] == ["vendor/writer-one"] * 2 + [
        "vendor/writer-two"
    ] * 2
    assert {line["revision"] for line in [*generation_lines, *evaluation_lines]} == {"1"}

    progress = tracker.progress("exp1")
    assert progress.finished
    assert {name: (s.planned, s.done, s.failed) for name, s in progress.stages.items()} == {
        "generation": (4, 4, 0),
        "evaluation": (8, 8, 0),
        "scoring": (8, 8, 0),
    }
    assert progress.parse_errors == 1
    assert (progress.prompt_tokens, progress.completion_tokens) == (1200, 600)
    assert progress.cost_usd == pytest.approx(0.012)
    assert progress.cost_saved_usd == 0
    assert [(t.stage, t.tier, t.planned, t.done) for t in progress.tiers] == [
        ("evaluation", "judges", 8, 8),
        ("generation", "writers", 4, 4),
    ]


@pytest.mark.parametrize("seed", [1, 2])
def test_duplicated_shuffled_delivery_gives_the_same_state(tmp_path: Path, seed: int) -> None:
    in_order_dir, shuffled_dir = tmp_path / "in_order", tmp_path / "shuffled"
    in_order = Tracker(in_order_dir, make_engine(f"sqlite:///{in_order_dir / 'daydream.db'}"))
    shuffled = Tracker(shuffled_dir, make_engine(f"sqlite:///{shuffled_dir / 'daydream.db'}"))
    events = FakeExperiment().events()
    for event in events:
        deliver(in_order, event)
    twice = events * 2
    random.Random(seed).shuffle(twice)
    for event in twice:
        deliver(shuffled, event)

    assert dump_tables(shuffled.engine) == dump_tables(in_order.engine)
    for stage, count in (("generation", 4), ("evaluation", 8)):
        keys = csv_keys(shuffled_dir, stage)
        assert len(keys) == len(set(keys)) == count
    assert shuffled.progress("exp1").finished


def test_an_evaluation_line_waits_for_its_answer_its_score_and_its_generation(
    tracker: Tracker, data_dir: Path
) -> None:
    """The tracker may read the judge's events before the generation's: the line, which names the
    generation model, is appended once all three are in, whatever their order."""
    fake = FakeExperiment()
    tracker.record_score(fake.scores[0])
    assert csv_keys(data_dir, "evaluation") == []
    tracker.record_evaluation(fake.evaluations[0])
    tracker.record_evaluation(fake.evaluations[0])
    assert csv_keys(data_dir, "evaluation") == []
    tracker.record_generation(fake.generations[0])
    tracker.record_generation(fake.generations[0])
    [line] = csv_lines(data_dir, "evaluation")
    assert (line["task_id"], line["revision"], line["generation_model"], line["score"]) == (
        fake.evaluations[0].task.task_id,
        "1",
        "vendor/writer-one",
        "8.0",
    )


def test_a_failure_followed_by_success_counts_as_done(tracker: Tracker) -> None:
    fake = FakeExperiment()
    tracker.record_planned(fake.planned)
    generation = fake.generations[0]
    tracker.record_failure(fake.failure(generation.task, T0 + timedelta(seconds=5)))

    progress = tracker.progress("exp1")
    assert (progress.stages["generation"].failed, progress.failures_by_reason) == (1, {"server_error": 1})
    assert progress.stages["evaluation"].skipped == 2
    assert [task.task_id for task in tracker.failed_tasks("exp1")] == [generation.task.task_id]
    assert tracker.failed_tasks("exp1")[0] == generation.task

    tracker.record_generation(generation)
    progress = tracker.progress("exp1")
    assert (progress.stages["generation"].done, progress.stages["generation"].failed) == (1, 0)
    assert progress.stages["evaluation"].skipped == 0
    assert tracker.failed_tasks("exp1") == []
    with Session(tracker.engine) as session:
        assert session.exec(select(Failure)).one().resolved


def test_a_stale_failure_arriving_after_the_success_stays_resolved(tracker: Tracker) -> None:
    generation = FakeExperiment().generations[0]
    tracker.record_generation(generation)
    tracker.record_failure(FakeExperiment().failure(generation.task, T0))
    assert tracker.failed_tasks("exp1") == []
    assert tracker.progress("exp1").stages["generation"].failed == 0


def test_an_experiment_with_failed_generations_finishes_without_their_evaluations(tracker: Tracker) -> None:
    fake = FakeExperiment()
    lost = fake.generations[0].task.task_id
    for event in fake.events():
        if getattr(getattr(event, "task", None), "generation_task_id", None) != lost:
            deliver(tracker, event)
    assert not tracker.progress("exp1").finished
    tracker.record_failure(fake.failure(fake.generations[0].task, T0 + timedelta(hours=1), reason="timeout"))
    progress = tracker.progress("exp1")
    assert progress.finished and progress.finished_at == datetime(2025, 3, 1, 13, 0, tzinfo=timezone.utc)
    assert progress.stages["evaluation"].skipped == 2


def test_a_task_id_reused_by_another_experiment_keeps_both_files(data_dir: Path, engine: Engine) -> None:
    tracker = Tracker(data_dir, engine)
    first = FakeExperiment("exp1").generations[0]
    same_text = FakeExperiment("exp2").generations[0]
    new_text = FakeExperiment("exp3", text_suffix=" (fresh sample)").generations[0]
    for event in (first, same_text, new_text, new_text):
        tracker.record_generation(event)

    task_id = first.task.task_id
    responses = data_dir / "3_generation" / "generation_responses"
    assert (responses / f"{task_id}.txt").read_text() == first.call.text
    assert (responses / f"{task_id}.exp3.txt").read_text() == new_text.call.text
    with Session(engine) as session:
        paths = {row.experiment_id: row.response_path for row in session.exec(select(GenerationResult)).all()}
    assert paths == {
        "exp1": f"3_generation/generation_responses/{task_id}.txt",
        "exp2": f"3_generation/generation_responses/{task_id}.txt",
        "exp3": f"3_generation/generation_responses/{task_id}.exp3.txt",
    }
    assert sorted(path.name for path in responses.glob("*.json")) == sorted(
        [f"{task_id}.json", f"{task_id}.exp2.json", f"{task_id}.exp3.json"]
    )


def test_a_rerun_inside_one_experiment_replaces_the_row_and_keeps_the_old_file(
    tracker: Tracker, data_dir: Path
) -> None:
    original = FakeExperiment().generations[0]
    rerun = GenerationDone(
        task=original.task, call=call(original.task.task_id, "a second take", T0 + timedelta(hours=2))
    )
    tracker.record_generation(original)
    tracker.record_generation(rerun)
    tracker.record_generation(original)

    with Session(tracker.engine) as session:
        row = session.exec(select(GenerationResult)).one()
    assert (data_dir / row.response_path).read_text() == "a second take"
    assert (
        data_dir / "3_generation" / "generation_responses" / f"{original.task.task_id}.txt"
    ).read_text() == original.call.text
    lines = csv_lines(data_dir, "generation")
    assert [(line["task_id"], line["revision"]) for line in lines] == [
        (original.task.task_id, "1"),
        (original.task.task_id, "2"),
    ]
    assert lines[-1]["response_path"] == row.response_path != lines[0]["response_path"]
    assert row.revision == 2 and row.csv_appended


def test_a_rescore_supersedes_the_evaluation_line_and_a_repeated_verdict_changes_nothing(
    tracker: Tracker, data_dir: Path
) -> None:
    fake = FakeExperiment()
    for event in fake.events():
        deliver(tracker, event)
    first = fake.scores[0]
    rescored = first.model_copy(update={"score": 1.0, "candidates": [1.0], "emitted_at": T0 + timedelta(days=1)})
    same_again = rescored.model_copy(update={"emitted_at": T0 + timedelta(days=2)})
    responses = data_dir / "4_evaluation" / "evaluation_responses"
    deliver(tracker, rescored)
    score_files = sorted(responses.glob("*.score.json"))
    deliver(tracker, same_again)
    deliver(tracker, first)

    mine = [line for line in csv_lines(data_dir, "evaluation") if line["task_id"] == first.task.task_id]
    assert [(line["revision"], line["score"]) for line in mine] == [("1", "8.0"), ("2", "1.0")]
    with Session(tracker.engine) as session:
        row = session.exec(select(EvaluationResult).where(EvaluationResult.task_id == first.task.task_id)).one()
    assert (row.score, row.revision, row.scored_at) == (1.0, 2, rescored.emitted_at)
    assert sorted(responses.glob("*.score.json")) == score_files
    assert len(score_files) == len(fake.scores) + 1


def test_progress_counts_a_reused_response_as_saved_not_spent(tracker: Tracker) -> None:
    fake = FakeExperiment()
    paid, reused = fake.generations[:2]
    tracker.record_generation(paid)
    tracker.record_generation(reused.model_copy(update={"call": reused.call.model_copy(update={"cached": True})}))
    progress = tracker.progress("exp1")
    assert (progress.cost_usd, progress.cost_saved_usd) == (pytest.approx(0.001), pytest.approx(0.001))


def test_reconcile_finishes_an_append_interrupted_by_a_crash(tracker: Tracker, data_dir: Path) -> None:
    fake = FakeExperiment()
    for generation in fake.generations[:2]:
        tracker.record_generation(generation)
    with Session(tracker.engine) as session:
        for row in session.exec(select(GenerationResult)).all():
            row.csv_appended = False
            session.add(row)
        session.commit()
    lines = (data_dir / "7_cross_experiment" / "generation_results.csv").read_text().splitlines()
    (data_dir / "7_cross_experiment" / "generation_results.csv").write_text("\n".join(lines[:2]) + "\n")

    tracker.reconcile_csvs()
    tracker.reconcile_csvs()

    assert csv_keys(data_dir, "generation") == sorted(("exp1", g.task.task_id) for g in fake.generations[:2])
    with Session(tracker.engine) as session:
        assert all(row.csv_appended for row in session.exec(select(GenerationResult)).all())


def test_failures_outside_the_planned_stages_are_reported_but_not_counted_as_tasks(tracker: Tracker) -> None:
    fake = FakeExperiment()
    tracker.record_planned(fake.planned)
    planning = TaskFailed(
        stage="planning", experiment_id="exp1", task_id="plan", reason="bad_request", message="no concepts", attempts=1
    )
    tracker.record_failure(planning)
    unparseable = fake.failure(fake.evaluations[0].task, T0, reason="poison_message").model_copy(
        update={"stage": "scoring"}
    )
    tracker.record_failure(unparseable)

    progress = tracker.progress("exp1")
    assert progress.failures_by_reason == {"bad_request": 1, "poison_message": 1}
    assert [stage.failed for stage in progress.stages.values()] == [0, 0, 1]


def test_the_tracker_upgrades_an_empty_csv_with_an_earlier_header_to_todays(tracker: Tracker, data_dir: Path) -> None:
    csv_path = data_dir / "7_cross_experiment" / "evaluation_results.csv"
    csv_path.parent.mkdir(parents=True)
    earlier = ",".join(column for column in EVALUATION_CSV_COLUMNS if column not in ("revision", "generation_model"))
    csv_path.write_text(earlier + "\n")
    tracker.reconcile_csvs()
    assert csv_path.read_text().splitlines() == [",".join(EVALUATION_CSV_COLUMNS)]


def test_a_cross_experiment_csv_with_foreign_columns_is_refused_not_mixed(tracker: Tracker, data_dir: Path) -> None:
    csv_path = data_dir / "7_cross_experiment" / "generation_results.csv"
    csv_path.parent.mkdir(parents=True)
    csv_path.write_text("task_id,score\nold,5\n")
    with pytest.raises(CsvHeaderMismatch, match="generation_results.csv.*daydream rebuild"):
        tracker.record_generation(FakeExperiment().generations[0])
    assert csv_path.read_text() == "task_id,score\nold,5\n"


def test_a_truncated_generation_left_unjudged_counts_its_evaluations_once_as_skipped(tracker: Tracker) -> None:
    """The fan-out records why each evaluation will not run; progress must not count them twice."""
    from services.evaluator.fanout import evaluation_messages

    fake = FakeExperiment()
    spec = fake.requested.spec.model_copy(update={"evaluate_truncated": False})
    deliver(tracker, fake.requested.model_copy(update={"spec": spec}))
    deliver(tracker, fake.planned)
    first = fake.generations[0]
    plan = first.task.evaluation_plan.model_copy(update={"evaluate_truncated": False})
    cut = first.model_copy(update={"task": first.task.model_copy(update={"evaluation_plan": plan}),
                                   "call": first.call.model_copy(update={"truncated": True})})
    deliver(tracker, cut)
    for _, failure, _ in evaluation_messages(cut):
        deliver(tracker, failure)
    evaluation = tracker.progress("exp1").stages["evaluation"]
    assert (evaluation.failed, evaluation.skipped) == (0, 2)


def test_a_refused_plan_is_reported_as_the_planning_error(tracker: Tracker) -> None:
    """`daydream run` stops following an experiment the combiner could not plan."""
    fake = FakeExperiment()
    deliver(tracker, fake.requested)
    assert tracker.progress("exp1").planning_error is None
    deliver(tracker, TaskFailed(stage="planning", experiment_id="exp1", task_id="plan", reason="invalid_experiment",
                                message="template essay: uses an undefined variable", attempts=1))
    assert tracker.progress("exp1").planning_error == "template essay: uses an undefined variable"
