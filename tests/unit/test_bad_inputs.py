"""Every broken input set in tests/data/bad_inputs is refused by `plan` and by `publish` before
anything is written or published, with an error that names the file, the line and what to do."""

from __future__ import annotations

import asyncio
import shutil
import tomllib
from dataclasses import dataclass
from pathlib import Path

import nats
import pytest
import typer
from typer.testing import CliRunner

from daydream.plan_cmd import plan
from daydream.publish_cmd import publish
from shared.inputs import InputErrors, load_experiment

CORPUS = Path(__file__).resolve().parents[1] / "data" / "bad_inputs"
BASE_RAW = CORPUS / "_base" / "1_raw"
CASES = sorted(path.parent.name for path in CORPUS.glob("*/case.toml"))


@dataclass(frozen=True)
class BadCase:
    data: Path
    file: str
    row: int | None
    expected: list[str]


def materialise(name: str, root: Path) -> BadCase:
    """Copy the valid base into `root`/data/1_raw and apply the case's one defect."""
    case_dir = CORPUS / name
    case = tomllib.loads((case_dir / "case.toml").read_text(encoding="utf-8"))
    raw = root / "data" / "1_raw"
    shutil.copytree(BASE_RAW, raw)
    for relative in case.get("delete", []):
        (raw / relative).unlink()
    for edit in case.get("replace", []):
        path = raw / edit["file"]
        text = path.read_text(encoding="utf-8")
        assert edit["old"] in text, f"{name}: {edit['old']!r} is not in the base {edit['file']}"
        path.write_text(text.replace(edit["old"], edit["new"]), encoding="utf-8")
    for encoding, table in (("utf-8", case.get("write", {})), ("latin-1", case.get("write_latin1", {}))):
        for relative, content in table.items():
            (raw / relative).write_bytes(content.encode(encoding))
    for encoded in case.get("write_encoded", []):
        (raw / encoded["file"]).write_bytes(encoded["content"].encode(encoded["encoding"]))
    for link in case.get("symlink", []):
        outside = root / "outside" / Path(link["file"]).name
        outside.parent.mkdir(exist_ok=True)
        outside.write_text(link["content"], encoding="utf-8")
        (raw / link["file"]).unlink()
        (raw / link["file"]).symlink_to(outside)
    expected = [line for line in (case_dir / "expected.txt").read_text(encoding="utf-8").splitlines() if line.strip()]
    return BadCase(data=root / "data", file=case["file"], row=case.get("row"), expected=expected)


def invoke(command, data: Path, env: dict[str, str] | None = None):
    app = typer.Typer()
    app.command()(command)
    return CliRunner().invoke(app, ["--data", str(data)], env=env)


def assert_refused(case: BadCase, result) -> None:
    """Exit 2, the problem at its place with its words, and not one file written."""
    assert result.exit_code == 2, result.output
    location = f"{case.file} line {case.row}" if case.row is not None else case.file
    assert location in result.output
    for fragment in case.expected:
        assert fragment in result.output
    assert sorted(path.name for path in case.data.iterdir()) == ["1_raw"]


def test_the_corpus_is_large_enough_and_the_base_is_valid(tmp_path: Path) -> None:
    assert len(CASES) >= 30
    shutil.copytree(BASE_RAW, tmp_path / "1_raw")
    assert load_experiment(tmp_path / "1_raw", experiment_id="base").spec.concepts


@pytest.mark.parametrize("name", CASES)
def test_loading_reports_the_one_defect_where_it_is(name: str, tmp_path: Path) -> None:
    case = materialise(name, tmp_path)
    with pytest.raises(InputErrors) as caught:
        load_experiment(case.data / "1_raw", experiment_id="bad")
    problems = caught.value.problems
    assert [(p.file, p.row) for p in problems] == [(case.file, case.row)], str(caught.value)
    assert problems[0].fix
    for fragment in case.expected:
        assert fragment in str(caught.value)


@pytest.mark.parametrize("name", CASES)
def test_plan_prints_the_problem_exits_2_and_writes_nothing(name: str, tmp_path: Path) -> None:
    case = materialise(name, tmp_path)
    assert_refused(case, invoke(plan, case.data))


@pytest.mark.integration
@pytest.mark.parametrize("name", CASES)
async def test_publish_prints_the_problem_exits_2_and_publishes_nothing(name: str, tmp_path: Path, nats_url: str) -> None:
    case = materialise(name, tmp_path)
    # In a thread, as on the command line: a publish that got past validation could really publish.
    assert_refused(case, await asyncio.to_thread(invoke, publish, case.data, {"NATS_URL": nats_url}))
    nc = await nats.connect(nats_url)
    try:
        streams = {info.config.name: info.state.messages for info in await nc.jetstream().streams_info()}
    finally:
        await nc.close()
    assert {name: count for name, count in streams.items() if count} == {}
