"""`daydream score` as a user runs it: files in, one tab-separated line per file out."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner, Result

from daydream.score_cmd import score
from services.parser.scoring import DEFAULT_MAX_SCORE
from shared.inputs import load_experiment, snapshot_experiment

runner = CliRunner()


@pytest.fixture
def app() -> typer.Typer:
    app = typer.Typer()
    app.command("score")(score)
    app.command("noop")(lambda: None)  # a second command so `score` is a real subcommand
    return app


def write(directory: Path, name: str, text: str | bytes) -> Path:
    path = directory / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def run(app: typer.Typer, *args: str) -> Result:
    return runner.invoke(app, ["score", *map(str, args)])


def test_prints_one_line_per_file_in_order(app: typer.Typer, tmp_path: Path) -> None:
    good = write(tmp_path, "good.txt", "The loop is complete.\n\nSCORE:\n\n7")
    none = write(tmp_path, "none.txt", "A thoughtful essay with no verdict.")
    result = run(app, good, none)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [f"{good}\t7", f"{none}\tERROR no_score_found"]


def test_failures_do_not_change_the_exit_code(app: typer.Typer, tmp_path: Path) -> None:
    clash = write(tmp_path, "clash.txt", "Score: 6\n\nScore: 8")
    result = run(app, clash)
    assert result.exit_code == 0
    assert result.output == f"{clash}\tERROR ambiguous: 6, 8\n"


def test_unreadable_files_are_reported_and_the_rest_still_read(app: typer.Typer, tmp_path: Path) -> None:
    missing = tmp_path / "missing.txt"
    binary = write(tmp_path, "binary.txt", b"\xff\xfe\x00SCORE: 5")
    good = write(tmp_path, "good.txt", "SCORE: 5")
    lines = run(app, missing, binary, tmp_path, good).output.splitlines()
    assert [line.split("\t")[0] for line in lines] == [str(missing), str(binary), str(tmp_path), str(good)]
    assert all(line.split("\t")[1].startswith("ERROR unreadable: ") for line in lines[:3])
    assert lines[3] == f"{good}\t5"


def test_parser_option_selects_the_strategy(app: typer.Typer, tmp_path: Path) -> None:
    apart = write(tmp_path, "apart.txt", "Fine essay.\nSCORE:\n\n7")
    assert run(app, "--parser", "in_last_line", apart).output == f"{apart}\tERROR no_score_found\n"
    assert run(app, "--parser", "final_verdict", apart).output == f"{apart}\t7\n"


def test_max_score_sets_the_scale(app: typer.Typer, tmp_path: Path) -> None:
    out_of_ten = write(tmp_path, "ten.txt", "Good.\n**Final Score: 7/10**")
    assert "ERROR scale_mismatch" in run(app, out_of_ten).output
    assert run(app, "--max-score", "10", out_of_ten).output == f"{out_of_ten}\t7\n"


def test_the_default_scale_is_the_parsers_default(app: typer.Typer, tmp_path: Path) -> None:
    top = write(tmp_path, "top.txt", f"Everything is there.\nFinal Score: {DEFAULT_MAX_SCORE}/{DEFAULT_MAX_SCORE}")
    assert run(app, top).output == f"{top}\t{DEFAULT_MAX_SCORE}\n"


def test_allow_decimals_accepts_a_decimal_score(app: typer.Typer, tmp_path: Path) -> None:
    decimal = write(tmp_path, "decimal.txt", "Solid.\nScore: 6.5/9")
    assert "ERROR out_of_range" in run(app, decimal).output
    assert run(app, "--allow-decimals", decimal).output == f"{decimal}\t6.5\n"


def test_a_stated_rounding_is_the_score_on_any_scale(app: typer.Typer, tmp_path: Path) -> None:
    rounded = write(tmp_path, "rounded.txt", "Solid.\nScore: 6.5/9, rounded to 7")
    assert run(app, rounded).output == f"{rounded}\t7\n"
    assert run(app, "--allow-decimals", rounded).output == f"{rounded}\t7\n"


def test_unknown_parser_is_a_usage_error_listing_valid_names(app: typer.Typer, tmp_path: Path) -> None:
    answer = write(tmp_path, "a.txt", "SCORE: 5")
    result = run(app, "--parser", "last_number", answer)
    assert result.exit_code == 2
    assert "final_verdict, in_last_line" in result.output


def test_unknown_parser_is_refused_before_any_file_is_read(app: typer.Typer, tmp_path: Path) -> None:
    result = run(app, "--parser", "last_number", tmp_path / "missing.txt")
    assert result.exit_code == 2
    assert "unreadable" not in result.output


def test_at_least_one_file_is_required(app: typer.Typer) -> None:
    assert run(app).exit_code == 2


# ---- --template: the experiment's own rules ------------------------------------------------------

APART = "The essay is clear.\nSCORE:\n\n7"
"""`final_verdict` reads 7; `in_last_line`, the example templates' parser, finds nothing."""


