"""Commands that read the tracker's state: results and status."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import nats
import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy import Engine

from daydream import options
from daydream.stack import StackState, stack_running, usable_stack
from services.tracker.db import OutdatedSchema, engine_for, init_db
from services.tracker.progress import Progress
from services.tracker.summaries import (
    NINE_POINT_SCALE,
    Results,
    combo_concepts,
    generation_models,
    latest_experiment_id,
    read_results,
    render_results_table,
    top_generations,
    write_results,
)
from services.tracker.views import Views
from shared.events import utcnow
from shared.llm import ErrorKind
from shared.nats_cluster import server_urls
from shared.tiers import TierState
from shared.topology import all_tier_states

console = Console()


def open_database(data_dir: Path) -> tuple[Path, Engine]:
    """The data directory's database, its tables ready; exits saying so when `rebuild` must run first."""
    engine = engine_for(data_dir)
    try:
        init_db(engine)
    except OutdatedSchema as error:
        console.print(str(error), style="red", markup=False, soft_wrap=True)
        raise typer.Exit(2) from error
    return data_dir, engine


def experiment_or_exit(data_dir: Path, engine: Engine, experiment_id: str | None) -> str:
    """The experiment asked for, or the latest one; exits with the known ids when there is none."""
    known = Views(data_dir, engine).experiment_ids()
    if experiment_id is None:
        experiment_id = latest_experiment_id(engine)
    if experiment_id is None:
        console.print("[red]No experiments recorded yet.[/red] Run `daydream run` or `daydream publish` first.")
        raise typer.Exit(1)
    if experiment_id not in known:
        console.print(f"[red]Unknown experiment {experiment_id!r}.[/red] Known: {', '.join(known) or 'none'}.")
        raise typer.Exit(2)
    return experiment_id


JSON = typer.Option(False, "--json", help="Print JSON for scripts instead of tables.")


def results(
    experiment_id: str | None = options.EXPERIMENT_ARGUMENT,
    all_: bool = typer.Option(False, "--all", help="Summarise every experiment, into files of their own."),
    top: int = typer.Option(10, "--top", help="How many generations to show."),
    as_json: bool = JSON,
    data: Path = options.RECORDED_DATA,
) -> None:
    """Write parsed scores, summaries, the score pivot and evaluator agreement; show the best."""
    data_dir, engine = open_database(data)
    chosen = None if all_ else experiment_or_exit(data_dir, engine, experiment_id)
    tables = read_results(engine, chosen)
    files = write_results(tables, data_dir)
    if as_json:
        typer.echo(json.dumps({"experiment_id": chosen, "files": [str(path) for path in files],
                               "top": top_generations_json(engine, tables, top)}, indent=2))
        return
    for path in files:
        console.print(f"wrote {path}")
    console.print(render_results_table(engine, tables, limit=top))


def top_generations_json(engine: Engine, results: Results, limit: int) -> list[dict]:
    """What the results table shows, with raw numbers."""
    best = top_generations(results, limit)
    concepts = combo_concepts(engine, (g.combo_id for g in best))
    models = generation_models(engine, best)
    return [
        {
            "rank": rank,
            "experiment_id": g.experiment_id,
            "generation_task_id": g.generation_task_id,
            "concepts": concepts.get(g.combo_id, [g.combo_id]),
            "generation_template_id": g.generation_template_id,
            "generation_model": models.get((g.experiment_id, g.generation_task_id), g.generation_model_id),
            "evaluation_template_id": g.evaluation_template_id,
            "mean": g.mean,
            "max_score": g.max_score or NINE_POINT_SCALE,
            "scores": list(g.scores),
        }
        for rank, g in enumerate(best, start=1)
    ]


def progress_state(progress: Progress, stack_live: bool) -> str:
    """Unfinished with no live stack is interrupted, not running."""
    if progress.finished:
        return "stopped: budget" if ErrorKind.BUDGET in progress.failures_by_reason else "finished"
    return "running" if stack_live else "interrupted"


