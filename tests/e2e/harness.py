"""Helpers for tests that run the real stack: publish tasks, read events back off the bus."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable, Sequence

import nats
from nats.js.api import ConsumerConfig, DeliverPolicy

from shared.events import CallParameters, EvaluationTask, GenerationTask, ModelSpec, TaskCreated, TierSpec
from shared.service import publish_to_jetstream
from shared.settings import Settings
from shared.topology import EVENTS_STREAM, ensure_topology


def generation_task(experiment_id: str, index: int, model: str, tier: TierSpec, *, prompt: str | None = None,
                    max_tokens: int | None = None) -> GenerationTask:
    """A generation task with no evaluation plan: only the generator is exercised."""
    model_spec = ModelSpec(id=re.sub(r"[^A-Za-z0-9_-]", "_", model), model=model, provider="fake", tier=tier.tier,
                           max_tokens=max_tokens)
    return GenerationTask(
        experiment_id=experiment_id, task_id=f"task{index:03d}_{model_spec.id}",
        tier=tier, model=model_spec, parameters=CallParameters(max_tokens=max_tokens),
        prompt=prompt or f"Write about idea number {index}.\n- Default Mode Network\n- Data Flywheel",
        combo_id=f"combo{index}", generation_template_id="essay", generation_model_id=model_spec.id,
        generation_task_id=f"task{index:03d}_{model_spec.id}",
    )


def evaluation_task(experiment_id: str, index: int, model: str, tier: TierSpec) -> EvaluationTask:
    """A judge's task of a made-up generation, so the evaluator's workers can be driven alone."""
    writer = generation_task(experiment_id, index, model, tier)
    return EvaluationTask(
        **writer.model_dump(exclude={"stage", "evaluation_plan", "task_id", "prompt", "emitted_at"}),
        task_id=f"eval{index:03d}_{writer.model.id}", evaluation_template_id="judge", evaluation_model_id=writer.model.id,
        parser="in_last_line", max_score=10,
        prompt=f"Rate this essay number {index} from 0 to 10. End with SCORE: N\n\nAn essay.",
    )


async def declare_tiers(nats_url: str, settings: Settings, tiers: list[TierSpec]) -> None:
    """What `publish` does with an experiment's tiers.csv: the tiers' limits become these, their
    caps full and their circuits closed."""
    nc = await nats.connect(nats_url)
    try:
        await ensure_topology(nc.jetstream(), settings, tiers)
    finally:
        await nc.close()


async def publish_tasks(nats_url: str, tasks: Sequence[TaskCreated]) -> None:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await asyncio.gather(*(publish_to_jetstream(js, t) for t in tasks))
    await nc.close()


async def read_events(nats_url: str, subject: str, until: Callable[[list[dict]], bool], timeout_s: float = 60.0) -> list[dict]:
    """Every event on `subject` from the start of the stream, until `until(events)` holds."""
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    sub = await js.pull_subscribe(subject, stream=EVENTS_STREAM,
                                  config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL, inactive_threshold=30))
    events: list[dict] = []
    deadline = time.monotonic() + timeout_s
    try:
        while not until(events):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{subject}: only {len(events)} events after {timeout_s}s")
            try:
                batch = await sub.fetch(100, timeout=0.5)
            except (TimeoutError, nats.errors.TimeoutError):
                continue
            for msg in batch:
                events.append(json.loads(msg.data))
                await msg.ack()
    finally:
        await nc.close()
    return events
