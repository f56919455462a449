"""The JetStream topology, declared in code and applied create-or-update.

FastStream's own declare leaves an existing durable consumer untouched when its config changes,
so every stream and consumer is declared here explicitly and subscribers only bind to them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    ConsumerInfo,
    DeliverPolicy,
    DiscardPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BucketNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from shared.events import (
    DEFAULT_TIERS,
    EVALUATION_DONE,
    EVALUATION_SCORED,
    EVENT_SUBJECTS,
    EXPERIMENT_PLANNED,
    EXPERIMENT_REQUESTED,
    GENERATION_DONE,
    STAGES,
    TASK_CREATED_PREFIX,
    TASK_CREATED_WILDCARD,
    TASK_FAILED,
    Stage,
    TierSpec,
    task_subject,
)
from shared.settings import Settings

TASKS_STREAM = "DD_TASKS"
EVENTS_STREAM = "DD_EVENTS"
DEAD_LETTERS_STREAM = "DD_DEAD_LETTERS"
MAX_DELIVERIES_ADVISORY = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.>"
"""What the dead-letter reader filters on; the stream captures only DayDream's own streams' advisories."""

TRACKER_SUBJECTS = {
    "tracker-experiment-requested": EXPERIMENT_REQUESTED,
    "tracker-experiment-planned": EXPERIMENT_PLANNED,
    "tracker-generation-done": GENERATION_DONE,
    "tracker-evaluation-done": EVALUATION_DONE,
    "tracker-evaluation-scored": EVALUATION_SCORED,
    "tracker-task-failed": TASK_FAILED,
}
COMBINER_CONSUMER = "combiner"
FANOUT_CONSUMER = "evaluator-fanout"
PARSER_CONSUMER = "parser"
DEAD_LETTER_CONSUMER = "tracker-dead-letters"


def worker_consumer(stage: Stage, tier: str) -> str:
    service = "generator" if stage == "generation" else "evaluator"
    return f"{service}-{tier}"


@dataclass(frozen=True)
class ConsumerSpec:
    stream: str
    durable: str
    subject: str
    max_ack_pending: int
    max_deliver: int


def stream_configs(settings: Settings) -> list[StreamConfig]:
    return [
        StreamConfig(
            name=TASKS_STREAM,
            subjects=[TASK_CREATED_WILDCARD],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            duplicate_window=settings.duplicate_window_s,
        ),
        StreamConfig(
            name=EVENTS_STREAM,
            subjects=list(EVENT_SUBJECTS),
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            max_age=settings.events_max_age_days * 86400,
            discard=DiscardPolicy.OLD,
            duplicate_window=settings.duplicate_window_s,
        ),
        StreamConfig(
            name=DEAD_LETTERS_STREAM,
            subjects=[MAX_DELIVERIES_ADVISORY.removesuffix(">") + f"{stream}.>" for stream in (TASKS_STREAM, EVENTS_STREAM)],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            max_age=settings.events_max_age_days * 86400,
        ),
    ]


def worker_specs(settings: Settings, tiers: list[TierSpec] | tuple[TierSpec, ...]) -> list[ConsumerSpec]:
    """Worker caps are the tiers' `max_concurrent`: the server enforces them across all replicas."""
    return [
        ConsumerSpec(TASKS_STREAM, worker_consumer(stage, tier.tier), task_subject(stage, tier.tier),
                     tier.max_concurrent, settings.max_attempts + 2)
        for stage in STAGES
        for tier in tiers
    ]


def event_reader_specs(settings: Settings) -> list[ConsumerSpec]:
    """Event readers get a generous cap; they are cheap."""
    max_deliver = settings.max_attempts + 2
    specs = [
        ConsumerSpec(EVENTS_STREAM, COMBINER_CONSUMER, EXPERIMENT_REQUESTED, 4, max_deliver),
        ConsumerSpec(EVENTS_STREAM, FANOUT_CONSUMER, GENERATION_DONE, 64, max_deliver),
        ConsumerSpec(EVENTS_STREAM, PARSER_CONSUMER, EVALUATION_DONE, 64, max_deliver),
        ConsumerSpec(DEAD_LETTERS_STREAM, DEAD_LETTER_CONSUMER, MAX_DELIVERIES_ADVISORY, 16, max_deliver),
    ]
    specs += [
        ConsumerSpec(EVENTS_STREAM, durable, subject, 64, max_deliver)
        for durable, subject in TRACKER_SUBJECTS.items()
    ]
    return specs


