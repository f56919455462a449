"""The JetStream topology, declared in code and applied create-or-update.

FastStream's own declare leaves an existing durable consumer untouched when its config changes,
so every stream and consumer is declared here explicitly and subscribers only bind to them.
"""

from __future__ import annotations

import asyncio
import json
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
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, NoKeysError, NotFoundError
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
from shared.nats_cluster import TRANSIENT_NATS_ERRORS
from shared.settings import Settings
from shared.tiers import (
    SLOT_GROUP,
    SLOT_SUBJECT_PREFIX,
    SLOTS_STREAM,
    TIER_STATE_BUCKET,
    TierState,
    slot_consumer,
    slot_subject,
    with_limits,
)

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


@dataclass
class SlotConsumerConfig(ConsumerConfig):
    """nats-py's config without the priority-group fields it does not know yet (nats-server 2.12+)."""

    priority_groups: list[str] | None = None
    priority_policy: str | None = None


STAGE_WORKERS: dict[Stage, str] = {"generation": "generator", "evaluation": "evaluator"}
"""The service that runs each stage's LLM calls; a stage missing here fails loudly, not as the evaluator."""


def worker_consumer(stage: Stage, tier: str) -> str:
    return f"{STAGE_WORKERS[stage]}-{tier}"


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
        StreamConfig(
            name=SLOTS_STREAM,
            subjects=[SLOT_SUBJECT_PREFIX + ">"],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            duplicate_window=settings.duplicate_window_s,
        ),
    ]


def task_prefetch(max_concurrent: int) -> int:
    """Tasks a stage may hold per tier: twice the cap, so a freed slot finds a task already waiting
    for it. The cap itself is the tier's slot consumer (`shared.tiers`), across both stages."""
    return 2 * max_concurrent


