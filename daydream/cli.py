"""The `daydream` command: the user's door to plan, run and read experiments."""

from importlib.metadata import version

import typer

from daydream.export_cmd import export
from daydream.fake_llm import fake_llm
from daydream.plan_cmd import plan
from daydream.publish_cmd import publish
from daydream.rerun_cmd import rerun
from daydream.rescore_cmd import rescore
from daydream.results_cmd import check, rebuild, results, status
from daydream.run_cmd import down, run, up
from daydream.score_cmd import score
from daydream.viewer.command import view

app = typer.Typer(
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


app.command("plan")(plan)
app.command("run")(run)
app.command("publish")(publish)
app.command("status")(status)
app.command("results")(results)
app.command("export")(export)
app.command("rerun")(rerun)
app.command("rescore")(rescore)
app.command("rebuild")(rebuild)
app.command("check")(check)
app.command("score")(score)
app.command("up")(up)
app.command("down")(down)
app.command("fake-llm")(fake_llm)
app.command("view")(view)