def consumer_specs(settings: Settings, tiers: list[TierSpec] | tuple[TierSpec, ...]) -> list[ConsumerSpec]:
    return worker_specs(settings, tiers) + event_reader_specs(settings)


def consumer_config(spec: ConsumerSpec, settings: Settings) -> ConsumerConfig:
    return ConsumerConfig(
        name=spec.durable,
        durable_name=spec.durable,
        filter_subject=spec.subject,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=settings.ack_wait_s,
        max_deliver=spec.max_deliver,
        max_ack_pending=spec.max_ack_pending,
    )


def replicas_to_declare(settings: Settings, current: int | None = None) -> int:
    """`DAYDREAM_STREAM_REPLICAS`, or more when an operator already raised a stream or bucket by
    hand: a service starting must never shrink the copies a cluster keeps."""
    return max(settings.stream_replicas, current or 1)


async def ensure_streams(js: JetStreamContext, settings: Settings) -> None:
    for config in stream_configs(settings):
        try:
            info = await js.stream_info(config.name)
        except NotFoundError:
            config.num_replicas = replicas_to_declare(settings)
            await js.add_stream(config)
        else:
            config.num_replicas = replicas_to_declare(settings, info.config.num_replicas)
            await js.update_stream(config)


async def ensure_bucket(js: JetStreamContext, config: KeyValueConfig, settings: Settings) -> KeyValue:
    """Bind to a KV bucket, creating it when absent and raising its replicas to the setting."""
    try:
        kv = await js.key_value(config.bucket)
    except BucketNotFoundError:
        config.replicas = replicas_to_declare(settings)
        return await js.create_key_value(config)
    stream = (await js.stream_info(f"KV_{config.bucket}")).config
    wanted = replicas_to_declare(settings, stream.num_replicas)
    if wanted != stream.num_replicas:
        stream.num_replicas = wanted
        await js.update_stream(stream)
    return kv


async def ensure_topology(
    js: JetStreamContext,
    settings: Settings,
    tiers: list[TierSpec] | tuple[TierSpec, ...] = DEFAULT_TIERS,
) -> None:
    """Create or update every stream and consumer."""
    await ensure_streams(js, settings)
    for spec in consumer_specs(settings, tiers):
        await js.add_consumer(spec.stream, consumer_config(spec, settings))


def spec_of(info: ConsumerInfo) -> ConsumerSpec:
    return ConsumerSpec(
        stream=info.stream_name,
        durable=info.config.durable_name or info.name,
        subject=info.config.filter_subject or "",
        max_ack_pending=info.config.max_ack_pending or 1,
        max_deliver=info.config.max_deliver or -1,
    )


async def ensure_service_topology(
    js: JetStreamContext, settings: Settings, *, readers: Iterable[str] = (), stage: Stage | None = None
) -> list[ConsumerSpec]:
    """What a service does at start: make sure the streams and its own event readers exist and,
    for a worker, that its stage has consumers (the default tiers on an empty server). It never
    changes a tier cap that `publish` set, nor touches another service's consumers (the compose
    NATS users are not allowed to). Returns the live worker consumers of `stage`."""
    await ensure_streams(js, settings)
    wanted = set(readers)
    for spec in event_reader_specs(settings):
        if spec.durable in wanted:
            await js.add_consumer(spec.stream, consumer_config(spec, settings))
    if stage is None:
        return []
    prefix = f"{TASK_CREATED_PREFIX}{stage}."
    existing = [spec for spec in map(spec_of, await js.consumers_info(TASKS_STREAM)) if spec.subject.startswith(prefix)]
    if existing:
        return existing
    defaults = [spec for spec in worker_specs(settings, DEFAULT_TIERS) if spec.subject.startswith(prefix)]
    for spec in defaults:
        await js.add_consumer(spec.stream, consumer_config(spec, settings))
    return defaults


def find_reader(settings: Settings, durable: str) -> ConsumerSpec:
    return next(spec for spec in event_reader_specs(settings) if spec.durable == durable)
