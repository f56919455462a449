"""DayDream's Prometheus series, and the few calls services make to move them.

Labels are bounded on purpose: stages, tiers, model ids, parsers, reasons and experiments,
never task ids; an experiment's series exist only while it runs and for a settable time after it
finished (`ExperimentGauges`). Series a dashboard divides by or alerts on are created at zero as
soon as a model is first used, so "no errors yet" reads as 0 rather than as an empty panel.
No `_created` series: they double every counter's series and no panel reads them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from datetime import UTC, datetime

from faststream.nats.prometheus import NatsPrometheusMiddleware
from nats.js import JetStreamContext
from nats.js.api import ConsumerInfo
from prometheus_client import REGISTRY, Counter, Gauge, Histogram, disable_created_metrics, make_asgi_app

from shared.events import CallRecord, utcnow
from shared.tiers import TierState
from shared.topology import ConsumerSpec

log = logging.getLogger(__name__)
disable_created_metrics()

ZERO_SERIES_ERROR_KINDS = ("rate_limited", "server_error", "timeout")
"""The transient error classes (shared.llm.ErrorKind) that dashboards and the alert single out;
each starts at zero per (stage, model, tier). Other kinds appear when they first happen."""

LATENCY_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 180, 300)

LLM_REQUESTS = Counter(
    "daydream_llm_requests_total",
    "LLM calls by outcome: ok or the error class (shared.llm.ErrorKind)",
    ["stage", "model", "tier", "status"],
)
LLM_REQUEST_DURATION = Histogram(
    "daydream_llm_request_duration_seconds",
    "Wall time of successful, uncached LLM calls",
    ["stage", "model", "tier"],
    buckets=LATENCY_BUCKETS_S,
)
LLM_TOKENS = Counter(
    "daydream_llm_tokens_total",
    "Tokens billed by the provider, by direction: prompt, completion (the answer's text) and "
    "reasoning; the directions add up to the billed total",
    ["stage", "model", "direction"],
)
LLM_COST = Counter("daydream_llm_cost_usd_total", "Provider-reported cost in USD", ["stage", "model"])
LLM_RETRIES = Counter(
    "daydream_llm_retries_total",
    "Failed LLM calls that will be tried again, by error class",
    ["stage", "model", "reason"],
)
LLM_CACHE_HITS = Counter(
    "daydream_llm_cache_hits_total",
    "LLM calls answered from the response store instead of the provider",
    ["stage", "model"],
)
SCORES_PARSED = Counter(
    "daydream_scores_parsed_total",
    "Judge answers parsed, by parser and result (ok or the parse error reason)",
    ["parser", "result"],
)
TASKS_FAILED = Counter(
    "daydream_tasks_failed_total",
    "Tasks given up on after bounded retries, by stage and reason",
    ["stage", "reason"],
)
CONSUMER_PENDING = Gauge(
    "daydream_consumer_pending",
    "Messages waiting for a durable consumer (queue depth)",
    ["consumer", "stream"],
)
CONSUMER_ACK_PENDING = Gauge(
    "daydream_consumer_ack_pending",
    "Messages delivered and not yet acknowledged (in flight)",
    ["consumer"],
)
CONSUMER_MAX_ACK_PENDING = Gauge(
    "daydream_consumer_max_ack_pending",
    "The consumer's in-flight cap: the tier's concurrency limit across all replicas",
    ["consumer"],
)
EXPERIMENT_TASKS = Gauge(
    "daydream_experiment_tasks",
    "Tasks of an experiment by stage and state (planned, done, failed)",
    ["experiment", "stage", "state"],
)
EXPERIMENT_COST = Gauge("daydream_experiment_cost_usd", "Cost of an experiment so far, in USD", ["experiment"])
TIER_EFFECTIVE_CAP = Gauge(
    "daydream_tier_effective_cap", "Calls a tier may have in flight now (halved on 429s, regained on success)", ["tier"]
)
TIER_STOPPED = Gauge("daydream_tier_stopped", "1 while a tier's circuit is open (refused key, quota, unreachable)",
                     ["tier"])

DAYDREAM_METRICS = (
    LLM_REQUESTS,
    LLM_REQUEST_DURATION,
    LLM_TOKENS,
    LLM_COST,
    LLM_RETRIES,
    LLM_CACHE_HITS,
    SCORES_PARSED,
    TASKS_FAILED,
    CONSUMER_PENDING,
    CONSUMER_ACK_PENDING,
    CONSUMER_MAX_ACK_PENDING,
    EXPERIMENT_TASKS,
    EXPERIMENT_COST,
    TIER_EFFECTIVE_CAP,
    TIER_STOPPED,
)


def _create_zero_series(stage: str, model: str, tier: str) -> None:
    for kind in ZERO_SERIES_ERROR_KINDS:
        LLM_REQUESTS.labels(stage, model, tier, kind)
        LLM_RETRIES.labels(stage, model, kind)
        TASKS_FAILED.labels(stage, kind)
    LLM_CACHE_HITS.labels(stage, model)
    LLM_COST.labels(stage, model)


def observe_llm_call(stage: str, model: str, tier: str, record: CallRecord) -> None:
    """Count one call the provider answered."""
    _create_zero_series(stage, model, tier)
    LLM_REQUESTS.labels(stage, model, tier, "ok").inc()
    LLM_REQUEST_DURATION.labels(stage, model, tier).observe(record.latency_s)
    LLM_TOKENS.labels(stage, model, "prompt").inc(record.prompt_tokens)
    # Providers count reasoning inside completion_tokens; the series keep them apart so a sum is right.
    LLM_TOKENS.labels(stage, model, "completion").inc(max(record.completion_tokens - record.reasoning_tokens, 0))
    LLM_TOKENS.labels(stage, model, "reasoning").inc(record.reasoning_tokens)
    LLM_COST.labels(stage, model).inc(record.cost_usd or 0.0)


def observe_llm_error(stage: str, model: str, tier: str, error_kind: str, retried: bool) -> None:
    """Count one failed call; `error_kind` is the client's error class (e.g. rate_limited for 429)."""
    _create_zero_series(stage, model, tier)
    LLM_REQUESTS.labels(stage, model, tier, error_kind).inc()
    if retried:
        LLM_RETRIES.labels(stage, model, error_kind).inc()


