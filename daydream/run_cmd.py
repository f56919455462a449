"""`daydream run` (one command: stack, publish, live progress, results), `up` and `down`."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from daydream import options
from daydream.nats_process import port_free
from daydream.plan_cmd import INPUT_ERROR_EXIT_CODE, print_estimate
from daydream.publish_cmd import prepare_experiment, publish_experiment
from daydream.stack import (
    STATE_FILE,
    DataDirBusy,
    EmbeddedStack,
    StackLock,
    StackState,
    consumers_idle,
    stop_detached,
    usable_stack,
)
from services.tracker.db import init_db, make_engine
from services.tracker.progress import PROGRESS_STAGES
from services.tracker.progress import Progress as ExperimentProgress
from services.tracker.summaries import read_results, render_results_table, write_results
from services.tracker.views import Views
from shared.estimate import Estimate
from shared.events import TierSpec
from shared.llm import ErrorKind, endpoint_identity
from shared.settings import OPENROUTER_BASE_URL, Settings

console = Console()
SIMULATED_NOTICE = (
    "[yellow]No OPENROUTER_API_KEY and no DAYDREAM_LLM_BASE_URL: responses are SIMULATED by the "
    "built-in fake LLM.[/] Set OPENROUTER_API_KEY (or DAYDREAM_LLM_BASE_URL for any OpenAI-compatible "
    "endpoint) in the environment or .env to call real models."
)


def wants_fake_llm(settings: Settings) -> bool:
    return settings.llm_api_key is None and settings.llm_base_url == OPENROUTER_BASE_URL


def configured_endpoint(settings: Settings) -> str:
    """The `endpoint_identity` a stack started here would serve."""
    return endpoint_identity(settings.llm_base_url, simulated=wants_fake_llm(settings))


def start_stack(stack: EmbeddedStack, settings: Settings, tiers: list[TierSpec] | None, owner: str) -> None:
    """nats-server first, the topology shaped to the experiment's tiers (so workers size
    themselves right), then the services; DIR/stack.json names each process as soon as it runs,
    so `down` finds them even if this process dies while starting them."""
    stack.start_nats()
    stack.state(owner).save(stack.data)
    if wants_fake_llm(settings):
        stack.start_fake_llm()
        console.print(SIMULATED_NOTICE)
        stack.state(owner).save(stack.data)
    if tiers:
        stack.declare_topology(settings, tiers)
    try:
        stack.start_services()
    finally:
        stack.state(owner).save(stack.data)


def new_stack(data: Path, settings: Settings, lock: StackLock | None, nats_port: int = 0,
              cluster_size: int = 1) -> EmbeddedStack:
    return EmbeddedStack(data, llm_base_url=None if wants_fake_llm(settings) else settings.llm_base_url,
                         fake_llm_latency=settings.fake_llm_latency_s, lock=lock, nats_port=nats_port,
                         cluster_size=cluster_size)


class Interrupts:
    """The first of SIGINT, SIGTERM or SIGHUP interrupts `run` like Ctrl-C; the ones after it are
    ignored, so stopping the stack is never cut short (under `uv run` one Ctrl-C arrives twice)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self.received: int | None = None

    def handle(self, signum: int, _frame: object) -> None:
        if self.received is None:
            self.received = signum
            raise KeyboardInterrupt

    def name(self) -> str:
        return signal.Signals(self.received).name if self.received else "SIGINT"


@contextlib.contextmanager
def first_signal_interrupts() -> Iterator[Interrupts]:
    interrupts = Interrupts()
    previous = {signum: signal.signal(signum, interrupts.handle) for signum in Interrupts.SIGNALS}
    try:
        yield interrupts
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


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
    results = read_results(engine, experiment_id)
    files = write_results(results, data)
    console.print(render_results_table(engine, results))
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
    for reason, message in tracker.failure_examples(experiment_id).items():
        console.print(f"  [red]{reason}[/]: {message}")
    if ErrorKind.BUDGET in progress.failures_by_reason:
        console.print(f"[red]stopped: budget[/] after ${progress.cost_usd:.4f}; raise it and resume with: "
                      f"daydream rerun {experiment_id} --failed --max-cost USD --data {data}")
    else:
        console.print(f"retry them with: daydream rerun {experiment_id} --failed --data {data}")
    return 1


