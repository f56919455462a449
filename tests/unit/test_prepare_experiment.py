"""`publish` and `run` without `--experiment-id` name the experiment after experiment.toml's name."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import typer

from daydream.publish_cmd import prepare_experiment
from shared.ids import is_safe_id
from tests.conftest import EXAMPLE_RAW


def test_an_experiment_named_in_any_script_gets_a_safe_id_and_its_snapshot(tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(EXAMPLE_RAW, data / "1_raw")
    toml = data / "1_raw" / "experiment.toml"
    toml.write_text(toml.read_text(encoding="utf-8").replace('name = "daydreaming-loop"', 'name = "Rêverie: loop/2"'),
                    encoding="utf-8")

    spec = prepare_experiment(data, None, None, None, None, fresh=False)

    assert spec.name == "Rêverie: loop/2"
    assert is_safe_id(spec.experiment_id), spec.experiment_id
    assert spec.experiment_id.startswith("r-verie--loop-2-")
    snapshot = data / "experiments" / spec.experiment_id / "spec.json"
    assert json.loads(snapshot.read_text(encoding="utf-8"))["experiment_id"] == spec.experiment_id


def test_a_combo_collision_refuses_the_publish_before_the_snapshot(tmp_path: Path) -> None:
    """The registry is checked before anything is written: no snapshot, no task tables."""
    data = tmp_path / "data"
    shutil.copytree(EXAMPLE_RAW, data / "1_raw")
    spec = prepare_experiment(data, "first", None, None, None, fresh=False)
    registry = data / "combo_mappings.csv"
    member = spec.concepts[0].concept_id
    registry.write_text(registry.read_text(encoding="utf-8").replace(f",{member},", ",someone-else,", 1),
                        encoding="utf-8")
    tables = {p.name: p.read_bytes() for p in (data / "2_tasks").iterdir()}
    with pytest.raises(typer.Exit) as refused:
        prepare_experiment(data, "second", None, None, None, fresh=False)
    assert refused.value.exit_code == 2
    assert not (data / "experiments" / "second").exists()
    assert {p.name: p.read_bytes() for p in (data / "2_tasks").iterdir()} == tables