@pytest.fixture
def data(tmp_path: Path, example_raw: Path) -> Path:
    """The example inputs, plus a 0–10 half-point template read by `final_verdict`."""
    data = tmp_path / "data"
    shutil.copytree(example_raw, data / "1_raw")
    raw = data / "1_raw"
    with (raw / "evaluation_templates.csv").open("a", encoding="utf-8") as handle:
        handle.write("halves,Halves,0-10 with half points,true,final_verdict,10\n")
    text = (raw / "evaluation_templates" / "coherence.txt").read_text(encoding="utf-8")
    (raw / "evaluation_templates" / "halves.txt").write_text(text, encoding="utf-8")
    return data


def set_columns(data: Path, template_id: str, **values: str) -> None:
    path = data / "1_raw" / "evaluation_templates.csv"
    with path.open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        row.update(values if row["template_id"] == template_id else {})
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) + [k for k in values if k not in rows[0]])
        writer.writeheader()
        writer.writerows(rows)


def test_template_brings_its_parser(app: typer.Typer, tmp_path: Path, data: Path) -> None:
    apart = write(tmp_path, "apart.txt", APART)
    assert run(app, apart).stdout == f"{apart}\t7\n"
    assert run(app, "--template", "coherence", "--data", data, apart).stdout == f"{apart}\tERROR no_score_found\n"


def test_template_brings_its_scale_and_decimals(app: typer.Typer, tmp_path: Path, data: Path) -> None:
    half = write(tmp_path, "half.txt", "Nearly there.\n**Total Score: 6.5/10**")
    whole = run(app, "--template", "halves", "--data", data, half).stdout
    assert whole == f"{half}\tERROR out_of_range: 6.5 is not a whole number and decimals are not allowed\n"
    set_columns(data, "halves", allow_decimals="true")
    assert run(app, "--template", "halves", "--data", data, half).stdout == f"{half}\t6.5\n"


def test_experiment_reads_the_template_as_the_experiment_ran_it(
    app: typer.Typer, tmp_path: Path, data: Path
) -> None:
    loaded = load_experiment(data / "1_raw", experiment_id="e1")
    snapshot_experiment(loaded, data / "experiments" / "e1")
    set_columns(data, "halves", max_score="9")
    ten = write(tmp_path, "ten.txt", "Good.\nSCORE: 8/10")
    now = run(app, "--template", "halves", "--data", data, ten)
    assert "ERROR scale_mismatch" in now.stdout
    then = run(app, "--template", "halves", "--experiment", "e1", "--data", data, ten)
    assert then.stdout == f"{ten}\t8\n"


def test_unknown_template_is_a_usage_error_listing_the_known_ones(app: typer.Typer, tmp_path: Path, data: Path) -> None:
    result = run(app, "--template", "clarity", "--data", data, write(tmp_path, "a.txt", "SCORE: 5"))
    assert result.exit_code == 2
    assert "daydreaming-loop-rubric, coherence, halves" in result.output


def test_unknown_experiment_is_a_usage_error(app: typer.Typer, tmp_path: Path, data: Path) -> None:
    result = run(app, "--template", "halves", "--experiment", "e9", "--data", data, write(tmp_path, "a.txt", "SCORE: 5"))
    assert result.exit_code == 2
    assert "no experiment 'e9'" in result.output


@pytest.mark.parametrize("option", [["--parser", "final_verdict"], ["--max-score", "10"], ["--allow-decimals"]])
def test_template_and_explicit_rules_do_not_mix(app: typer.Typer, tmp_path: Path, data: Path, option: list[str]) -> None:
    result = run(app, "--template", "halves", "--data", data, *option, write(tmp_path, "a.txt", "SCORE: 5"))
    assert result.exit_code == 2
    assert "the template sets the parser" in result.output


def test_experiment_needs_a_template(app: typer.Typer, tmp_path: Path) -> None:
    result = run(app, "--experiment", "e1", write(tmp_path, "a.txt", "SCORE: 5"))
    assert result.exit_code == 2
    assert "needs --template" in result.output
