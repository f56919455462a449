"""`daydream publish`: validate, snapshot and put an experiment on the bus of a running stack."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import secrets
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import nats
import typer
from rich.console import Console

from daydream import options
from daydream.plan_cmd import load_or_exit, print_estimate, write_plan
from daydream.stack import StackState, usable_stack
from shared.estimate import Estimate
from shared.events import ExperimentRequested, ExperimentSpec
from shared.ids import MAX_ID_LENGTH, is_safe_id
from shared.inputs import SPEC_FILE
from shared.llm import SIMULATED_ENDPOINT, endpoint_identity
from shared.nats_cluster import server_urls, without_credentials
from shared.service import publish_to_jetstream
from shared.settings import Settings
from shared.topology import ensure_topology

console = Console()


def new_experiment_id(name: str) -> str:
    """A safe id by construction: every character outside the safe-id rule becomes '-'. The time
    is readable; the random suffix keeps two publishes in the same second apart. A long name is
    cut so the id stays within `MAX_ID_LENGTH`."""
    suffix = f"-{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"
    slug = "".join(c if is_safe_id(c) else "-" for c in name.lower())[: MAX_ID_LENGTH - len(suffix)]
    return f"{slug.strip('-') or 'experiment'}{suffix}"


def prepare_experiment(
    data: Path, experiment_id: str | None, k_max: int | None, level: str | None,
    replicates: int | None, fresh: bool, evaluate_truncated: bool = True, endpoint: str | None = None,
    max_cost: float | None = None, approve: Callable[[Estimate], None] = print_estimate,
) -> ExperimentSpec:
    """Validate and snapshot, bound to `endpoint` (the `endpoint_identity` that will answer it),
    with the budget `max_cost` (else experiment.toml's); exits with every input problem listed,
    when an existing snapshot of this id is bound to another endpoint, or when `approve` (shown
    the estimate) refuses, before anything is written."""
    draft = load_or_exit(data / "1_raw", experiment_id=experiment_id or "draft", k_max=k_max, level=level,
                         replicates=replicates, fresh=fresh, evaluate_truncated=evaluate_truncated)
    spec_id = experiment_id or new_experiment_id(draft.spec.name)
    earlier = snapshot_spec(data, spec_id)
    if earlier is not None:
        bound_endpoint(data, earlier.endpoint, endpoint, spec_id)
        endpoint = earlier.endpoint  # a snapshot from before endpoints were recorded stays unbound
    budget = draft.spec.max_cost if max_cost is None else max_cost
    draft = dataclasses.replace(draft, spec=draft.spec.model_copy(update={"experiment_id": spec_id,
                                                                          "endpoint": endpoint, "max_cost": budget}))
    write_plan(data, draft, experiment_dir=data / "experiments" / draft.spec.experiment_id, approve=approve)
    record_budget(data, spec_id, budget)
    return draft.spec


BUDGET_FILE = "budget.json"
"""The experiment's current budget, beside its snapshot and not part of it: raising it is no new selection."""


def record_budget(data: Path, experiment_id: str, max_cost: float | None) -> None:
    path = data / "experiments" / experiment_id / BUDGET_FILE
    if max_cost is None:
        path.unlink(missing_ok=True)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"max_cost": max_cost}) + "\n", encoding="utf-8")


def recorded_budget(data: Path, experiment_id: str) -> float | None:
    path = data / "experiments" / experiment_id / BUDGET_FILE
    return json.loads(path.read_text(encoding="utf-8"))["max_cost"] if path.exists() else None


def bound_endpoint(data: Path, spec_endpoint: str | None, serving: str | None, experiment_id: str) -> None:
    """Exit unless the experiment's recorded endpoint is the one that would answer it now: a
    simulated answer must never land in an experiment started against a real endpoint, nor the reverse."""
    if spec_endpoint is None or serving is None or spec_endpoint == serving:
        return
    if spec_endpoint == SIMULATED_ENDPOINT:
        fix = "unset OPENROUTER_API_KEY and DAYDREAM_LLM_BASE_URL (in the environment and .env)"
    else:
        fix = f"set DAYDREAM_LLM_BASE_URL={spec_endpoint} and its API key (OPENROUTER_API_KEY for OpenRouter)"
    console.print(f"[red]experiment {experiment_id} was started against endpoint {spec_endpoint}, "
                  f"and this would answer it with {serving}.[/] To resume it, {fix}"
                  + (f" and `daydream down --data {data}` the running stack" if StackState.load(data) else "")
                  + "; or start a new experiment (another --experiment-id).")
    raise typer.Exit(2)


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
        await publish_to_jetstream(js, ExperimentRequested(spec=spec))
    finally:
        await nc.close()


def publish(
    data: Path = options.DATA_DIR,
    experiment_id: str | None = options.EXPERIMENT_ID,
    k_max: int | None = options.K_MAX,
    level: str | None = options.LEVEL,
    replicates: int | None = options.REPLICATES,
    fresh: bool = options.FRESH,
    max_cost: float | None = options.MAX_COST,
) -> None:
    """Validate, snapshot and publish an experiment to the stack at NATS_URL (default: the stack
    `daydream up` runs for this data dir)."""
    settings, serving = destination(data)
    spec = prepare_experiment(data, experiment_id, k_max, level, replicates, fresh, settings.evaluate_truncated,
                              endpoint=serving, max_cost=max_cost)
    asyncio.run(publish_experiment(settings, spec))
    console.print(f"published experiment [bold]{spec.experiment_id}[/] to {without_credentials(settings.nats_url)}")
    console.print(f"follow it with: daydream status {spec.experiment_id} --data {data}")
    typer.echo(spec.experiment_id)


def destination(data: Path) -> tuple[Settings, str | None]:
    """Settings whose NATS URL is the one the user named, else that of this data dir's live `up`
    stack — never a default URL — and the endpoint that stack serves (for a deployment the user
    named, the one DAYDREAM_LLM_BASE_URL names). Exits saying the fix when there is no such stack."""
    settings = Settings(data=data)
    if "nats_url" in settings.model_fields_set:
        return settings, endpoint_identity(settings.llm_base_url, settings.llm_simulated)
    running, problem = usable_stack(data)
    if running is None:
        console.print(f"[red]{problem or f'no running stack for {data}'}[/]" + (
            "" if problem else f": start one with `daydream up --data {data}` (or name one with NATS_URL), "
                               "or use `daydream run`"))
        raise typer.Exit(1)
    return settings.model_copy(update={"nats_url": running.nats_url}), running.endpoint

