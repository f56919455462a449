"""deploy/nats/nats.conf on a real nats-server: each service user can do its own work and is
refused everything else.

The server reports a refused publish or subscription asynchronously (-ERR to the error callback),
so every refusal is checked after a flush (a PING/PONG round trip the server answers only after
the -ERR) and, for publishes, also by the stream not having grown.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import nats
import pytest
from nats.errors import TimeoutError as NatsTimeoutError

from daydream.nats_process import NatsServer
from shared.events import (
    EVALUATION_DONE,
    EVALUATION_SCORED,
    EXPERIMENT_PLANNED,
    EXPERIMENT_REQUESTED,
    GENERATION_DONE,
    TASK_FAILED,
    task_subject,
)
from shared.settings import Settings
from shared.topology import (
    COMBINER_CONSUMER,
    DEAD_LETTER_CONSUMER,
    DEAD_LETTERS_STREAM,
    DEFAULT_TIERS,
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

pytestmark = pytest.mark.integration

NATS_CONF = Path(__file__).resolve().parents[2] / "deploy" / "nats" / "nats.conf"
USERS = ("daydream", "combiner", "generator", "evaluator", "parser", "tracker")
BUCKET = Settings().response_store_bucket
SETTINGS = Settings(max_attempts=1)

PUBLISHES = {
    "daydream": [EXPERIMENT_REQUESTED, task_subject("generation", "paid"), task_subject("evaluation", "free")],
    "combiner": [EXPERIMENT_PLANNED, task_subject("generation", "free"), task_subject("generation", "paid"), TASK_FAILED],
    "generator": [GENERATION_DONE, TASK_FAILED],
    "evaluator": [task_subject("evaluation", "free"), task_subject("evaluation", "paid"), EVALUATION_DONE, TASK_FAILED],
    "parser": [EVALUATION_SCORED, TASK_FAILED],
    "tracker": [TASK_FAILED],
}
FORBIDDEN_PUBLISHES = [
    ("parser", task_subject("generation", "paid")),
    ("parser", EXPERIMENT_REQUESTED),
    ("generator", EVALUATION_SCORED),
    ("generator", task_subject("evaluation", "paid")),
    ("evaluator", task_subject("generation", "free")),
    ("evaluator", EXPERIMENT_PLANNED),
    ("combiner", GENERATION_DONE),
    ("tracker", EXPERIMENT_REQUESTED),
    ("daydream", GENERATION_DONE),
]


def owned_consumers(user: str) -> list[ConsumerSpec]:
    """The durable consumers a service pulls from, by the naming of shared.topology."""
    specs = consumer_specs(SETTINGS, DEFAULT_TIERS)
    prefixes = {"combiner": ("combiner",), "generator": ("generator-",), "evaluator": ("evaluator-",),
                "parser": ("parser",), "tracker": ("tracker-",)}[user]
    return [spec for spec in specs if spec.durable.startswith(prefixes)]


def publisher_of(subject: str) -> str:
    return next(user for user in USERS[1:] + ("daydream",) if subject in PUBLISHES[user])


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

    async def refusals(self, timeout_s: float = 3.0) -> list[str]:
        """Waits for the first refusal: the server's -ERR may trail the flush's PONG."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while not (found := await self.refusals_so_far()):
            if asyncio.get_running_loop().time() > deadline:
                return []
            await asyncio.sleep(0.02)
        return found


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
    await ensure_topology(admin.js, SETTINGS)
    yield as_user
    for session in sessions:
        await session.nc.close()


async def test_wrong_password_is_refused(secured_nats: str) -> None:
    with pytest.raises(Exception, match="[Aa]uthorization"):
        await nats.connect(secured_nats, user="parser", password="nope", allow_reconnect=False,
                           max_reconnect_attempts=0, connect_timeout=2)


