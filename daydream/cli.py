"""The `daydream` command: the user's door to plan, run and read experiments.

Each command's module is imported only when that command runs (or top-level help lists it):
importing them all, with SQLAlchemy, FastStream, NATS and the stack, cost ~1.2 s before any command
started."""

from importlib import import_module
from importlib.metadata import version

import typer
from typer.core import TyperGroup, _click  # the Click that Typer bundles, whose classes TyperGroup uses

COMMANDS = {
    "plan": ("daydream.plan_cmd", "plan"),
    "run": ("daydream.run_cmd", "run"),
    "publish": ("daydream.publish_cmd", "publish"),
    "status": ("daydream.results_cmd", "status"),
    "results": ("daydream.results_cmd", "results"),
    "export": ("daydream.export_cmd", "export"),
    "rerun": ("daydream.rerun_cmd", "rerun"),
    "rescore": ("daydream.rescore_cmd", "rescore"),
    "rebuild": ("daydream.repair_cmd", "rebuild"),
    "check": ("daydream.repair_cmd", "check"),
    "score": ("daydream.score_cmd", "score"),
    "up": ("daydream.run_cmd", "up"),
    "down": ("daydream.run_cmd", "down"),
    "fake-llm": ("daydream.fake_llm", "fake_llm"),
    "view": ("daydream.viewer.command", "view"),
}
"""Command name -> (module, function), in the order help lists them."""


class LazyCommands(TyperGroup):
    """The group of `COMMANDS`, each built from its function when first asked for."""

    def list_commands(self, ctx: _click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: _click.Context, cmd_name: str) -> _click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        module, function = COMMANDS[cmd_name]
        single = typer.Typer()
        single.command(cmd_name)(getattr(import_module(module), function))
        return typer.main.get_command(single)


app = typer.Typer(
    cls=LazyCommands,
    help="DayDream: combinatorial LLM experiments — concepts -> prompts -> writers -> judges -> scores.",
    no_args_is_help=True,
    invoke_without_command=True,
    pretty_exceptions_show_locals=False,
)


@app.callback()
def main(show_version: bool = typer.Option(False, "--version", help="Print the version and exit.")) -> None:
    if show_version:
        typer.echo(f"daydream {version('daydream')}")
        raise typer.Exit()
