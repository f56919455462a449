"""Loading experiment inputs: the selection, fallbacks, overrides, defaults and the snapshot."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from shared.events import TierSpec
from shared.inputs import InputErrors, SnapshotConflict, load_experiment, snapshot_experiment
from shared.prompts import TemplateProblem, render_generation_prompt

BASE_RAW = Path(__file__).resolve().parents[1] / "data" / "bad_inputs" / "_base" / "1_raw"


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    """A private copy of the small valid input set, free to edit."""
    return Path(shutil.copytree(BASE_RAW, tmp_path / "1_raw"))


def test_the_example_experiment_loads_only_its_active_rows(example_raw: Path) -> None:
    loaded = load_experiment(example_raw, experiment_id="example")
    spec = loaded.spec
    assert spec.name == "daydreaming-loop"
    assert (spec.k_max, spec.description_level, spec.replicates) == (3, "paragraph", 1)
    assert [c.concept_id for c in spec.concepts] == [
        "default-mode-network",
        "dearth-ai-discoveries",
        "generator-verifier-gap",
        "economic-moat",
    ]
    assert all(c.description_level == "paragraph" and len(c.content) > 200 for c in spec.concepts)
    assert [t.template_id for t in spec.generation_templates] == ["essay", "research-proposal"]
    assert [t.template_id for t in spec.evaluation_templates] == ["daydreaming-loop-rubric", "coherence"]
    assert sorted(m.tier for m in spec.generation_models) == ["free", "paid"]
    assert [m.tier for m in spec.evaluation_models] == ["paid"]
    assert loaded.fallbacks == []
    assert [row["concept_id"] for row in loaded.active_rows["concepts_metadata.csv"]] == [
        c.concept_id for c in spec.concepts
    ]


def test_the_example_evaluation_templates_ask_for_a_strict_score_line(example_raw: Path) -> None:
    spec = load_experiment(example_raw, experiment_id="example").spec
    for template in spec.evaluation_templates:
        assert "SCORE: N" in template.text.strip().splitlines()[-2]
        assert template.max_score == 9


def test_a_missing_level_falls_back_to_paragraph_and_is_reported(example_raw: Path) -> None:
    loaded = load_experiment(example_raw, experiment_id="example", level="article")
    used = {c.concept_id: c.description_level for c in loaded.spec.concepts}
    assert used["default-mode-network"] == "article"
    assert used["economic-moat"] == "paragraph"
    reported = {(f.concept_id, f.requested, f.used) for f in loaded.fallbacks}
    assert ("economic-moat", "article", "paragraph") in reported
    assert not any(f.concept_id == "default-mode-network" for f in loaded.fallbacks)
    assert loaded.spec.description_level == "article"


def test_without_a_paragraph_the_sentence_is_used(raw: Path) -> None:
    (raw / "descriptions-paragraph" / "alpha.txt").unlink()
    loaded = load_experiment(raw, experiment_id="x")
    alpha = loaded.spec.concepts[0]
    assert (alpha.description_level, alpha.content) == ("sentence", "Alpha in one sentence.")
    assert [(f.concept_id, f.requested, f.used) for f in loaded.fallbacks] == [("alpha", "paragraph", "sentence")]


def test_the_name_is_used_when_only_an_unreachable_level_exists(raw: Path) -> None:
    (raw / "descriptions-paragraph" / "beta.txt").unlink()
    (raw / "descriptions-article").mkdir()
    (raw / "descriptions-article" / "beta.txt").write_text("Beta at article length.", encoding="utf-8")
    loaded = load_experiment(raw, experiment_id="x", level="sentence")
    beta = loaded.spec.concepts[1]
    assert (beta.description_level, beta.content) == ("name", "Beta")
    assert ("beta", "sentence", "name") in {(f.concept_id, f.requested, f.used) for f in loaded.fallbacks}


def test_arguments_override_experiment_toml(raw: Path) -> None:
    spec = load_experiment(raw, experiment_id="x", k_max=3, level="sentence", replicates=2).spec
    assert (spec.k_max, spec.description_level, spec.replicates) == (3, "sentence", 2)


def test_seed_and_replicates_come_from_experiment_toml(raw: Path) -> None:
    toml = raw / "experiment.toml"
    toml.write_text(toml.read_text(encoding="utf-8") + "replicates = 3\nseed = 11\n", encoding="utf-8")
    spec = load_experiment(raw, experiment_id="x").spec
    assert (spec.replicates, spec.seed) == (3, 11)


def test_k_max_given_on_the_command_line_is_checked_against_the_concepts(raw: Path) -> None:
    with pytest.raises(InputErrors) as caught:
        load_experiment(raw, experiment_id="x", k_max=9)
    assert [(p.file, p.message) for p in caught.value.problems] == [
        ("--k-max option", "k_max 9 is larger than the number of active concepts (3)")
    ]


def test_without_tiers_csv_the_default_tiers_apply(raw: Path) -> None:
    (raw / "tiers.csv").unlink()
    loaded = load_experiment(raw, experiment_id="x")
    assert loaded.spec.tiers == [
        TierSpec(tier="free", max_concurrent=1, requests_per_minute=20),
        TierSpec(tier="paid", max_concurrent=5, requests_per_minute=None),
    ]
    assert loaded.active_rows["tiers.csv"][1] == {"tier": "paid", "max_concurrent": "5", "requests_per_minute": ""}


def test_booleans_accept_the_usual_spellings(raw: Path) -> None:
    (raw / "concepts_metadata.csv").write_text(
        "concept_id,name,active\nalpha,Alpha,YES\nbeta,Beta,1\ngamma,Gamma,True\ndelta,Delta,no\n", encoding="utf-8"
    )
    (raw / "descriptions-paragraph" / "delta.txt").write_text("Delta.", encoding="utf-8")
    spec = load_experiment(raw, experiment_id="x").spec
    assert [c.concept_id for c in spec.concepts] == ["alpha", "beta", "gamma"]


def test_an_empty_parser_cell_means_final_verdict(raw: Path) -> None:
    path = raw / "evaluation_templates.csv"
    path.write_text(path.read_text(encoding="utf-8").replace("in_last_line", ""), encoding="utf-8")
    assert load_experiment(raw, experiment_id="x").spec.evaluation_templates[0].parser == "final_verdict"


def test_model_parameters_are_read_and_empty_cells_mean_none(raw: Path) -> None:
    spec = load_experiment(raw, experiment_id="x").spec
    writer, judge = spec.generation_models[0], spec.evaluation_models[0]
    assert (writer.temperature, writer.max_tokens) == (0.7, 1000)
    assert (judge.temperature, judge.max_tokens) == (None, None)


def test_inactive_rows_need_no_files_and_stay_out_of_the_selection(raw: Path) -> None:
    path = raw / "generation_templates.csv"
    path.write_text(path.read_text(encoding="utf-8") + "draft,Draft,Not written yet,false\n", encoding="utf-8")
    loaded = load_experiment(raw, experiment_id="x")
    assert [t.template_id for t in loaded.spec.generation_templates] == ["essay"]
    assert "delta" not in [c.concept_id for c in loaded.spec.concepts]
    assert [row["template_id"] for row in loaded.active_rows["generation_templates.csv"]] == ["essay"]


def test_all_problems_are_collected_into_one_error(raw: Path) -> None:
    (raw / "tiers.csv").write_text("tier,max_concurrent,requests_per_minute\nfree,0,20\npaid,5,\n", encoding="utf-8")
    (raw / "generation_templates" / "essay.txt").write_text("{{ nope }}", encoding="utf-8")
    (raw / "descriptions-paragraph" / "gamma.txt").unlink()
    with pytest.raises(InputErrors) as caught:
        load_experiment(raw, experiment_id="x")
    located = {(p.file, p.row) for p in caught.value.problems}
    assert located == {("tiers.csv", 2), ("generation_templates/essay.txt", 1), ("concepts_metadata.csv", 4)}
    text = str(caught.value)
    assert text.startswith("3 problem(s) with the experiment inputs")
    assert "tiers.csv line 2: max_concurrent '0'" in text


def test_an_unsafe_experiment_id_is_refused(raw: Path) -> None:
    with pytest.raises(InputErrors, match="experiment id: 'a/b' is not a safe id"):
        load_experiment(raw, experiment_id="a/b")


def test_a_missing_input_directory_is_one_clear_problem(tmp_path: Path) -> None:
    with pytest.raises(InputErrors, match="the input directory does not exist"):
        load_experiment(tmp_path / "nowhere", experiment_id="x")


def test_rendering_refuses_sandbox_escapes_with_a_template_problem(raw: Path) -> None:
    spec = load_experiment(raw, experiment_id="x").spec
    escape = spec.generation_templates[0].model_copy(update={"text": "{{ concepts.__class__.__subclasses__() }}"})
    with pytest.raises(TemplateProblem, match="refused by the sandbox"):
        render_generation_prompt(escape, spec.concepts)


def test_templates_keep_their_trailing_newline_and_do_not_escape_html(raw: Path) -> None:
    spec = load_experiment(raw, experiment_id="x").spec
    template = spec.generation_templates[0].model_copy(update={"text": "{{ concepts[0].name }} <&>\n"})
    assert render_generation_prompt(template, spec.concepts) == "Alpha <&>\n"


def test_snapshot_writes_the_active_rows_and_settings(raw: Path, tmp_path: Path) -> None:
    loaded = load_experiment(raw, experiment_id="exp-1", replicates=2)
    target = tmp_path / "data" / "experiments" / "exp-1"
    snapshot_experiment(loaded, target)
    settings = json.loads((target / "settings.json").read_text(encoding="utf-8"))
    assert settings == {
        "experiment_id": "exp-1",
        "name": "bad-input-base",
        "k_max": 2,
        "description_level": "paragraph",
        "replicates": 2,
        "seed": None,
    }
    concepts = (target / "concepts_metadata.csv").read_text(encoding="utf-8")
    assert concepts == "concept_id,name,active\nalpha,Alpha,true\nbeta,Beta,true\ngamma,Gamma,true\n"
    assert sorted(p.name for p in target.iterdir()) == [
        "concepts_metadata.csv",
        "evaluation_templates.csv",
        "generation_templates.csv",
        "llm_models.csv",
        "settings.json",
        "spec.json",
        "tiers.csv",
    ]
    assert [p.name for p in target.parent.iterdir()] == ["exp-1"]


def test_snapshot_again_with_the_same_selection_is_a_no_op(raw: Path, tmp_path: Path) -> None:
    target = tmp_path / "experiments" / "exp-1"
    snapshot_experiment(load_experiment(raw, experiment_id="exp-1"), target)
    before = {p.name: p.read_text(encoding="utf-8") for p in target.iterdir()}
    snapshot_experiment(load_experiment(raw, experiment_id="exp-1"), target)
    assert {p.name: p.read_text(encoding="utf-8") for p in target.iterdir()} == before


def test_snapshot_refuses_a_different_selection_under_the_same_id(raw: Path, tmp_path: Path) -> None:
    target = tmp_path / "experiments" / "exp-1"
    snapshot_experiment(load_experiment(raw, experiment_id="exp-1"), target)
    before = {p.name: p.read_text(encoding="utf-8") for p in target.iterdir()}
    with pytest.raises(SnapshotConflict, match=r"differs in settings\.json"):
        snapshot_experiment(load_experiment(raw, experiment_id="exp-1", k_max=3), target)
    assert {p.name: p.read_text(encoding="utf-8") for p in target.iterdir()} == before


def test_snapshot_refuses_the_same_id_after_a_template_was_edited(raw: Path, tmp_path: Path) -> None:
    """The CSV rows are the same, the prompts are not: that is another experiment."""
    target = tmp_path / "experiments" / "exp-1"
    snapshot_experiment(load_experiment(raw, experiment_id="exp-1"), target)
    essay = raw / "generation_templates" / "essay.txt"
    essay.write_text(essay.read_text(encoding="utf-8") + "Answer in French.\n", encoding="utf-8")
    with pytest.raises(SnapshotConflict, match=r"differs in spec\.json"):
        snapshot_experiment(load_experiment(raw, experiment_id="exp-1"), target)


def test_snapshot_of_a_fresh_publish_matches_the_plain_one(raw: Path, tmp_path: Path) -> None:
    """`--fresh` changes how one publish uses stored responses, not what the experiment is."""
    target = tmp_path / "experiments" / "exp-1"
    snapshot_experiment(load_experiment(raw, experiment_id="exp-1", fresh=True), target)
    snapshot_experiment(load_experiment(raw, experiment_id="exp-1"), target)


def test_a_concept_with_a_problem_still_counts_as_active_for_k_max(raw: Path) -> None:
    (raw / "descriptions-paragraph" / "gamma.txt").unlink()
    with pytest.raises(InputErrors) as caught:
        load_experiment(raw, experiment_id="x", k_max=3)
    assert [p.message for p in caught.value.problems] == ["active concept 'gamma' has no description file"]


def test_an_unreadable_file_is_a_problem_naming_it(raw: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Root reads through `chmod 000`, so the refusal is what the OS would say to anyone else."""
    unreadable = raw / "generation_templates" / "essay.txt"
    read_bytes = Path.read_bytes

    def refuse(path: Path) -> bytes:
        if path == unreadable:
            raise PermissionError(13, "Permission denied", str(path))
        return read_bytes(path)

    monkeypatch.setattr(Path, "read_bytes", refuse)
    with pytest.raises(InputErrors) as caught:
        load_experiment(raw, experiment_id="x")
    assert [(p.file, p.message) for p in caught.value.problems] == [
        ("generation_templates/essay.txt", "cannot be read: Permission denied")
    ]
    assert "make the file readable" in caught.value.problems[0].fix


