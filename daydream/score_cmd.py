"""`daydream score`: re-read saved judge answers with a parser, to check it before trusting it."""

from __future__ import annotations

from pathlib import Path

import typer

from daydream import options
from daydream.plan_cmd import load_or_exit
from daydream.publish_cmd import snapshot_spec
from services.parser.scoring import DEFAULT_MAX_SCORE, DEFAULT_PARSER, PARSERS, ScoreResult, find_parser, parse_score
from shared.events import EvaluationTemplateSpec


def _check_parser(name: str | None) -> str | None:
    """Fail before reading any file, as a usage error."""
    if name is not None:
        try:
            find_parser(name)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from exc
    return name


def template_rules(data: Path, template_id: str, experiment_id: str | None) -> EvaluationTemplateSpec:
    """The evaluation template as the experiment ran it (its snapshot), or as the inputs in
    DIR/1_raw define it now; a usage error names the templates there are."""
    if experiment_id is None:
        templates = load_or_exit(data / "1_raw", experiment_id="score").spec.evaluation_templates
        source = f"the active evaluation templates of {data / '1_raw'}"
    else:
        spec = snapshot_spec(data, experiment_id)
        if spec is None:
            raise typer.BadParameter(f"no experiment {experiment_id!r} in {data / 'experiments'}", param_hint="--experiment")
        templates, source = spec.evaluation_templates, f"experiment {experiment_id}"
    for template in templates:
        if template.template_id == template_id:
            return template
    known = ", ".join(t.template_id for t in templates) or "none"
    raise typer.BadParameter(f"{template_id!r} is not among {source} ({known})", param_hint="--template")


def _verdict(result: ScoreResult) -> str:
    return f"{result.score:g}" if result.score is not None else f"ERROR {result.error}"


def score(
    files: list[Path] = typer.Argument(
        ..., help="Judge answers to read, e.g. data/4_evaluation/evaluation_responses/*.txt"
    ),
    template: str | None = typer.Option(
        None, "--template", metavar="ID",
        help="Read with this evaluation template's parser, max_score and allow_decimals (from --data).",
    ),
    experiment: str | None = typer.Option(
        None, "--experiment", callback=options.safe_id, metavar="ID",
        help="With --template: the template as this experiment's snapshot recorded it, not as 1_raw has it now.",
    ),
    data: Path = options.DATA,
    parser: str | None = typer.Option(
        None, "--parser", callback=_check_parser,
        help=f"One of: {', '.join(sorted(PARSERS))} (default {DEFAULT_PARSER}).",
    ),
    max_score: int | None = typer.Option(
        None, "--max-score", min=1, help=f"Top of the template's scale (default {DEFAULT_MAX_SCORE})."
    ),
    allow_decimals: bool = typer.Option(
        False, "--allow-decimals", help="The scale accepts decimal scores such as 6.5."
    ),
) -> None:
    """Print `<file><TAB><score>` or `<file><TAB>ERROR <reason>` for each file. Exits 0 when some
    files have no score: reading is the point, failures are part of the answer."""
    if template is None:
        if experiment is not None:
            raise typer.BadParameter("needs --template: it names whose rules to read", param_hint="--experiment")
        rules = (parser or DEFAULT_PARSER, DEFAULT_MAX_SCORE if max_score is None else max_score, allow_decimals)
    else:
        if parser is not None or max_score is not None or allow_decimals:
            raise typer.BadParameter(
                "the template sets the parser, max_score and allow_decimals; drop --parser, --max-score "
                "and --allow-decimals, or --template", param_hint="--template",
            )
        spec = template_rules(data, template, experiment)
        rules = (spec.parser, spec.max_score, spec.allow_decimals)
    name, scale, decimals = rules
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            typer.echo(f"{path}\tERROR unreadable: {exc}")
            continue
        result = parse_score(text, parser=name, max_score=scale, allow_decimals=decimals)
        typer.echo(f"{path}\t{_verdict(result)}")
