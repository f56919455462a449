"""`daydream run` (one command: stack, publish, live progress, results), `up` and `down`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from daydream import options
from daydream.publish_cmd import prepare_experiment, publish_experiment
from daydream.stack import STATE_FILE, EmbeddedStack, StackState, consumers_idle, stop_detached, usable_stack
from services.tracker.db import init_db, make_engine
from services.tracker.progress import PROGRESS_STAGES
from services.tracker.progress import Progress as ExperimentProgress
from services.tracker.summaries import render_results_table, write_results
from services.tracker.views import Views
from shared.events import TierSpec
from shared.settings import OPENROUTER_BASE_URL, Settings

console = Console()
SIMULATED_NOTICE = (
    "[yellow]No OPENROUTER_API_KEY and no DAYDREAM_LLM_BASE_URL: responses are SIMULATED by the "
    "built-in fake LLM.[/] Set OPENROUTER_API_KEY (or DAYDREAM_LLM_BASE_URL for any OpenAI-compatible "
    "endpoint) in the environment or .env to call real models."
)


def wants_fake_llm(settings: Settings) -> bool:
    return settings.llm_api_key is None and settings.llm_base_url == OPENROUTER_BASE_URL


def start_stack(data: Path, settings: Settings, tiers: list[TierSpec] | None) -> EmbeddedStack:
    """nats-server first, the topology shaped to the experiment's tiers (so workers size
    themselves right), then the services."""
    stack = EmbeddedStack(data, llm_base_url=None if wants_fake_llm(settings) else settings.llm_base_url,
                          fake_llm_latency=settings.fake_llm_latency_s)
    stack.start_nats()
    if wants_fake_llm(settings):
        stack.start_fake_llm()
        console.print(SIMULATED_NOTICE)
    if tiers:
        stack.declare_topology(settings, tiers)
    stack.start_services()
    return stack


class StackFailed(Exception):
    """A process of the stack `run` started has died: waiting longer would wait forever."""


def follow(tracker: Views, experiment_id: str, stack: EmbeddedStack | None,
           idle_on: str | None = None, poll_s: float = 0.3) -> ExperimentProgress:
    """Live bars per stage until every planned task is done, failed or skipped (or planning
    itself failed) — and, with `idle_on`, that stack has nothing left to do: a rerun follows an
    experiment that already counted as finished before its tasks were republished."""

    def done(progress: ExperimentProgress) -> bool:
        if progress.planning_error is not None:
            return True
        return progress.finished and (idle_on is None or asyncio.run(consumers_idle(idle_on)))

    columns = (TextColumn("{task.description:<10}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[failed]}"), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as bars:
        ids = {stage: bars.add_task(stage, total=None, failed="") for stage in PROGRESS_STAGES}
        summary = bars.add_task("cost", total=None, failed="", visible=True)
        while True:
            progress = tracker.progress(experiment_id)
            for stage, task_id in ids.items():
                state = progress.stages[stage]
                failed = state.failed + state.skipped
                bars.update(task_id, total=state.planned, completed=state.done + failed,
                            failed=f"[red]{failed} failed[/]" if failed else "")
            bars.update(summary, description="tokens/cost",
                        failed=f"{progress.prompt_tokens + progress.completion_tokens} tokens, ${progress.cost_usd:.4f}")
            if done(progress):
                return progress
            if stack and (dead := stack.dead_services()):
                raise StackFailed(f"service(s) {', '.join(dead)} stopped; their logs are in {stack.logs}")
            time.sleep(poll_s)


def report(tracker: Views, engine, data: Path, progress: ExperimentProgress) -> int:
    experiment_id = progress.experiment_id
    if progress.planning_error is not None:
        console.print(f"[red]experiment {experiment_id} could not be planned:[/] {progress.planning_error}")
        return 1
    files = write_results(engine, data, experiment_id)
    console.print(render_results_table(engine, experiment_id))
    console.print(f"results: {', '.join(str(f) for f in files)}")
    console.print(f"artifacts: {data / '3_generation'}, {data / '4_evaluation'}; "
                  f"cross-experiment tables: {data / '7_cross_experiment'}")
    # Scoring's skips are the evaluations that never answered: already counted under evaluation.
    failed = sum(s.failed + s.skipped for s in progress.stages.values() if s.stage != "scoring")
    failed += progress.stages["scoring"].failed
    if not failed:
        return 0
    reasons = ", ".join(f"{reason}: {count}" for reason, count in progress.failures_by_reason.items())
    console.print(f"[red]{failed} task(s) did not complete[/] ({reasons}).")
    console.print(f"retry them with: daydream rerun {experiment_id} --failed --data {data}")
    return 1


def attached_stack(data: Path) -> StackState | None:
    state, lost = usable_stack(data)
    if lost:
        console.print(f"[yellow]{lost}[/]; starting a private stack")
    return state


def on_a_stack(
    data: Path,
    settings: Settings,
    experiment_id: str,
    tiers: list[TierSpec] | None,
    publish: Callable[[Settings], Awaitable[None]],
    resume_command: str,
    wait_for_idle: bool = False,
) -> None:
    """Publish on the `up` stack of this data dir, or on one started here and stopped after;
    follow the experiment live, print its results and exit with their verdict."""
    running = attached_stack(data)
    stack = None
    try:
        if running:
            console.print(f"using the stack started by `daydream up` at {running.nats_url}")
            nats_url = running.nats_url
        else:
            stack = start_stack(data, settings, tiers)
            nats_url = stack.nats_url
        engine = make_engine(settings.sqlalchemy_url())
        init_db(engine)
        tracker = Views(data, engine)
        asyncio.run(publish(settings.model_copy(update={"nats_url": nats_url})))
        progress = follow(tracker, experiment_id, stack, nats_url if wait_for_idle else None)
    except KeyboardInterrupt:
        console.print(f"\n[yellow]interrupted.[/] Resume with: {resume_command}")
        raise typer.Exit(130) from None
    except StackFailed as failure:
        console.print(f"[red]{failure}[/]. Nothing finished is lost; resume with: {resume_command}")
        raise typer.Exit(1) from None
    finally:
        if stack:
            with console.status("stopping the stack"):
                stack.stop()
    raise typer.Exit(report(tracker, engine, data, progress))


def run(
    data: Path = options.DATA,
    experiment_id: str | None = options.EXPERIMENT_ID,
    k_max: int | None = options.K_MAX,
    level: str | None = options.LEVEL,
    replicates: int | None = options.REPLICATES,
    fresh: bool = options.FRESH,
) -> None:
    """Run an experiment end to end on an embedded stack, with live progress, then print results."""
    settings = Settings(data=data)
    spec = prepare_experiment(data, experiment_id, k_max, level, replicates, fresh, settings.evaluate_truncated)
    flags = {"--k-max": k_max, "--level": level, "--replicates": replicates}
    resume = " ".join([f"daydream run --experiment-id {spec.experiment_id} --data {data}",
                       *(f"{flag} {value}" for flag, value in flags.items() if value is not None)])

    async def publish(on: Settings) -> None:
        await publish_experiment(on, spec)
        console.print(f"experiment [bold]{spec.experiment_id}[/] published")

    on_a_stack(data, settings, spec.experiment_id, spec.tiers, publish, resume)


def up(data: Path = options.DATA) -> None:
    """Start the embedded stack and leave it running for repeated `publish` / `run`."""
    settings = Settings(data=data)
    previous = StackState.load(data)
    if previous and previous.alive():
        console.print(f"a stack is already running for {data} (see {data / STATE_FILE})")
        return
    if previous:
        stop_detached(previous)
    stack = start_stack(data, settings, tiers=None)
    state = stack.state()
    state.save(data)
    console.print(f"stack up: NATS_URL={stack.nats_url}")
    for name, target in state.metrics_targets().items():
        console.print(f"  {name:<10} http://{target}/metrics")
    console.print(f"publish with: NATS_URL={stack.nats_url} daydream publish --data {data}   (or just daydream run)")


def down(data: Path = options.DATA) -> None:
    """Stop the stack started by `daydream up`."""
    state = StackState.load(data)
    if not state:
        console.print(f"no running stack for {data}")
        return
    stop_detached(state)
    (data / STATE_FILE).unlink(missing_ok=True)
    console.print("stack stopped")