def observe_cache_hit(stage: str, model: str) -> None:
    """A task answered from the response store: no provider call, no cost, no latency."""
    LLM_CACHE_HITS.labels(stage, model).inc()


def observe_score(parser: str, result: str) -> None:
    """`result` is "ok" or the parse error reason (a short class, not the judge's text)."""
    SCORES_PARSED.labels(parser, result).inc()


def observe_task_failed(stage: str, reason: str) -> None:
    TASKS_FAILED.labels(stage, reason).inc()


def set_experiment_progress(experiment_id: str, stage: str, planned: int, done: int, failed: int) -> None:
    for state, count in (("planned", planned), ("done", done), ("failed", failed)):
        EXPERIMENT_TASKS.labels(experiment_id, stage, state).set(count)


def observe_tier_state(state: TierState) -> None:
    TIER_EFFECTIVE_CAP.labels(state.tier).set(state.effective_cap)
    TIER_STOPPED.labels(state.tier).set(1 if state.open_circuit(utcnow()) else 0)


def set_experiment_cost(experiment_id: str, cost_usd: float) -> None:
    EXPERIMENT_COST.labels(experiment_id).set(cost_usd)


class ExperimentGauges:
    """Which experiments have `daydream_experiment_*` series: the running ones and those finished
    less than `keep_s` ago. Without a bound every experiment ever run kept ~10 series for good."""

    def __init__(self, keep_s: float) -> None:
        self.keep_s = keep_s

    def shown(self, experiment_id: str, finished_at: datetime | None, now: datetime) -> bool:
        """False (and its series gone) once the experiment finished more than `keep_s` ago."""
        if finished_at is None:
            return True
        if finished_at.tzinfo is None:  # SQLite hands back naive UTC
            finished_at = finished_at.replace(tzinfo=UTC)
        if (now - finished_at).total_seconds() <= self.keep_s:
            return True
        EXPERIMENT_TASKS.remove_by_labels({"experiment": experiment_id})
        EXPERIMENT_COST.remove_by_labels({"experiment": experiment_id})
        return False


def record_consumer_info(info: ConsumerInfo) -> None:
    consumer = info.name
    CONSUMER_PENDING.labels(consumer, info.stream_name).set(info.num_pending or 0)
    CONSUMER_ACK_PENDING.labels(consumer).set(info.num_ack_pending or 0)
    CONSUMER_MAX_ACK_PENDING.labels(consumer).set(info.config.max_ack_pending or 0)


async def refresh_consumer_gauges(js: JetStreamContext, specs: Iterable[ConsumerSpec]) -> None:
    """One pass over the consumers; a consumer that cannot be read keeps its last values."""
    for spec in specs:
        try:
            record_consumer_info(await js.consumer_info(spec.stream, spec.durable))
        except Exception as error:
            log.warning("consumer info for %s/%s unavailable: %s", spec.stream, spec.durable, error)


async def poll_consumers(js: JetStreamContext, specs: Iterable[ConsumerSpec], interval_s: float = 5.0) -> None:
    """Run as a background task for the consumers a service owns; ends only when cancelled."""
    specs = list(specs)
    while True:
        await refresh_consumer_gauges(js, specs)
        await asyncio.sleep(interval_s)


def metrics_asgi_app():
    """The `/metrics` endpoint for `AsgiFastStream(asgi_routes=[("/metrics", metrics_asgi_app())])`."""
    return make_asgi_app(REGISTRY)


def faststream_prometheus_middleware(app_name: str = "daydream") -> NatsPrometheusMiddleware:
    """FastStream's per-handler series (`faststream_*`) in the same registry as ours."""
    return NatsPrometheusMiddleware(registry=REGISTRY, app_name=app_name)