@pytest.mark.parametrize("user", ["combiner", "generator", "evaluator", "parser", "tracker"])
async def test_service_declares_publishes_and_pulls_its_own(user: str, connect: Callable) -> None:
    service = await connect(user)
    await ensure_streams(service.js, SETTINGS)
    assert {info.name for info in await service.js.consumers_info(TASKS_STREAM)} >= {worker_consumer("generation", "free")}
    for subject in PUBLISHES[user]:
        ack = await service.js.publish(subject, b"{}")
        assert ack.stream in (TASKS_STREAM, EVENTS_STREAM)

    for spec in owned_consumers(user):
        await service.js.add_consumer(spec.stream, consumer_config(spec, SETTINGS))
        if spec.stream == DEAD_LETTERS_STREAM:
            continue
        feeder = await connect(publisher_of(spec.subject))
        await feeder.js.publish(spec.subject, b"{}")
        subscription = await service.js.pull_subscribe_bind(spec.durable, spec.stream)
        [message] = await subscription.fetch(1, timeout=2)
        await message.in_progress()
        await message.ack_sync()
        info = await service.js.consumer_info(spec.stream, spec.durable)
        assert info.num_ack_pending == 0, f"{user} could not ack on {spec.durable}"

    assert await service.refusals_so_far() == []


@pytest.mark.parametrize(("user", "subject"), FORBIDDEN_PUBLISHES)
async def test_service_is_refused_subjects_it_does_not_own(user: str, subject: str, connect: Callable) -> None:
    service = await connect(user)
    admin = await connect("daydream")
    stream = TASKS_STREAM if subject.startswith("dd.task.created.") else EVENTS_STREAM
    before = (await admin.js.stream_info(stream)).state.messages

    await service.nc.publish(subject, b"{}")

    assert any(subject in refusal for refusal in await service.refusals())
    assert (await admin.js.stream_info(stream)).state.messages == before


@pytest.mark.parametrize(("user", "subject"), [("parser", "dd.>"), ("generator", GENERATION_DONE), ("tracker", "$JS.ACK.>")])
async def test_service_may_not_listen_in_on_core_subjects(user: str, subject: str, connect: Callable) -> None:
    service = await connect(user)
    await service.nc.subscribe(subject)
    assert any(f'subscription to "{subject}"'.lower() in refusal.lower() for refusal in await service.refusals())


@pytest.mark.parametrize(
    ("user", "stream", "consumer"),
    [
        ("generator", TASKS_STREAM, worker_consumer("evaluation", "paid")),
        ("evaluator", TASKS_STREAM, worker_consumer("generation", "free")),
        ("parser", EVENTS_STREAM, "tracker-evaluation-scored"),
        ("combiner", EVENTS_STREAM, "parser"),
    ],
)
async def test_service_cannot_declare_another_services_consumer(
    user: str, stream: str, consumer: str, connect: Callable
) -> None:
    service = await connect(user)
    spec = next(spec for spec in consumer_specs(SETTINGS, DEFAULT_TIERS) if spec.durable == consumer)
    with pytest.raises(NatsTimeoutError):
        await service.js.add_consumer(stream, consumer_config(spec, SETTINGS), timeout=0.5)
    assert await service.refusals()


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


SERVICE_STARTUP = {
    "combiner": {"readers": [COMBINER_CONSUMER]},
    "generator": {"stage": "generation"},
    "evaluator": {"readers": [FANOUT_CONSUMER], "stage": "evaluation"},
    "parser": {"readers": [PARSER_CONSUMER]},
    "tracker": {"readers": [*TRACKER_SUBJECTS, DEAD_LETTER_CONSUMER]},
}


@pytest.mark.parametrize("user", list(SERVICE_STARTUP))
async def test_each_service_can_shape_its_topology_on_an_empty_server(user: str, secured_nats: str) -> None:
    """What each service really does at start (shared.topology.ensure_service_topology), as its
    own NATS user, on a server nobody has prepared."""
    errors: list[Exception] = []

    async def on_error(error: Exception) -> None:
        errors.append(error)

    nc = await nats.connect(secured_nats, user=user, password=f"pw-{user}", error_cb=on_error, allow_reconnect=False)
    try:
        js = nc.jetstream(timeout=2)
        workers = await ensure_service_topology(js, SETTINGS, **SERVICE_STARTUP[user])
        stage = SERVICE_STARTUP[user].get("stage")
        assert {spec.subject for spec in workers} == (
            {task_subject(stage, tier.tier) for tier in DEFAULT_TIERS} if stage else set()
        )
        await nc.flush()
    finally:
        await nc.close()
    assert not [e for e in errors if "permissions violation" in str(e).lower()]
