"""What the benchmarks share: a synthetic experiment of any size, an embedded stack shaped to its
tiers, per-process CPU and memory from /proc, events read back off the bus, and reporting.

The benchmarks measure; they assert nothing. Each one prints a JSON object and a rich table and
keeps the JSON in bench/results/.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import nats
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from rich.console import Console
from rich.table import Table

from daydream.publish_cmd import publish_experiment as request_experiment
from daydream.stack import SERVICES, EmbeddedStack
from services.tracker.db import engine_for
from services.tracker.recorder import Tracker
from shared.events import (
    ConceptSpec,
    ExperimentSpec,
    ModelSpec,
    TemplateSpec,
    TierSpec,
)
from shared.inputs import load_experiment
from shared.settings import Settings
from shared.tasks import planned_counts
from shared.topology import EVENTS_STREAM

REPO = Path(__file__).resolve().parent.parent
EXAMPLE_RAW = REPO / "data" / "1_raw"
RESULTS = REPO / "bench" / "results"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
console = Console()


# ---- the experiment ------------------------------------------------------------------------


THROUGHPUT_TIER = TierSpec(tier="bench", max_concurrent=16, requests_per_minute=None)
"""One generous tier, so the overhead and scale runs measure the system, not a cap."""

def synthetic_spec(
    experiment_id: str,
    *,
    concepts: int,
    k_max: int,
    generation_templates: int,
    generation_models: int,
    replicates: int = 1,
    evaluation_templates: int = 2,
    evaluation_models: int = 2,
    tier: TierSpec,
) -> ExperimentSpec:
    """The example's templates (so prompts render and judges answer `SCORE: N`) over made-up
    concepts and fake models: any size, no input files to write."""
    example = load_experiment(EXAMPLE_RAW, experiment_id="bench-template").spec
    writer, judge = example.generation_templates[0], example.evaluation_templates[0]
    level = example.description_level
    return ExperimentSpec(
        experiment_id=experiment_id,
        name=f"bench {experiment_id}",
        k_max=k_max,
        description_level=level,
        replicates=replicates,
        concepts=[
            ConceptSpec(concept_id=f"concept-{i:04d}", name=f"Concept Number {i}",
                        content=f"A made-up concept, number {i}, for load testing.", description_level=level)
            for i in range(concepts)
        ],
        generation_templates=[
            TemplateSpec(template_id=f"writer-{i}", template_name=f"Writer {i}", text=f"{writer.text}\n(variant {i})")
            for i in range(generation_templates)
        ],
        evaluation_templates=[
            judge.model_copy(update={"template_id": f"judge-{i}", "text": f"{judge.text}\n(variant {i})"})
            for i in range(evaluation_templates)
        ],
        generation_models=[fake_model(f"writer{i}", tier) for i in range(generation_models)],
        evaluation_models=[fake_model(f"judge{i}", tier) for i in range(evaluation_models)],
        tiers=[tier],
    )


def fake_model(model_id: str, tier: TierSpec) -> ModelSpec:
    return ModelSpec(id=model_id, model=f"fake/{model_id}", provider="fake", tier=tier.tier)


def spec_for_generations(experiment_id: str, generations: int, tier: TierSpec) -> ExperimentSpec:
    """20 combos (6 concepts, k=3) x 5 writer templates x 5 writer models per replicate when the
    count allows it; otherwise one concept per combo, as many concepts as generations."""
    if generations % 500 == 0:
        return synthetic_spec(experiment_id, concepts=6, k_max=3, generation_templates=5, generation_models=5,
                              replicates=generations // 500, tier=tier)
    return synthetic_spec(experiment_id, concepts=generations, k_max=1, generation_templates=1,
                          generation_models=1, tier=tier)


def planned_calls(spec: ExperimentSpec) -> tuple[int, int]:
    counts = planned_counts(spec)
    return counts.generation_tasks, counts.evaluation_tasks


# ---- the stack -----------------------------------------------------------------------------


@contextmanager
def running_stack(name: str, tiers: list[TierSpec], *, latency_s: float, services: tuple[str, ...] = SERVICES,
                  keep: bool = False) -> Iterator[EmbeddedStack]:
    """nats-server, the fake LLM, the topology shaped to `tiers`, then the services; every process
    is stopped and the data directory removed (unless `keep`) whatever happens."""
    data = Path(tempfile.mkdtemp(prefix=f"daydream-bench-{name}-"))
    stack = EmbeddedStack(data, llm_base_url=None, fake_llm_latency=latency_s)
    for stop_signal in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop_signal, _exit_cleanly)
    try:
        stack.start_nats()
        stack.start_fake_llm()
        stack.declare_topology(Settings(), tiers)
        stack.start_services(services)
        yield stack
    finally:
        stack.stop()
        if keep:
            console.print(f"data kept in {data}")
        else:
            shutil.rmtree(data, ignore_errors=True)


def _exit_cleanly(signum: int, _frame) -> None:
    """A signal becomes an exception, so the `finally` that stops the stack runs (a background
    job's SIGINT is otherwise ignored, and SIGTERM would end Python on the spot)."""
    raise SystemExit(128 + signum)


def publish_experiment(stack: EmbeddedStack, spec: ExperimentSpec) -> float:
    """Request the experiment as `daydream publish` does; returns when the publish started."""
    published_at = time.time()
    asyncio.run(request_experiment(Settings(nats_url=stack.nats_url), spec))
    return published_at


def tracker_for(stack: EmbeddedStack) -> Tracker:
    return Tracker(stack.data, engine_for(stack.data))


def wait_finished(tracker: Tracker, experiment_id: str, stack: EmbeddedStack, timeout_s: float, poll_s: float = 1.0,
                  on_poll=None) -> bool:
    """Poll the tables (as `daydream run` does) until the experiment is finished or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        progress = tracker.progress(experiment_id)
        if on_poll:
            on_poll(progress)
        if progress.finished:
            return True
        dead = stack.dead_services()
        if dead:
            raise RuntimeError(f"service(s) {', '.join(dead)} died; logs in {stack.logs}")
        time.sleep(poll_s)
    return False


def fake_stats(stack: EmbeddedStack) -> dict[str, Any]:
    """The fake LLM's counters per model (calls, peak in flight); per-request detail dropped."""
    stats = stack.fake_llm_stats()
    stats.pop("requests", None)
    return stats


# ---- processes -------------------------------------------------------------------------------


def stack_pids(stack: EmbeddedStack) -> dict[str, int]:
    pids = {name: process.pid for name, process in stack.processes.items()}
    for name, process in (("nats-server", stack.nats.process), ("fake-llm", stack.fake_llm)):
        if process is not None:
            pids[name] = process.pid
    return pids


def nats_message_counts(stack: EmbeddedStack) -> dict[str, int]:
    """Messages into and out of the nats-server since it started (its `/varz`): every publish, ack,
    pull request and reply a call costs, counted where a client cannot hide one."""
    node = next(iter(stack.nats_nodes().values()))
    varz = httpx.get(f"http://127.0.0.1:{node.monitor_port}/varz", timeout=5.0).json()
    return {"in_msgs": varz["in_msgs"], "out_msgs": varz["out_msgs"]}


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process, from /proc/<pid>/stat (fields 14 and 15)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def cpu_snapshot(pids: dict[str, int]) -> dict[str, float]:
    return {name: cpu_seconds(pid) for name, pid in pids.items()}


def rss_snapshot(pids: dict[str, int]) -> dict[str, float]:
    return {name: round(rss_mib(pid), 1) for name, pid in pids.items()}


def driver_cpu_seconds() -> float:
    return cpu_seconds(os.getpid())


# ---- events ----------------------------------------------------------------------------------


async def _read_subject(nats_url: str, subject: str) -> list[dict[str, Any]]:
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        sub = await js.pull_subscribe(subject, stream=EVENTS_STREAM,
                                      config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE,
                                                            inactive_threshold=30))
        pending = (await sub.consumer_info()).num_pending or 0
        events: list[dict[str, Any]] = []
        while len(events) < pending:
            try:
                batch = await sub.fetch(500, timeout=2)
            except (TimeoutError, nats.errors.TimeoutError):
                break
            events.extend(json.loads(msg.data) for msg in batch)
        return events
    finally:
        await nc.close()


