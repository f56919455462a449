"""`daydream score`: re-read saved judge answers with a parser, to check it before trusting it."""

from __future__ import annotations

from pathlib import Path

import typer

from services.parser.scoring import DEFAULT_MAX_SCORE, DEFAULT_PARSER, PARSERS, ScoreResult, find_parser, parse_score


def _check_parser(name: str) -> str:
    """Fail before reading any file, as a usage error."""
    try:
        find_parser(name)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    return name


def _verdict(result: ScoreResult) -> str:
    return f"{result.score:g}" if result.score is not None else f"ERROR {result.error}"


def score(
    files: list[Path] = typer.Argument(
        ..., help="Judge answers to read, e.g. data/4_evaluation/evaluation_responses/*.txt"
    ),
    parser: str = typer.Option(
        DEFAULT_PARSER, "--parser", callback=_check_parser, help=f"One of: {', '.join(sorted(PARSERS))}."
    ),
    max_score: int = typer.Option(DEFAULT_MAX_SCORE, "--max-score", min=1, help="Top of the template's scale."),
    allow_decimals: bool = typer.Option(
        False, "--allow-decimals", help="The scale accepts decimal scores such as 6.5."
    ),
) -> None:
    """Print `<file><TAB><score>` or `<file><TAB>ERROR <reason>` for each file. Exits 0 when some
    files have no score: reading is the point, failures are part of the answer."""
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            typer.echo(f"{path}\tERROR unreadable: {exc}")
            continue
        result = parse_score(text, parser=parser, max_score=max_score, allow_decimals=allow_decimals)
        typer.echo(f"{path}\t{_verdict(result)}")
