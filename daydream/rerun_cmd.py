"""`daydream rerun`: republish what failed or never reported, or chosen tasks.

Stored responses are reused, so only calls that never succeeded cost anything again."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import nats
import typer
from rich.console import Console

from daydream import options
from daydream.publish_cmd import bound_endpoint, record_budget, recorded_budget, snapshot_spec
from daydream.run_cmd import configured_endpoint, on_a_stack, stack_or_lock
from services.tracker.db import init_db, make_engine
from services.tracker.views import RecordedResults, Views
from shared.events import ExperimentSpec, TaskCreated, message_id
from shared.llm import endpoint_identity
from shared.nats_cluster import server_urls
from shared.prompts import TemplateProblem
from shared.service import publish_to_jetstream
from shared.settings import Settings
from shared.tasks import evaluation_tasks, generation_tasks

console = Console()


def rerunnable_tasks(
    spec: ExperimentSpec | None, failed: list[TaskCreated], recorded: RecordedResults
) -> dict[str, TaskCreated]:
    """Every task of the experiment `rerun` can publish again, by id: the planned generations, the
    evaluations of each recorded generation (rendered with its text), and failed tasks as they
    were when they failed. Without the experiment's snapshot only the failed ones are known."""
    generations = generation_tasks(spec) if spec else []
    tasks: dict[str, TaskCreated] = {task.task_id: task for task in generations}
    for generation in generations:
        outcome = recorded.generations.get(generation.task_id)
        if outcome is None:
            continue
        try:
            tasks.update({task.task_id: task for task in evaluation_tasks(generation, outcome.text, outcome.truncated)})
        except TemplateProblem:
            continue  # recorded as template_error by the fan-out; rerunning cannot render them either
    tasks.update({task.task_id: task for task in failed})
    return tasks


def unfinished_tasks(tasks: dict[str, TaskCreated], failed: list[TaskCreated], recorded: RecordedResults) -> list[TaskCreated]:
    """What `--failed` republishes: failed tasks, and tasks not finished — a generation lost with a
    broker's store, an evaluation never fanned out, or one answered but never scored (its stored
    response is reused, so the rerun re-parses it without a new call)."""
    failed_ids = {task.task_id for task in failed}
    done = set(recorded.generations) | recorded.evaluations
    return [task for task_id, task in tasks.items() if task_id in failed_ids or task_id not in done]


async def republish_tasks(settings: Settings, tasks: list[TaskCreated]) -> None:
    """A rerun is a new request: a fresh message id per rerun, so the duplicate window lets it in."""
    stamp = f"rerun{time.time_ns()}"
    nc = await nats.connect(server_urls(settings.nats_url))
    try:
        js = nc.jetstream()
        for task in tasks:
            await publish_to_jetstream(js, task, msg_id=message_id(stamp, task.experiment_id, task.task_id))
    finally:
        await nc.close()


def rerun(
    experiment_id: str = typer.Argument(..., callback=options.safe_id),
    failed: bool = typer.Option(False, "--failed", help="Republish every task that failed or never reported."),
    task: list[str] = typer.Option([], "--task", callback=options.safe_ids,
                                   help="Republish one task, generation or evaluation (repeatable)."),
    data: Path = options.RECORDED_DATA,
    max_cost: float | None = options.MAX_COST,
) -> None:
    """Republish what failed or never reported (or chosen tasks) and follow it to the end — on the
    stack at NATS_URL when set (then follow with `daydream status`), else on this data dir's
    `daydream up` stack or one started for the rerun. The tasks carry the experiment's budget:
    `--max-cost` raises it (how an experiment stopped by its budget continues)."""
    settings = Settings(data=data)
    spec = snapshot_spec(data, experiment_id)
    if spec is None:
        console.print(f"[yellow]no snapshot of {experiment_id} under {data / 'experiments'}[/]: "
                      "only its recorded failures can be rerun")
    engine = make_engine(settings.sqlalchemy_url())
    init_db(engine)
    tracker = Views(data, engine)
    failures = tracker.failed_tasks(experiment_id)
    recorded = tracker.recorded_results(experiment_id)
    known = rerunnable_tasks(spec, failures, recorded)
    if task:
        unknown = [task_id for task_id in task if task_id not in known]
        if unknown:
            raise typer.BadParameter(f"no task {', '.join(unknown)} in experiment {experiment_id} (an evaluation "
                                     "can be rerun once its generation is recorded; see `daydream status`)")
        chosen = [known[task_id] for task_id in task]
    elif failed:
        chosen = unfinished_tasks(known, failures, recorded)
    else:
        raise typer.BadParameter("say what to rerun: --failed or --task TASK_ID")
    if not chosen:
        console.print(f"nothing to rerun: every task of {experiment_id} is recorded")
        return
    if max_cost is not None:
        record_budget(data, experiment_id, max_cost)
    budget = recorded_budget(data, experiment_id)
    if budget is not None:
        chosen = [task.model_copy(update={"max_cost": budget}) for task in chosen]
        console.print(f"budget: ${budget:,.4f}")

    async def publish(on: Settings) -> None:
        await republish_tasks(on, chosen)
        console.print(f"republished {len(chosen)} task(s) of {experiment_id}: "
                      + ", ".join(t.task_id for t in chosen[:10]) + (" …" if len(chosen) > 10 else ""))

    if "nats_url" in settings.model_fields_set:  # a deployment the user named: publish there only
        bound_endpoint(data, spec.endpoint if spec else None, endpoint_identity(settings.llm_base_url, settings.llm_simulated),
                       experiment_id)
        asyncio.run(publish(settings))
        console.print(f"follow it with: daydream status {experiment_id} --data {data}")
        return
    running, lock = stack_or_lock(data)
    bound_endpoint(data, spec.endpoint if spec else None, running.endpoint if running else configured_endpoint(settings),
                   experiment_id)
    on_a_stack(data, settings, experiment_id, spec.tiers if spec else None, publish,
               resume_command=f"daydream rerun {experiment_id} --failed --data {data}", wait_for_idle=True,
               running=running, lock=lock)