def read_events(nats_url: str, subject: str) -> list[dict[str, Any]]:
    """Every event on `subject` kept in the events stream."""
    return asyncio.run(_read_subject(nats_url, subject))


def moment(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    ordered = sorted(values)
    cuts = statistics.quantiles(ordered, n=100, method="inclusive") if len(ordered) > 1 else [ordered[0]] * 99
    return {"n": len(ordered), "p50_s": round(cuts[49], 3), "p95_s": round(cuts[94], 3),
            "max_s": round(ordered[-1], 3)}


# ---- reporting -------------------------------------------------------------------------------


def report(name: str, result: dict[str, Any], rows: list[tuple[str, str]]) -> Path:
    """Print the JSON and a table, and keep the JSON in bench/results/<name>-<time>.json."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=2), encoding="utf-8")
    print(json.dumps(result, indent=2))
    table = Table(title=f"{name} ({path.name})")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for figure, value in rows:
        table.add_row(figure, value)
    console.print(table)
    return path


def machine() -> dict[str, Any]:
    with open("/proc/meminfo") as meminfo:
        total_kib = int(meminfo.readline().split()[1])
    return {"cpus": os.cpu_count(), "memory_gib": round(total_kib / 1024 / 1024, 1),
            "load_average_at_start": os.getloadavg()[0]}