def test_a_snapshot_written_before_a_field_was_added_is_the_same_selection(raw: Path, tmp_path: Path) -> None:
    """Resuming after an upgrade: the older snapshot lacks what the new code adds with its default."""
    target = tmp_path / "experiments" / "exp-1"
    snapshot_experiment(load_experiment(raw, experiment_id="exp-1"), target)
    spec = json.loads((target / "spec.json").read_text(encoding="utf-8"))
    del spec["evaluate_truncated"]
    (target / "spec.json").write_text(json.dumps(spec), encoding="utf-8")
    snapshot_experiment(load_experiment(raw, experiment_id="exp-1"), target)
    with pytest.raises(SnapshotConflict, match=r"differs in settings\.json"):
        snapshot_experiment(load_experiment(raw, experiment_id="exp-1", k_max=3), target)


def with_prices(raw: Path, writer: str, judge: str) -> None:
    models = raw / "llm_models.csv"
    text = models.read_text(encoding="utf-8")
    text = text.replace("temperature,max_tokens", "temperature,max_tokens,prompt_price,completion_price")
    text = text.replace("true,0.7,1000", f"true,0.7,1000,{writer}").replace("true,,", f"true,,,{judge}")
    models.write_text(text, encoding="utf-8")


def test_prices_and_the_budget_are_read_with_the_selection(raw: Path) -> None:
    with_prices(raw, "0,0", "0.4,1.6")
    toml = raw / "experiment.toml"
    toml.write_text(toml.read_text(encoding="utf-8") + "max_cost = 2.5\n", encoding="utf-8")
    spec = load_experiment(raw, experiment_id="x").spec
    (writer,), (judge,) = spec.generation_models, spec.evaluation_models
    assert (writer.prompt_price, writer.completion_price) == (0.0, 0.0)
    assert (judge.prompt_price, judge.completion_price) == (0.4, 1.6)
    assert spec.max_cost == 2.5


def test_new_prices_or_another_budget_resume_the_same_experiment(raw: Path, tmp_path: Path) -> None:
    """Prices change the estimate and the budget steers the run: neither is another selection."""
    target = tmp_path / "experiments" / "exp-1"
    snapshot_experiment(load_experiment(raw, experiment_id="exp-1"), target)
    with_prices(raw, "0,0", "0.4,1.6")
    toml = raw / "experiment.toml"
    toml.write_text(toml.read_text(encoding="utf-8") + "max_cost = 2.5\n", encoding="utf-8")
    snapshot_experiment(load_experiment(raw, experiment_id="exp-1"), target)
    assert "max_cost" not in json.loads((target / "spec.json").read_text(encoding="utf-8"))
