"""deploy/nats/nats.conf on a real nats-server: each service user can do its own work and is
refused everything else.

What "its own" means is derived from the code: the subjects of shared/events.py, the consumers
shared/topology.py declares for the default and the shipped tiers, and who publishes and pulls
each (the message flow of ARCHITECTURE.md). A subject or consumer added to the code without an
owner here fails `test_every_subject_and_consumer_of_the_code_has_an_owner`; one the config does
not grant its owner fails the tests that do the owner's work.

The server reports a refused publish or subscription asynchronously (-ERR to the error callback),
so every refusal is checked after a flush (a PING/PONG round trip the server answers only after
the -ERR) and, for publishes, also by the stream not having grown.
"""

from __future__ import annotations

import asyncio
import csv
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from pathlib import Path

import nats
import pytest
from nats.errors import TimeoutError as NatsTimeoutError

from daydream.nats_process import NatsServer
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
    TASK_FAILED,
    TierSpec,
    task_subject,
)
from shared.settings import Settings
from shared.spend import Spend, open_spend_bucket, put_spend, put_unrecorded, read_spend, read_unrecorded
from shared.topology import (
    COMBINER_CONSUMER,
    DEAD_LETTER_CONSUMER,
    DEAD_LETTERS_STREAM,
    EVENTS_STREAM,
    FANOUT_CONSUMER,
    PARSER_CONSUMER,
    TASKS_STREAM,
    TRACKER_SUBJECTS,
    ConsumerSpec,
    consumer_config,
    consumer_specs,
    ensure_service_topology,
    ensure_streams,
    ensure_topology,
    worker_consumer,
)
from tests.conftest import EXAMPLE_RAW

pytestmark = pytest.mark.integration

NATS_CONF = Path(__file__).resolve().parents[2] / "deploy" / "nats" / "nats.conf"
SERVICES = ("combiner", "generator", "evaluator", "parser", "tracker")
USERS = ("daydream", *SERVICES)
BUCKET = Settings().response_store_bucket
SETTINGS = Settings(max_attempts=1)

with (EXAMPLE_RAW / "tiers.csv").open(newline="", encoding="utf-8") as shipped:
    SHIPPED_TIERS = {row["tier"] for row in csv.DictReader(shipped)}
TIERS = sorted({tier.tier for tier in DEFAULT_TIERS} | SHIPPED_TIERS)
"""The tiers nats.conf must grant: the ones workers declare on an empty server and the example's."""

WORKERS = {"generation": "generator", "evaluation": "evaluator"}
READERS = {
    COMBINER_CONSUMER: "combiner",
    FANOUT_CONSUMER: "evaluator",
    PARSER_CONSUMER: "parser",
    DEAD_LETTER_CONSUMER: "tracker",
    **dict.fromkeys(TRACKER_SUBJECTS, "tracker"),
}
CONSUMER_OWNERS = {
    **{worker_consumer(stage, tier): WORKERS[stage] for stage in STAGES for tier in TIERS},
    **READERS,
}
TIER_SPECS = [TierSpec(tier=tier, max_concurrent=2) for tier in TIERS]
CONSUMERS = consumer_specs(SETTINGS, TIER_SPECS)

EVENT_PUBLISHERS = {
    EXPERIMENT_REQUESTED: {"daydream"},
    EXPERIMENT_PLANNED: {"combiner"},
    GENERATION_DONE: {"generator"},
    EVALUATION_DONE: {"evaluator"},
    EVALUATION_SCORED: {"parser"},
    TASK_FAILED: set(SERVICES),
}
"""Every service may give up on a message it cannot handle, with `TaskFailed`."""
TASK_PUBLISHERS = {"generation": {"combiner", "daydream"}, "evaluation": {"evaluator", "daydream"}}
"""The combiner plans generations, the evaluator fans out evaluations, `daydream rerun` re-sends both."""

TASK_SUBJECTS = [task_subject(stage, tier) for stage in STAGES for tier in TIERS]


def publishers_of(subject: str) -> set[str]:
    if subject.startswith(TASK_CREATED_PREFIX):
        return TASK_PUBLISHERS[subject.removeprefix(TASK_CREATED_PREFIX).split(".")[0]]
    return EVENT_PUBLISHERS[subject]


def published_by(user: str) -> list[str]:
    return [subject for subject in [*EVENT_SUBJECTS, *TASK_SUBJECTS] if user in publishers_of(subject)]


def owned_consumers(user: str) -> list[ConsumerSpec]:
    return [spec for spec in CONSUMERS if CONSUMER_OWNERS[spec.durable] == user]


def foreign_consumers(user: str) -> list[ConsumerSpec]:
    return [spec for spec in CONSUMERS if CONSUMER_OWNERS[spec.durable] != user]