def stack_or_lock(data: Path) -> tuple[StackState | None, StackLock | None]:
    """This data dir's live `up` stack to attach to, or its lock to start a private one; exits
    naming whatever else holds the dir (one stack per data dir, one store per nats-server)."""
    running, problem = usable_stack(data)
    if running:
        return running, None
    if problem:
        console.print(f"[red]{problem}[/]")
        raise typer.Exit(1)
    try:
        return None, StackLock(data).acquire()
    except DataDirBusy as busy:
        console.print(f"[red]{busy}[/]: another `daydream run` or `up` is starting on {data}; "
                      f"wait for it, or stop it with `daydream down --data {data}`")
        raise typer.Exit(1) from None


def on_a_stack(
    data: Path,
    settings: Settings,
    experiment_id: str,
    tiers: list[TierSpec] | None,
    publish: Callable[[Settings], Coroutine[Any, Any, None]],
    resume_command: str,
    wait_for_idle: bool = False,
    running: StackState | None = None,
    lock: StackLock | None = None,
) -> None:
    """Publish on the `up` stack of this data dir (`running`), or on one started here under
    `lock` and stopped after; follow the experiment live, print its results and exit with their
    verdict. Ctrl-C (once or twice), SIGTERM and SIGHUP all stop what was started, in order."""
    stack: EmbeddedStack | None = None
    stopped: tuple[int, str] | None = None
    with first_signal_interrupts() as interrupts:
        try:
            if running:
                console.print(f"using the stack started by `daydream up` at {running.nats_url}")
                nats_url = running.nats_url
            else:
                stack = new_stack(data, settings, lock)
                start_stack(stack, settings, tiers, owner="run")
                nats_url = stack.nats_url
            engine = make_engine(settings.sqlalchemy_url())
            init_db(engine)
            tracker = Views(data, engine)
            asyncio.run(publish(settings.model_copy(update={"nats_url": nats_url})))
            progress = follow(tracker, experiment_id, stack, nats_url if wait_for_idle else None)
        except KeyboardInterrupt:
            stopped = 130, f"\n[yellow]interrupted ({interrupts.name()}).[/] Resume with: {resume_command}"
        except StackFailed as failure:
            stopped = 1, f"[red]{failure}[/]. Nothing finished is lost; resume with: {resume_command}"
        finally:
            stop_private(stack, data, lock)
    if stopped:
        say(stopped[1])
        raise typer.Exit(stopped[0])
    raise typer.Exit(report(tracker, engine, data, progress))


def stop_private(stack: EmbeddedStack | None, data: Path, lock: StackLock | None) -> None:
    """Stop the stack this process started, forget it, and let go of the data dir."""
    if stack:
        with console.status("stopping the stack"):
            stack.stop()
        (data / STATE_FILE).unlink(missing_ok=True)
    if lock:
        lock.release()


def say(message: str) -> None:
    """Print, unless the terminal has gone (SIGHUP): stopping cleanly matters more than saying so."""
    with contextlib.suppress(OSError):
        console.print(message)


