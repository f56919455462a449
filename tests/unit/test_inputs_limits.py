"""Inputs that cannot hurt: a plan's size, ids and the file names made from them, schema values,
and an active model that does nothing (the refusals with one defect each are in the bad-input corpus)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from daydream.plan_cmd import plan
from daydream.publish_cmd import new_experiment_id
from services.tracker.artifacts import task_artifact_names, write_once
from shared.ids import MAX_ID_LENGTH, MAX_NAME_BYTES, is_safe_id, longest_file_name_bytes
from shared.inputs import MAX_INPUT_FILE_BYTES, InputErrors, load_experiment

BASE_RAW = Path(__file__).resolve().parents[1] / "data" / "bad_inputs" / "_base" / "1_raw"


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    return Path(shutil.copytree(BASE_RAW, tmp_path / "data" / "1_raw"))


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new), encoding="utf-8")


def run_plan(data: Path, env: dict[str, str] | None = None):
    app = typer.Typer()
    app.command()(plan)
    return CliRunner().invoke(app, ["--data", str(data)], env=env)


def test_an_unsafe_tier_in_both_csv_files_is_two_input_problems_not_a_traceback(raw: Path) -> None:
    edit(raw / "tiers.csv", "paid,5,", "pa*d,5,")
    edit(raw / "llm_models.csv", "openrouter,paid,", "openrouter,pa*d,")
    with pytest.raises(InputErrors) as caught:
        load_experiment(raw, experiment_id="x")
    assert [(p.file, p.row) for p in caught.value.problems] == [("tiers.csv", 3), ("llm_models.csv", 3)]
    assert "tier 'pa*d' of model 'judge_paid' has unsafe characters" in str(caught.value)


def test_the_planned_call_limit_is_a_setting(raw: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The base plans 3 combos x 1 template x 1 model = 3 generations, each judged once: 6 calls.
    monkeypatch.setenv("DAYDREAM_MAX_PLANNED_CALLS", "5")
    with pytest.raises(InputErrors, match="would make 6 LLM calls .* more than the limit of 5"):
        load_experiment(raw, experiment_id="x")
    monkeypatch.setenv("DAYDREAM_MAX_PLANNED_CALLS", "6")
    assert load_experiment(raw, experiment_id="x").spec.k_max == 2
    assert load_experiment(raw, experiment_id="x", max_calls=6).spec.k_max == 2


def test_replicates_given_on_the_command_line_are_named_when_they_make_the_plan_too_big(raw: Path) -> None:
    with pytest.raises(InputErrors) as caught:
        load_experiment(raw, experiment_id="x", replicates=10**9)
    assert [(p.file, p.row) for p in caught.value.problems] == [("--replicates option", None)]
    assert "lower replicates" in caught.value.problems[0].fix


def test_an_experiment_id_longer_than_the_limit_is_refused(raw: Path) -> None:
    assert load_experiment(raw, experiment_id="e" * MAX_ID_LENGTH).spec
    with pytest.raises(InputErrors, match=f"is {MAX_ID_LENGTH + 1} characters long"):
        load_experiment(raw, experiment_id="e" * (MAX_ID_LENGTH + 1))


def test_a_generated_experiment_id_stays_within_the_limit_whatever_the_name() -> None:
    generated = new_experiment_id("A very long experiment name " * 10)
    assert len(generated) <= MAX_ID_LENGTH
    assert is_safe_id(generated)
    assert generated.startswith("a-very-long-experiment-name-")


def test_the_file_name_budget_matches_what_the_tracker_writes(tmp_path: Path) -> None:
    """A task id whose longest derived name is exactly 255 bytes is written under every name the
    tracker may choose (the last-resort one included); one byte more is what the file system refuses."""
    experiment_id = "x" * MAX_ID_LENGTH
    fitting = "t" * (MAX_NAME_BYTES - longest_file_name_bytes(""))
    assert longest_file_name_bytes(fitting) == MAX_NAME_BYTES
    for index in range(3):  # three different contents: the third goes to the content-hash name
        names = task_artifact_names(fitting, experiment_id, ".score.json")
        assert write_once(tmp_path, names, f"content {index}").is_file()
    assert max(len(path.name) for path in tmp_path.iterdir()) == MAX_NAME_BYTES - len(".12345678.tmp") - 1

    too_long = fitting + "t"
    with pytest.raises(OSError, match="File name too long"):
        for index in range(3):
            write_once(tmp_path, task_artifact_names(too_long, experiment_id, ".score.json"), f"content {index}")


def test_every_generation_template_is_probed_with_every_combination(raw: Path) -> None:
    """The combinations are walked lazily, once per template: the second template sees them all too."""
    edit(raw / "generation_templates.csv", "essay,Essay,Connect the ideas in an essay,true",
         "essay,Essay,Connect the ideas in an essay,true\nlist,List,A list,true")
    (raw / "generation_templates" / "list.txt").write_text(
        "{% if concepts[0].concept_id == 'beta' %}{{ concepts[0].nickname }}{% endif %}{{ concepts[0].name }}",
        encoding="utf-8",
    )
    with pytest.raises(InputErrors) as caught:
        load_experiment(raw, experiment_id="x")
    assert [(p.file, p.row) for p in caught.value.problems] == [("generation_templates/list.txt", 1)]
    assert "with the combination beta, gamma" in str(caught.value)


def test_a_few_nul_bytes_in_utf8_text_are_named_with_their_line(raw: Path) -> None:
    (raw / "descriptions-paragraph" / "beta.txt").write_bytes(b"About beta.\nA stray \x00 here.\n")
    with pytest.raises(InputErrors, match=r"beta.txt line 2: holds 1 NUL byte\(s\), the first on this line"):
        load_experiment(raw, experiment_id="x")


def test_an_input_file_too_big_to_read_whole_is_refused_before_it_is_read(raw: Path) -> None:
    description = raw / "descriptions-paragraph" / "alpha.txt"
    with description.open("r+b") as file:
        file.truncate(MAX_INPUT_FILE_BYTES + 1)  # sparse: costs no disk and no time
    with pytest.raises(InputErrors) as caught:
        load_experiment(raw, experiment_id="x")
    assert [(p.file, p.row) for p in caught.value.problems] == [("descriptions-paragraph/alpha.txt", None)]
    assert f"is {MAX_INPUT_FILE_BYTES + 1:,} bytes" in str(caught.value)


def test_an_active_model_that_does_nothing_is_a_warning_naming_it(raw: Path) -> None:
    judge = "judge_paid,vendor/judge,openrouter,paid,false,true,true,,"
    edit(raw / "llm_models.csv", judge, judge + "\nidle,vendor/idle,openrouter,paid,false,false,true,,")
    loaded = load_experiment(raw, experiment_id="x")
    assert [(w.file, w.row) for w in loaded.warnings] == [("llm_models.csv", 4)]
    used = loaded.spec.generation_models + loaded.spec.evaluation_models
    assert [model.id for model in used] == ["writer_free", "judge_paid"]

    result = run_plan(raw.parent)
    assert result.exit_code == 0, result.output
    assert "warning: llm_models.csv line 4: model 'idle' is active but neither for_generation nor" in result.output
