"""What `daydream rerun` republishes: `--failed` takes failed tasks and tasks that never reported;
`--task` knows every planned generation and the evaluations of recorded generations."""

from __future__ import annotations

from pathlib import Path

import pytest

from daydream.rerun_cmd import rerunnable_tasks, unfinished_tasks
from services.tracker.views import RecordedGeneration, RecordedResults
from shared.events import ExperimentSpec
from shared.inputs import load_experiment
from shared.tasks import evaluation_tasks, generation_tasks


@pytest.fixture
def spec(example_raw: Path) -> ExperimentSpec:
    return load_experiment(example_raw, experiment_id="exp-1").spec


def test_failed_and_never_reported_tasks_are_rerun_and_finished_ones_are_not(spec: ExperimentSpec) -> None:
    generations = generation_tasks(spec)
    judged, failed_generation, lost = generations[0], generations[1], generations[2]
    evaluations = evaluation_tasks(judged, "an essay", truncated=False)
    recorded = RecordedResults(
        generations={g.task_id: RecordedGeneration("an essay", False) for g in generations if g not in (failed_generation, lost)},
        evaluations={evaluations[0].task_id},
    )
    known = rerunnable_tasks(spec, [failed_generation], recorded)
    chosen = {task.task_id for task in unfinished_tasks(known, [failed_generation], recorded)}
    assert failed_generation.task_id in chosen
    assert lost.task_id in chosen, "a generation that never reported at all"
    assert evaluations[1].task_id in chosen, "an evaluation of a recorded generation that never reported"
    assert judged.task_id not in chosen and evaluations[0].task_id not in chosen
    unjudged = len(generations) - 3  # recorded generations other than `judged` still owe both evaluations
    assert len(chosen) == 2 + 1 + 2 * unjudged


def test_the_evaluations_of_a_recorded_generation_carry_its_text(spec: ExperimentSpec) -> None:
    generation = generation_tasks(spec)[0]
    recorded = RecordedResults(generations={generation.task_id: RecordedGeneration("the recorded essay", False)},
                               evaluations=set())
    known = rerunnable_tasks(spec, [], recorded)
    for task in evaluation_tasks(generation, "the recorded essay", truncated=False):
        assert "the recorded essay" in known[task.task_id].prompt


def test_without_a_snapshot_only_the_failed_tasks_are_known(spec: ExperimentSpec) -> None:
    failed = generation_tasks(spec)[3]
    assert list(rerunnable_tasks(None, [failed], RecordedResults(generations={}, evaluations=set()))) == [failed.task_id]