def run(
    data: Path = options.DATA_DIR,
    experiment_id: str | None = options.EXPERIMENT_ID,
    k_max: int | None = options.K_MAX,
    level: str | None = options.LEVEL,
    replicates: int | None = options.REPLICATES,
    fresh: bool = options.FRESH,
    max_cost: float | None = options.MAX_COST,
    yes: bool = typer.Option(False, "--yes", "-y", help="Start without asking, however large the estimate."),
) -> None:
    """Run an experiment end to end on an embedded stack, with live progress, then print results."""
    settings = Settings(data=data)
    running, lock = stack_or_lock(data)
    serving = running.endpoint if running and running.endpoint else configured_endpoint(settings)
    spec = prepare_experiment(data, experiment_id, k_max, level, replicates, fresh, settings.evaluate_truncated,
                              endpoint=serving, max_cost=max_cost, approve=lambda found: approve_run(found, settings, yes))
    if spec.max_cost is not None:
        console.print(f"budget: ${spec.max_cost:,.4f}")
    flags = {"--k-max": k_max, "--level": level, "--replicates": replicates, "--max-cost": max_cost}
    resume = " ".join([f"daydream run --experiment-id {spec.experiment_id} --data {data}",
                       *(f"{flag} {value}" for flag, value in flags.items() if value is not None)])

    async def publish(on: Settings) -> None:
        await publish_experiment(on, spec)
        console.print(f"experiment [bold]{spec.experiment_id}[/] published")

    on_a_stack(data, settings, spec.experiment_id, spec.tiers, publish, resume, running=running, lock=lock)


def approve_run(found: Estimate, settings: Settings, yes: bool) -> None:
    """Print the estimate; over the thresholds, ask before starting (unless `--yes`). With no
    terminal to ask on, refuse and say how to go ahead rather than wait for an answer."""
    print_estimate(found)
    reason = found.confirmation_reason(settings)
    if reason is None or yes:
        return
    if not sys.stdin.isatty():
        console.print(f"[red]not started:[/] this run makes {reason}, and there is no terminal to confirm on. "
                      "Pass --yes to start it anyway, or make it smaller (k_max, active rows).")
        raise typer.Exit(INPUT_ERROR_EXIT_CODE)
    if not typer.confirm(f"This run makes {reason}. Start it?", default=False):
        console.print("not started; nothing was written")
        raise typer.Exit(1)


def up(
    data: Path = options.DATA_DIR,
    cluster: int = typer.Option(1, "--cluster", min=1, max=5, help=(
        "Run this many clustered nats-servers on loopback (3 survives losing one) instead of one; "
        "services get the server list and streams are kept on every node.")),
) -> None:
    """Start the embedded stack and leave it running for repeated `publish` / `run`; a stack that
    lost a process (or its `run`) is stopped and replaced, on the same NATS port."""
    settings = Settings(data=data)
    running, problem = usable_stack(data)
    if running:
        console.print(f"a stack is already running for {data}: NATS_URL={running.nats_url} (see {data / STATE_FILE})")
        return
    previous = StackState.load(data)
    if previous and previous.owned_by_run() and previous.owner_running():
        console.print(f"[red]{problem}[/]")
        raise typer.Exit(1)
    if previous:
        if problem:
            console.print(f"[yellow]{problem}[/]: stopping what is left of it and starting it again")
        stop_detached(previous)
    try:
        lock = StackLock(data).acquire(wait_s=5.0)
    except DataDirBusy as busy:
        console.print(f"[red]{busy}[/]: stop it with `daydream down --data {data}`")
        raise typer.Exit(1) from None
    port = previous.nats_port if previous and port_free(previous.nats_port) else 0
    stack = new_stack(data, settings, lock, nats_port=port, cluster_size=cluster)
    with first_signal_interrupts():
        try:
            start_stack(stack, settings, tiers=None, owner="up")
        except BaseException:
            stop_private(stack, data, lock)
            raise
    lock.release()
    state = stack.state("up")
    console.print(f"stack up: NATS_URL={stack.nats_url}")
    for name, target in state.metrics_targets().items():
        console.print(f"  {name:<10} http://{target}/metrics")
    console.print(f"publish with: daydream publish --data {data}   (or just daydream run)")


def down(data: Path = options.DATA) -> None:
    """Stop this data dir's stack: the one `up` started, or what a `run` left behind."""
    state = StackState.load(data)
    if not state:
        console.print(f"no running stack for {data}")
        return
    stop_detached(state)
    (data / STATE_FILE).unlink(missing_ok=True)
    console.print("stack stopped")
