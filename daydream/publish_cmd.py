"""`daydream publish` and `daydream rerun`: put work on the bus of a running stack."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from datetime import datetime, timezone
from pathlib import Path

import nats
import typer
from rich.console import Console

from daydream import options
from daydream.plan_cmd import load_or_exit, write_plan
from services.tracker.db import make_engine
from services.tracker.recorder import Tracker
from shared.events import (
    EXPERIMENT_REQUESTED,
    ExperimentRequested,
    ExperimentSpec,
    TaskCreated,
    message_id,
    task_subject,
)
from shared.ids import is_safe_id
from shared.inputs import SnapshotConflict, snapshot_experiment
from shared.settings import Settings
from shared.tasks import generation_tasks
from shared.topology import ensure_topology

console = Console()
SPEC_FILE = "spec.json"


def new_experiment_id(name: str) -> str:
    """A safe id by construction: every character outside the safe-id rule becomes '-'."""
    slug = "".join(c if is_safe_id(c) else "-" for c in name.lower()).strip("-") or "experiment"
    return f"{slug}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"


def prepare_experiment(
    data: Path, experiment_id: str | None, k_max: int | None, level: str | None,
    replicates: int | None, fresh: bool, evaluate_truncated: bool = True,
) -> ExperimentSpec:
    """Validate and snapshot; exits with every input problem listed before anything is written."""
    draft = load_or_exit(data / "1_raw", experiment_id=experiment_id or "draft", k_max=k_max, level=level,
                         replicates=replicates, fresh=fresh, evaluate_truncated=evaluate_truncated)
    if experiment_id is None:
        named = draft.spec.model_copy(update={"experiment_id": new_experiment_id(draft.spec.name)})
        draft = dataclasses.replace(draft, spec=named)
    experiment_dir = data / "experiments" / draft.spec.experiment_id
    try:
        snapshot_experiment(draft, experiment_dir)
    except SnapshotConflict as conflict:
        console.print(f"[bold red]{conflict}[/]")
        raise typer.Exit(2) from conflict
    write_plan(data, draft)
    spec_file = experiment_dir / SPEC_FILE
    if not spec_file.exists():
        staged = spec_file.with_suffix(".tmp")
        staged.write_text(draft.spec.model_dump_json(indent=2), encoding="utf-8")
        staged.replace(spec_file)
    return draft.spec


def load_snapshot_spec(data: Path, experiment_id: str) -> ExperimentSpec:
    path = data / "experiments" / experiment_id / SPEC_FILE
    if not path.exists():
        raise typer.BadParameter(f"{path} not found: was experiment {experiment_id} published from this data dir?")
    return ExperimentSpec.model_validate_json(path.read_text(encoding="utf-8"))


async def publish_experiment(settings: Settings, spec: ExperimentSpec) -> None:
    """Shape the topology to the experiment's tiers (caps included), then request it once."""
    nc = await nats.connect(settings.nats_url)
    try:
        js = nc.jetstream()
        await ensure_topology(js, settings, spec.tiers)
        await js.publish(EXPERIMENT_REQUESTED, ExperimentRequested(spec=spec).model_dump_json().encode(),
                         headers={"Nats-Msg-Id": message_id("requested", spec.experiment_id)})
    finally:
        await nc.close()


async def republish_tasks(settings: Settings, tasks: list[TaskCreated]) -> None:
    """A rerun is a new request: a fresh message id per rerun, so the duplicate window lets it in."""
    stamp = f"rerun{time.time_ns()}"
    nc = await nats.connect(settings.nats_url)
    try:
        js = nc.jetstream()
        for task in tasks:
            await js.publish(task_subject(task.stage, task.tier.tier), task.model_dump_json().encode(),
                             headers={"Nats-Msg-Id": message_id(stamp, task.experiment_id, task.task_id)})
    finally:
        await nc.close()


def publish(
    data: Path = options.DATA,
    experiment_id: str | None = options.EXPERIMENT_ID,
    k_max: int | None = options.K_MAX,
    level: str | None = options.LEVEL,
    replicates: int | None = options.REPLICATES,
    fresh: bool = options.FRESH,
) -> None:
    """Validate, snapshot and publish an experiment to the stack at NATS_URL."""
    settings = Settings(data=data)
    spec = prepare_experiment(data, experiment_id, k_max, level, replicates, fresh, settings.evaluate_truncated)
    asyncio.run(publish_experiment(settings, spec))
    console.print(f"published experiment [bold]{spec.experiment_id}[/] to {_without_credentials(settings.nats_url)}")
    console.print(f"follow it with: daydream status {spec.experiment_id} --data {data}")
    typer.echo(spec.experiment_id)


def _without_credentials(url: str) -> str:
    return url.split("@", 1)[-1] if "@" in url else url


def rerun(
    experiment_id: str = typer.Argument(...),
    failed: bool = typer.Option(False, "--failed", help="Republish every task that failed."),
    task: list[str] = typer.Option([], "--task", help="Republish one task (repeatable)."),
    data: Path = options.DATA,
) -> None:
    """Republish what failed (or chosen tasks); stored responses are reused, so only what never
    succeeded costs a call."""
    settings = Settings(data=data)
    tracker = Tracker(data, make_engine(settings.sqlalchemy_url()))
    known = {t.task_id: t for t in tracker.failed_tasks(experiment_id)}
    if task:
        spec = load_snapshot_spec(data, experiment_id)
        known.update({t.task_id: t for t in generation_tasks(spec) if t.task_id not in known})
        missing = [t for t in task if t not in known]
        if missing:
            raise typer.BadParameter(f"unknown task id(s) for {experiment_id}: {', '.join(missing)} "
                                     "(see `daydream status` or the failures table)")
        chosen = [known[t] for t in task]
    elif failed:
        chosen = list(known.values())
    else:
        raise typer.BadParameter("say what to rerun: --failed or --task TASK_ID")
    asyncio.run(republish_tasks(settings, chosen))
    console.print(f"republished {len(chosen)} task(s) of {experiment_id}")
    console.print(json.dumps([t.task_id for t in chosen]) if len(chosen) <= 20 else "")