def stream_of(subject: str) -> str:
    return TASKS_STREAM if subject.startswith(TASK_CREATED_PREFIX) else EVENTS_STREAM


@pytest.fixture
def secured_nats(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh nats-server running the deploy config, passwords from the environment as in compose."""
    for user in USERS:
        monkeypatch.setenv(f"NATS_{user.upper()}_PASSWORD", f"pw-{user}")
    with NatsServer(store_dir=tmp_path / "nats", config_file=NATS_CONF) as server:
        yield server.url


class Session:
    """One user's connection plus the refusals the server sent it."""

    def __init__(self, nc: nats.NATS, errors: list[Exception]) -> None:
        self.nc = nc
        self.js = nc.jetstream(timeout=2)
        self.errors = errors

    async def refusals_so_far(self) -> list[str]:
        await self.nc.flush()
        return [str(error) for error in self.errors if "permissions violation" in str(error).lower()]

    async def refusals_once(self, done: Callable[[list[str]], bool], timeout_s: float = 3.0) -> list[str]:
        """The refusals once `done` holds for them, or as they stand at the deadline: the
        server's -ERR may trail the flush's PONG."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while not done(found := await self.refusals_so_far()) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)
        return found

    async def refusals(self) -> list[str]:
        return await self.refusals_once(bool)

    async def unrefused(self, subjects: list[str]) -> list[str]:
        """Those of `subjects` the server has not refused this user (the client lower-cases -ERR texts)."""

        def missing(found: list[str]) -> list[str]:
            refused = " ".join(found).lower()
            return [subject for subject in subjects if f'"{subject.lower()}"' not in refused]

        return missing(await self.refusals_once(lambda found: not missing(found)))


@pytest.fixture
async def connect(secured_nats: str) -> AsyncIterator[Callable]:
    sessions: list[Session] = []

    async def as_user(user: str) -> Session:
        errors: list[Exception] = []

        async def on_error(error: Exception) -> None:
            errors.append(error)

        nc = await nats.connect(secured_nats, user=user, password=f"pw-{user}", error_cb=on_error,
                                allow_reconnect=False)
        sessions.append(Session(nc, errors))
        return sessions[-1]

    admin = await as_user("daydream")
    await ensure_topology(admin.js, SETTINGS, TIER_SPECS)
    yield as_user
    for session in sessions:
        await session.nc.close()


def test_every_subject_and_consumer_of_the_code_has_an_owner() -> None:
    assert set(EVENT_PUBLISHERS) == set(EVENT_SUBJECTS), "give each event subject its publishers here"
    assert set(TASK_PUBLISHERS) == set(STAGES), "give each stage's task subjects their publishers here"
    unowned = {spec.durable for spec in CONSUMERS} - set(CONSUMER_OWNERS)
    assert not unowned, f"consumers declared in shared.topology with no owning service here: {sorted(unowned)}"


async def test_wrong_password_is_refused(secured_nats: str) -> None:
    with pytest.raises(Exception, match="[Aa]uthorization"):
        await nats.connect(secured_nats, user="parser", password="nope", allow_reconnect=False,
                           max_reconnect_attempts=0, connect_timeout=2)


@pytest.mark.parametrize("user", SERVICES)
async def test_service_declares_publishes_and_pulls_its_own(user: str, connect: Callable) -> None:
    service = await connect(user)
    await ensure_streams(service.js, SETTINGS)
    if user in WORKERS.values():
        listed = {info.name for info in await service.js.consumers_info(TASKS_STREAM)}
        assert {spec.durable for spec in owned_consumers(user) if spec.stream == TASKS_STREAM} <= listed
    for subject in published_by(user):
        ack = await service.js.publish(subject, b"{}")
        assert ack.stream == stream_of(subject)

    for spec in owned_consumers(user):
        await service.js.add_consumer(spec.stream, consumer_config(spec, SETTINGS))
        if spec.stream == DEAD_LETTERS_STREAM:
            continue
        feeder = await connect(sorted(publishers_of(spec.subject))[0])
        await feeder.js.publish(spec.subject, b"{}")
        subscription = await service.js.pull_subscribe_bind(spec.durable, spec.stream)
        [message] = await subscription.fetch(1, timeout=2)
        await message.in_progress()
        await message.ack_sync()
        info = await service.js.consumer_info(spec.stream, spec.durable)
        assert info.num_ack_pending == 0, f"{user} could not ack on {spec.durable}"

    assert await service.refusals_so_far() == []


@pytest.mark.parametrize("user", USERS)
async def test_service_is_refused_subjects_it_does_not_publish(user: str, connect: Callable) -> None:
    service = await connect(user)
    admin = await connect("daydream")
    forbidden = [subject for subject in [*EVENT_SUBJECTS, *TASK_SUBJECTS] if user not in publishers_of(subject)]
    before = {stream: (await admin.js.stream_info(stream)).state.messages for stream in (TASKS_STREAM, EVENTS_STREAM)}

    for subject in forbidden:
        await service.nc.publish(subject, b"{}")

    assert await service.unrefused(forbidden) == []
    after = {stream: (await admin.js.stream_info(stream)).state.messages for stream in before}
    assert after == before


@pytest.mark.parametrize("user", SERVICES)
async def test_service_may_not_read_pull_from_or_ack_another_services_consumers(user: str, connect: Callable) -> None:
    service = await connect(user)
    requests = [
        f"$JS.API.CONSUMER.{verb}.{spec.stream}.{spec.durable}"
        for spec in foreign_consumers(user)
        for verb in ("INFO", "MSG.NEXT")
    ]
    acks = [f"$JS.ACK.{spec.stream}.{spec.durable}.1.1.1.0.0" for spec in foreign_consumers(user)]

    for subject in [*requests, *acks]:
        await service.nc.publish(subject, b"", reply=service.nc.new_inbox())

    assert await service.unrefused([*requests, *acks]) == []


@pytest.mark.parametrize("user", SERVICES)
async def test_service_cannot_create_or_repoint_consumers_it_does_not_own(user: str, connect: Callable) -> None:
    """Creating a consumer that exists updates it: a service that could, could steal another
    service's messages by pointing that consumer (or its own) at their subject."""
    service = await connect(user)
    admin = await connect("daydream")
    impatient = service.nc.jetstream(timeout=0.5)
    attempts = [
        replace(spec, subject=subject)
        for spec in CONSUMERS
        for subject in sorted({other.subject for other in CONSUMERS if other.stream == spec.stream})
        if not (CONSUMER_OWNERS[spec.durable] == user and subject == spec.subject)
    ]

    outcomes = await asyncio.gather(
        *(impatient.add_consumer(spec.stream, consumer_config(spec, SETTINGS)) for spec in attempts),
        return_exceptions=True,
    )

    accepted = [(spec.durable, spec.subject) for spec, outcome in zip(attempts, outcomes, strict=True)
                if not isinstance(outcome, NatsTimeoutError)]
    assert accepted == []
    for spec in CONSUMERS:
        assert (await admin.js.consumer_info(spec.stream, spec.durable)).config.filter_subject == spec.subject


@pytest.mark.parametrize(("user", "other_stage"), [("generator", "evaluation"), ("evaluator", "generation")])
async def test_a_worker_cannot_take_the_other_stages_tasks(user: str, other_stage: str, connect: Callable) -> None:
    """The generator must not consume (nor acknowledge away) an evaluation task, nor the
    evaluator a generation task: the task stays with the worker it was meant for."""
    admin = await connect("daydream")
    await admin.js.publish(task_subject(other_stage, "free"), b"{}")
    victim = worker_consumer(other_stage, "free")
    worker = await connect(user)

    stolen = await worker.js.pull_subscribe_bind(victim, TASKS_STREAM)
    with pytest.raises(NatsTimeoutError):
        await stolen.fetch(1, timeout=1)
    assert (await admin.js.consumer_info(TASKS_STREAM, victim)).num_pending == 1

    rightful = await admin.js.pull_subscribe_bind(victim, TASKS_STREAM)
    [delivered] = await rightful.fetch(1, timeout=2)
    await worker.nc.publish(delivered.reply, b"+ACK")
    assert await worker.unrefused([f"$JS.API.CONSUMER.MSG.NEXT.{TASKS_STREAM}.{victim}", delivered.reply]) == []
    assert (await admin.js.consumer_info(TASKS_STREAM, victim)).num_ack_pending == 1


@pytest.mark.parametrize(("user", "subject"), [("parser", "dd.>"), ("generator", GENERATION_DONE), ("tracker", "$JS.ACK.>")])
async def test_service_may_not_listen_in_on_core_subjects(user: str, subject: str, connect: Callable) -> None:
    service = await connect(user)
    await service.nc.subscribe(subject)
    assert any(f'subscription to "{subject}"'.lower() in refusal.lower() for refusal in await service.refusals())


@pytest.mark.parametrize("user", ["generator", "parser", "tracker"])
async def test_services_cannot_delete_or_purge_streams(user: str, connect: Callable) -> None:
    service = await connect(user)
    impatient = service.nc.jetstream(timeout=0.3)
    with pytest.raises(NatsTimeoutError):
        await impatient.delete_stream(TASKS_STREAM)
    with pytest.raises(NatsTimeoutError):
        await impatient.purge_stream(EVENTS_STREAM)
    assert await service.refusals()
    assert (await service.js.stream_info(TASKS_STREAM)).config.name == TASKS_STREAM


async def test_llm_workers_share_the_response_store_and_no_one_else_writes_it(connect: Callable) -> None:
    generator = await connect("generator")
    store = await generator.js.create_key_value(bucket=BUCKET)
    await store.put("request-hash", b"stored answer")

    evaluator = await connect("evaluator")
    assert (await (await evaluator.js.key_value(BUCKET)).get("request-hash")).value == b"stored answer"

    parser = await connect("parser")
    await parser.nc.publish(f"$KV.{BUCKET}.request-hash", b"forged")
    assert await parser.refusals()
    assert (await store.get("request-hash")).value == b"stored answer"


async def test_the_spend_bucket_takes_the_trackers_spend_and_the_workers_calls_in_flight(connect: Callable) -> None:
    """What the budget gate and the tracker do (shared.spend), each as its own user; the parser may not forge it."""
    tracker = await connect("tracker")
    spend = await open_spend_bucket(tracker.js, SETTINGS)
    await put_spend(spend, "exp", Spend(cost_usd=0.5, calls=2, calls_by_stage={"generation": 2}))
    for user, stage in (("generator", "generation"), ("evaluator", "evaluation")):
        worker = await connect(user)
        board = await open_spend_bucket(worker.js, SETTINGS)
        assert (await read_spend(board, "exp")).cost_usd == 0.5
        await put_unrecorded(board, "exp", stage, 0.25)
        assert await worker.refusals_so_far() == []
    assert await read_unrecorded(spend, "exp", "evaluation") == 0.25

    parser = await connect("parser")
    await parser.nc.publish(f"$KV.{SETTINGS.spend_bucket}.exp", b'{"cost_usd": 0}')
    assert await parser.refusals()
    assert (await read_spend(spend, "exp")).cost_usd == 0.5


async def test_tracker_receives_dead_letters_of_tasks(connect: Callable) -> None:
    """A task the generator gives up on reaches the tracker through the server's advisory."""
    combiner = await connect("combiner")
    await combiner.js.publish(task_subject("generation", "free"), b"{}")
    generator = await connect("generator")
    subscription = await generator.js.pull_subscribe_bind(worker_consumer("generation", "free"), TASKS_STREAM)
    for _ in range(SETTINGS.max_attempts + 2):
        [message] = await subscription.fetch(1, timeout=2)
        await message.nak()
    with pytest.raises(NatsTimeoutError):
        await subscription.fetch(1, timeout=0.5)  # the server notices the exhausted task on the next pull

    tracker = await connect("tracker")
    dead_letters = await tracker.js.pull_subscribe_bind(DEAD_LETTER_CONSUMER, DEAD_LETTERS_STREAM)
    [advisory] = await _fetch_eventually(dead_letters)
    assert b'"consumer":"generator-free"' in advisory.data.replace(b" ", b"")
    await advisory.ack_sync()
    original = await tracker.js.get_msg(TASKS_STREAM, seq=message.metadata.sequence.stream)
    assert original.subject == task_subject("generation", "free")
    assert await tracker.js.delete_msg(TASKS_STREAM, original.seq)
    assert await tracker.refusals_so_far() == []


async def _fetch_eventually(subscription, attempts: int = 10) -> list:
    for _ in range(attempts):
        try:
            return await subscription.fetch(1, timeout=0.5)
        except NatsTimeoutError:
            await asyncio.sleep(0)
    raise AssertionError("no dead-letter advisory arrived")


@pytest.mark.parametrize("user", SERVICES)
async def test_each_service_can_shape_its_topology_on_an_empty_server(user: str, secured_nats: str) -> None:
    """What each service does at start (shared.topology.ensure_service_topology: its own event
    readers, and its stage's worker consumers), as its own NATS user, on a server nobody has prepared."""
    errors: list[Exception] = []

    async def on_error(error: Exception) -> None:
        errors.append(error)

    stage = next((stage for stage, worker in WORKERS.items() if worker == user), None)
    readers = [spec for spec in owned_consumers(user) if spec.durable in READERS]
    nc = await nats.connect(secured_nats, user=user, password=f"pw-{user}", error_cb=on_error, allow_reconnect=False)
    try:
        js = nc.jetstream(timeout=2)
        workers = await ensure_service_topology(js, SETTINGS, readers=[spec.durable for spec in readers], stage=stage)
        assert {spec.subject for spec in workers} == (
            {task_subject(stage, tier.tier) for tier in DEFAULT_TIERS} if stage else set()
        )
        for spec in readers:
            assert (await js.consumer_info(spec.stream, spec.durable)).config.filter_subject == spec.subject
        await nc.flush()
    finally:
        await nc.close()
    assert not [e for e in errors if "permissions violation" in str(e).lower()]