def worker_specs(settings: Settings, tiers: list[TierSpec] | tuple[TierSpec, ...]) -> list[ConsumerSpec]:
    return [
        ConsumerSpec(TASKS_STREAM, worker_consumer(stage, tier.tier), task_subject(stage, tier.tier),
                     task_prefetch(tier.max_concurrent), settings.max_attempts + 2)
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
            info = await js.stream_info(config.name or "")
        except NotFoundError:
            config.num_replicas = replicas_to_declare(settings)
            await js.add_stream(config)
        else:
            config.num_replicas = replicas_to_declare(settings, info.config.num_replicas)
            await js.update_stream(config)


BUCKET_TRIES = 5


async def ensure_bucket(js: JetStreamContext, config: KeyValueConfig, settings: Settings) -> KeyValue:
    """Bind to a KV bucket, creating it when absent and raising its replicas to the setting. On a
    new cluster, services creating replicated buckets at once can time out while the nodes place
    them: that is tried again, with a growing pause, before the service gives up."""
    for attempt in range(1, BUCKET_TRIES):
        try:
            return await _bind_bucket(js, config, settings)
        except TRANSIENT_NATS_ERRORS:
            await asyncio.sleep(attempt)
    return await _bind_bucket(js, config, settings)


async def _bind_bucket(js: JetStreamContext, config: KeyValueConfig, settings: Settings) -> KeyValue:
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


def slot_consumer_config(tier: str, cap: int, settings: Settings) -> SlotConsumerConfig:
    """Never terminated, never acked: a slot only goes back (nak) or is renewed (in progress)."""
    return SlotConsumerConfig(
        name=slot_consumer(tier),
        durable_name=slot_consumer(tier),
        filter_subject=slot_subject(tier),
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=settings.slot_ack_wait_s,
        max_deliver=-1,
        max_ack_pending=cap,
        max_waiting=4096,
        priority_groups=[SLOT_GROUP],
        priority_policy="prioritized",
    )


def tier_state_bucket() -> KeyValueConfig:
    return KeyValueConfig(bucket=TIER_STATE_BUCKET, history=1, storage=StorageType.FILE)


async def tier_states(js: JetStreamContext, settings: Settings) -> KeyValue:
    return await ensure_bucket(js, tier_state_bucket(), settings)


async def read_tier_state(kv: KeyValue, tier: str) -> tuple[TierState | None, int]:
    """The state and its KV revision (0 when absent), for a compare-and-set update."""
    try:
        entry = await kv.get(tier)
    except KeyNotFoundError:
        return None, 0
    return (TierState.model_validate_json(entry.value) if entry.value else None), entry.revision or 0


async def all_tier_states(js: JetStreamContext) -> list[TierState]:
    """Every tier's shared state, for `status`; none on a server no `publish` has shaped."""
    try:
        kv = await js.key_value(TIER_STATE_BUCKET)
        keys = await kv.keys()
    except (BucketNotFoundError, NoKeysError):
        return []
    states = [(await read_tier_state(kv, key))[0] for key in sorted(keys)]
    return [state for state in states if state is not None]


async def set_slot_cap(js: JetStreamContext, tier: str, cap: int, settings: Settings) -> None:
    await js.add_consumer(SLOTS_STREAM, slot_consumer_config(tier, cap, settings))


def slot_index(body: bytes) -> int:
    try:
        return int(json.loads(body)["slot"])
    except (ValueError, KeyError, TypeError):
        return 1 << 30


async def ensure_slots(js: JetStreamContext, tier: str, cap: int, settings: Settings) -> None:
    """Slots 0..cap-1 of the tier. A slot once delivered circulates by redelivery, so the slot
    messages in the stream are the cap; workers retire (delete) those at or beyond a lowered cap,
    which keeps the ones left numbered 0..n-1. Two `publish` runs seeding at once read the same
    last sequence, so their message ids collide and JetStream keeps one of each."""
    await set_slot_cap(js, tier, cap, settings)
    info = await js.stream_info(SLOTS_STREAM, subjects_filter=slot_subject(tier))
    present = (info.state.subjects or {}).get(slot_subject(tier), 0)
    seeded_after = info.state.last_seq
    for index in range(present, cap):
        await js.publish(slot_subject(tier), json.dumps({"slot": index}).encode(), stream=SLOTS_STREAM,
                         headers={"Nats-Msg-Id": f"slot-{tier}-{index}-after-{seeded_after}"})


async def ensure_tier_controls(js: JetStreamContext, settings: Settings, tiers: Iterable[TierSpec]) -> None:
    """What `publish` does for the experiment's tiers: their limits become the tiers' own."""
    kv = await tier_states(js, settings)
    for tier in tiers:
        await ensure_slots(js, tier.tier, tier.max_concurrent, settings)
        current, _ = await read_tier_state(kv, tier.tier)
        state = with_limits(current, tier.tier, tier.max_concurrent, tier.requests_per_minute)
        await kv.put(tier.tier, state.model_dump_json().encode())


async def ensure_topology(
    js: JetStreamContext,
    settings: Settings,
    tiers: list[TierSpec] | tuple[TierSpec, ...] = DEFAULT_TIERS,
) -> None:
    """Create or update every stream and consumer, and the tiers' shared limits."""
    await ensure_streams(js, settings)
    for spec in consumer_specs(settings, tiers):
        await js.add_consumer(spec.stream, consumer_config(spec, settings))
    await ensure_tier_controls(js, settings, tiers)


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
    live = [spec for spec in map(spec_of, await js.consumers_info(TASKS_STREAM)) if spec.subject.startswith(prefix)]
    if not live:
        live = [spec for spec in worker_specs(settings, DEFAULT_TIERS) if spec.subject.startswith(prefix)]
        for spec in live:
            await js.add_consumer(spec.stream, consumer_config(spec, settings))
    await ensure_missing_tier_controls(js, settings, [tier_of(spec) for spec in live])
    return live


def tier_of(spec: ConsumerSpec) -> TierSpec:
    """The tier a worker consumer serves, with the default limits when no `publish` gave it any."""
    name = spec.subject.rsplit(".", 1)[-1]
    default = next((tier for tier in DEFAULT_TIERS if tier.tier == name), None)
    return default or TierSpec(tier=name, max_concurrent=max(1, spec.max_ack_pending // 2))


async def ensure_missing_tier_controls(js: JetStreamContext, settings: Settings, tiers: Iterable[TierSpec]) -> None:
    """A worker on a server no `publish` has shaped (or shaped by an older DayDream) gives the
    tiers it serves their slots, leaving limits a `publish` set alone."""
    kv = await tier_states(js, settings)
    for tier in tiers:
        if (await read_tier_state(kv, tier.tier))[0] is None:
            await ensure_tier_controls(js, settings, [tier])


def find_reader(settings: Settings, durable: str) -> ConsumerSpec:
    return next(spec for spec in event_reader_specs(settings) if spec.durable == durable)