def render_progress(progress: Progress, stack_live: bool = True) -> Table:
    """Planned, done, failed and skipped per stage and tier, with spend so far (and what reused
    responses saved, which is not spend)."""
    state = progress_state(progress, stack_live)
    colour = {"finished": "green", "running": "yellow", "interrupted": "red", "stopped: budget": "red"}[state]
    table = Table(title=f"{progress.experiment_id}: [{colour}]{state}[/{colour}]")
    for header in ("stage", "tier", "planned", "done", "failed", "skipped"):
        table.add_column(header, justify="left" if header in ("stage", "tier") else "right")
    for stage in progress.stages.values():
        planned = "?" if stage.planned is None else str(stage.planned)
        table.add_row(stage.stage, "all", planned, str(stage.done), str(stage.failed), str(stage.skipped))
    for tier in progress.tiers:
        planned = "?" if tier.planned is None else str(tier.planned)
        table.add_row(tier.stage, tier.tier, planned, str(tier.done), str(tier.failed), "")
    table.caption = (
        f"tokens in {progress.prompt_tokens:,} / out {progress.completion_tokens:,} · cost ${progress.cost_usd:.4f}"
        + (f" (reused responses saved ${progress.cost_saved_usd:.4f})" if progress.cost_saved_usd else "")
        + f" · parse errors {progress.parse_errors}"
        + (f" · finished {progress.finished_at:%Y-%m-%d %H:%M:%S} UTC" if progress.finished_at else "")
    )
    return table


def status(
    experiment_id: str | None = options.EXPERIMENT_ARGUMENT,
    as_json: bool = JSON,
    data: Path = options.RECORDED_DATA,
) -> None:
    """Progress of an experiment: what was planned, what is done, what failed and why — and,
    unfinished, whether a live stack is working on it."""
    data_dir, engine = open_database(data)
    chosen = experiment_or_exit(data_dir, engine, experiment_id)
    progress = Views(data_dir, engine).progress(chosen)
    stack_live = stack_running(data)
    _, problem = usable_stack(data)
    tiers = live_tier_states(data) if stack_live else []
    if as_json:
        state = {"state": progress_state(progress, stack_live), "stack_problem": problem,
                 "tiers": [tier.model_dump(mode="json") for tier in tiers]}
        typer.echo(json.dumps({**progress.model_dump(mode="json"), **state}, indent=2))
        return
    console.print(render_progress(progress, stack_live))
    if tiers:
        console.print(render_tiers(tiers))
    if not progress.finished and problem and not stack_live:
        console.print(f"[red]{problem}[/]")
    elif not progress.finished and not stack_live:
        console.print(f"no stack is running for {data}: resume with "
                      f"`daydream run --experiment-id {chosen} --data {data}`")
    if progress.failures_by_reason:
        failures = Table(title="failures by reason")
        failures.add_column("reason")
        failures.add_column("tasks", justify="right")
        for reason, count in sorted(progress.failures_by_reason.items()):
            failures.add_row(reason, str(count))
        console.print(failures)
        console.print(f"retry them with `daydream rerun {chosen} --failed`")


def live_tier_states(data: Path) -> list[TierState]:
    """The tiers' shared state as the running stack's workers see it now; none if it cannot be read."""
    running = StackState.load(data)
    if running is None:
        return []

    async def read() -> list[TierState]:
        nc = await nats.connect(server_urls(running.nats_url), connect_timeout=2, allow_reconnect=False)
        try:
            return await all_tier_states(nc.jetstream(timeout=2))
        finally:
            await nc.close()

    try:
        return asyncio.run(read())
    except (OSError, TimeoutError, nats.errors.Error):
        return []


def render_tiers(tiers: list[TierState]) -> Table:
    """One line per tier: its cap now (halved after 429s), its rate, a cooldown, a stopped circuit."""
    table = Table(title="tiers now (shared by writing and judging, all replicas)")
    for column in ("tier", "cap now / max", "requests/min", "state"):
        table.add_column(column)
    now = utcnow()
    for tier in tiers:
        stopped, pause = tier.open_circuit(now), tier.pause_left_s(now)
        state = (f"[red]stopped: {stopped}[/]" if stopped
                 else f"[yellow]cooling down {pause:.0f}s: {tier.pause_reason}[/]" if pause else "[green]ok[/]")
        table.add_row(tier.tier, f"{tier.effective_cap} / {tier.max_concurrent}",
                      f"{tier.requests_per_minute:g}" if tier.requests_per_minute else "no limit", state)
    return table
