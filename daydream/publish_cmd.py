"""`daydream publish`: validate, snapshot and put an experiment on the bus of a running stack."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import datetime, timezone
from pathlib import Path

import nats
import typer
from rich.console import Console

from daydream import options
from daydream.plan_cmd import load_or_exit, write_plan
from daydream.stack import usable_stack
from shared.events import (
    EXPERIMENT_REQUESTED,
    ExperimentRequested,
    ExperimentSpec,
    message_id,
)
from shared.ids import is_safe_id
from shared.inputs import SPEC_FILE
from shared.nats_cluster import server_urls, without_credentials
from shared.settings import Settings
from shared.topology import ensure_topology

console = Console()


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
    write_plan(data, draft, experiment_dir=data / "experiments" / draft.spec.experiment_id)
    return draft.spec


def snapshot_spec(data: Path, experiment_id: str) -> ExperimentSpec | None:
    """The selection `publish` snapshotted for this experiment, if it was published from this data dir."""
    path = data / "experiments" / experiment_id / SPEC_FILE
    return ExperimentSpec.model_validate_json(path.read_text(encoding="utf-8")) if path.exists() else None


async def publish_experiment(settings: Settings, spec: ExperimentSpec) -> None:
    """Shape the topology to the experiment's tiers (caps included), then request it once."""
    nc = await nats.connect(server_urls(settings.nats_url))
    try:
        js = nc.jetstream()
        await ensure_topology(js, settings, spec.tiers)
        await js.publish(EXPERIMENT_REQUESTED, ExperimentRequested(spec=spec).model_dump_json().encode(),
                         headers={"Nats-Msg-Id": message_id("requested", spec.experiment_id)})
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
    """Validate, snapshot and publish an experiment to the stack at NATS_URL (default: the stack
    `daydream up` runs for this data dir)."""
    settings = destination(data)
    spec = prepare_experiment(data, experiment_id, k_max, level, replicates, fresh, settings.evaluate_truncated)
    asyncio.run(publish_experiment(settings, spec))
    console.print(f"published experiment [bold]{spec.experiment_id}[/] to {without_credentials(settings.nats_url)}")
    console.print(f"follow it with: daydream status {spec.experiment_id} --data {data}")
    typer.echo(spec.experiment_id)


def destination(data: Path) -> Settings:
    """Settings whose NATS URL is the one the user named, else that of this data dir's `up` stack."""
    settings = Settings(data=data)
    if "nats_url" in settings.model_fields_set:
        return settings
    running, lost = usable_stack(data)
    if lost:
        console.print(f"[yellow]{lost}[/]")
    return settings.model_copy(update={"nats_url": running.nats_url}) if running else settings
