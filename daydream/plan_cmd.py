"""`daydream plan`: the dry run. Validates the inputs, writes the task tables, prints what a run
would cost in LLM calls, dollars and time — without touching the bus."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from daydream import options
from services.combiner.planning import (
    ComboRegistryProblem,
    append_combo_mappings,
    new_combo_mappings,
    plan_experiment,
    write_task_tables,
)
from shared.estimate import Estimate, estimate
from shared.events import STAGES, ExperimentPlanned
from shared.inputs import InputErrors, LoadedExperiment, SnapshotConflict, load_experiment, snapshot_experiment
from shared.settings import Settings
from shared.tasks import planned_evaluations

INPUT_ERROR_EXIT_CODE = 2
PLAN_EXPERIMENT_ID = "plan"


def load_or_exit(raw_dir: Path, **options) -> LoadedExperiment:
    """`load_experiment`, but a user-facing failure: every problem printed, exit code 2; warnings printed."""
    try:
        loaded = load_experiment(raw_dir, **options)
    except InputErrors as errors:
        print_problems(errors)
        raise typer.Exit(INPUT_ERROR_EXIT_CODE) from errors
    console = Console(stderr=True, soft_wrap=True)
    for warning in loaded.warnings:
        console.print(Text(f"warning: {warning}", style="yellow"))
    return loaded


def print_problems(errors: InputErrors) -> None:
    console = Console(stderr=True, soft_wrap=True)
    console.print(
        Text(f"{len(errors.problems)} problem(s) with the experiment inputs in {errors.raw_dir}:", style="bold red")
    )
    for problem in errors.problems:
        line = Text("  - ")
        line.append(problem.location, style="bold")
        line.append(f": {problem.message}. ")
        line.append(f"Fix: {problem.fix}.", style="green")
        console.print(line)
    console.print("Nothing was written.")


def print_estimate(found: Estimate) -> None:
    """The estimate with what it assumed, and the free-quota warning when it applies."""
    settings = Settings()
    console = Console(soft_wrap=True)
    cost = f"estimated cost: ${found.cost_usd:,.4f} for {found.calls - found.unpriced_calls:,} priced call(s)"
    if found.unpriced_calls:
        cost += (f"; {found.unpriced_calls:,} call(s) of {', '.join(sorted(found.unpriced_models))} have no price "
                 "(add prompt_price and completion_price, USD per million tokens, to llm_models.csv)")
    console.print(cost)
    console.print(Text(f"  assumed {found.prompt_tokens:,} prompt and {found.completion_tokens:,} completion tokens: "
                       f"{found.assumptions()}", style="dim"))
    console.print(f"least time the tiers allow: {timedelta(seconds=round(found.minimum_s))}")
    for tier in found.tiers:
        rate = f"{tier.requests_per_minute:g}/min -> {timedelta(seconds=round(tier.rate_s))}" \
            if tier.requests_per_minute else "no rate limit"
        console.print(Text(f"  tier {tier.tier}: {tier.calls:,} calls (writing and judging), {rate}; "
                           f"{tier.max_concurrent} at once x {tier.call_s:g}s a call (DAYDREAM_ESTIMATE_CALL_S) "
                           f"-> {timedelta(seconds=round(tier.cap_s))}", style="dim"))
    warning = found.free_quota_warning(settings)
    if warning:
        Console(stderr=True, soft_wrap=True).print(Text(f"warning: {warning}", style="yellow"))


def write_plan(
    data: Path, loaded: LoadedExperiment, experiment_dir: Path | None = None,
    approve: Callable[[Estimate], None] = print_estimate,
) -> tuple[ExperimentPlanned, int]:
    """The task tables and the combo registry, as `plan` and `publish` both leave them; `publish`
    also snapshots the selection into `experiment_dir`. Every check, and `approve` (shown the
    estimate; it may exit), comes before the first write, so a refused plan leaves every file as it was."""
    spec = loaded.spec
    planned, generations = plan_experiment(spec)
    evaluations = [evaluation for generation in generations for evaluation in planned_evaluations(generation)]
    registry = data / "combo_mappings.csv"
    try:
        new_rows = new_combo_mappings(registry, planned.combos, spec.description_level, spec.k_max)
        approve(estimate(spec, generations, Settings()))
        if experiment_dir is not None:
            snapshot_experiment(loaded, experiment_dir)
    except (ComboRegistryProblem, SnapshotConflict) as refusal:
        Console(stderr=True, soft_wrap=True).print(Text(str(refusal), style="bold red"))
        raise typer.Exit(INPUT_ERROR_EXIT_CODE) from refusal
    added = append_combo_mappings(registry, new_rows)
    write_task_tables(data / "2_tasks", planned, generations, evaluations)
    return planned, added


def plan(
    data: Path = options.DATA,
    k_max: int | None = options.K_MAX,
    level: str | None = options.LEVEL,
    replicates: int | None = options.REPLICATES,
    experiment_id: str = typer.Option(PLAN_EXPERIMENT_ID, "--experiment-id", help="Id the dry run plans under."),
) -> None:
    """Validate the inputs and write DIR/2_tasks and DIR/combo_mappings.csv; no LLM is called."""
    loaded = load_or_exit(data / "1_raw", experiment_id=experiment_id, k_max=k_max, level=level, replicates=replicates)
    spec = loaded.spec
    found: list[Estimate] = []
    planned, added = write_plan(data, loaded, approve=found.append)

    console = Console(soft_wrap=True)
    console.print(
        Text(
            f"Experiment '{spec.name}': {len(planned.combos)} combos of k_max={spec.k_max} from "
            f"{len(spec.concepts)} active concepts, description level {spec.description_level}, "
            f"{spec.replicates} replicate(s)",
            style="bold",
        )
    )
    table = Table(title="Planned LLM calls by tier")
    table.add_column("stage")
    table.add_column("tier")
    table.add_column("tasks", justify="right")
    for stage in STAGES:
        for tier, count in sorted(planned.tasks_by_tier.get(stage, {}).items()):
            table.add_row(stage, tier, str(count))
    console.print(table)
    console.print(f"generation tasks: {planned.generation_tasks}")
    console.print(f"evaluation tasks: {planned.evaluation_tasks}")
    console.print(f"total LLM calls: {planned.generation_tasks + planned.evaluation_tasks}")
    print_estimate(found[0])
    if spec.max_cost is not None:
        console.print(f"budget: ${spec.max_cost:,.4f} (max_cost in experiment.toml)")
    for fallback in loaded.fallbacks:
        console.print(
            Text(
                f"description fallback: {fallback.concept_id} uses {fallback.used} (asked for {fallback.requested})",
                style="yellow",
            )
        )
    console.print(f"wrote {data / '2_tasks'}; {added} new combo(s) in {data / 'combo_mappings.csv'}")
