"""The CLI imports a command's module only when that command runs, and still lists and runs every one."""

from __future__ import annotations

import subprocess
import sys

from typer.testing import CliRunner

from daydream.cli import COMMANDS, app


def test_help_lists_every_command_and_each_has_its_own_help() -> None:
    listing = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "200"})
    assert listing.exit_code == 0, listing.output
    for name in COMMANDS:
        assert f" {name} " in listing.output
        own = CliRunner().invoke(app, [name, "--help"], env={"COLUMNS": "200"})
        assert own.exit_code == 0 and "Usage:" in own.output, (name, own.output)


def test_an_unknown_command_is_refused() -> None:
    outcome = CliRunner().invoke(app, ["nope"])
    assert outcome.exit_code == 2 and "No such command" in outcome.output


def test_status_starts_without_the_modules_only_other_commands_need() -> None:
    probe = ("import sys\nfrom daydream.cli import app\n"
             "try:\n    app(['status', '--help'])\nexcept SystemExit:\n    pass\n"
             "print(sorted(m for m in ('daydream.run_cmd', 'daydream.export', 'daydream.repair_cmd', 'faststream',"
             " 'services.tracker.check') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert loaded.strip().splitlines()[-1] == "[]"
