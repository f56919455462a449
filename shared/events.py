"""Message contracts between services, and the subjects they travel on.

Every message is self-contained: a worker never needs a file or a database to act on it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter

SCHEMA_VERSION = 1
"""Bumped only by a change old readers cannot take (a field removed or its meaning changed);
adding a field never bumps it, since every reader ignores fields it does not know."""

Stage = Literal["generation", "evaluation"]
STAGES: tuple[Stage, ...] = ("generation", "evaluation")


SAFE_ID_REGEX = r"^[A-Za-z0-9_-]+$"
SafeId = Annotated[str, StringConstraints(pattern=SAFE_ID_REGEX)]
"""Ids become file names and subject tokens: a message carrying `../x` is refused as malformed."""


def utcnow() -> datetime:
    return datetime.now(UTC)


class Contract(BaseModel):
    """On the wire, unknown fields are ignored: a service still on older code keeps working when a
    newer one adds a field. User inputs are checked strictly where they are read (`shared.inputs`)."""

    model_config = ConfigDict(extra="ignore", frozen=True)


class NewerSchema(ValueError):
    """A message written by a DayDream whose contract this one cannot read."""


class Event(Contract):
    schema_version: int = SCHEMA_VERSION
    emitted_at: datetime = Field(default_factory=utcnow)

    subject: ClassVar[str] = ""
    message_kind: ClassVar[str] = ""
    """The `Nats-Msg-Id` prefix: one kind per event type, so two event types never dedup each other."""

    def subject_name(self) -> str:
        return self.subject

    def message_id(self) -> str:
        """Deterministic `Nats-Msg-Id`: the server drops a republished copy inside its window."""
        return message_id(self.message_kind, *self.identity())

    def identity(self) -> tuple[str, ...]:
        """What makes two messages of this type the same message."""
        raise NotImplementedError(f"{type(self).__name__} declares no identity")


# ---- the selection an experiment runs on ---------------------------------------------------


class ConceptSpec(Contract):
    concept_id: SafeId
    name: str
    content: str
    description_level: str
    """The level whose text `content` holds; differs from the requested one after a fallback."""


class TemplateSpec(Contract):
    template_id: SafeId
    template_name: str
    text: str


class EvaluationTemplateSpec(TemplateSpec):
    parser: str
    max_score: int
    allow_decimals: bool = False
    """Whether the scale has decimals: "6.5/10" is then 6.5, else no score ("6.5, rounded to 7" is 7 either way)."""


QUANTIZATIONS = ("int4", "int8", "fp4", "fp6", "fp8", "fp16", "bf16", "fp32", "unknown")
"""OpenRouter's documented quantization levels for `provider.quantizations`."""


class ProviderRouting(Contract):
    """OpenRouter's `provider` preferences for one model: which upstream providers may answer.
    Without `require_parameters`, a provider may silently drop a parameter such as `seed`."""

    order: list[str] = Field(default_factory=list)
    allow_fallbacks: bool | None = None
    require_parameters: bool | None = None
    quantizations: list[str] = Field(default_factory=list)

    def request_field(self) -> dict[str, object]:
        """The `provider` object as sent: only what is set, so an unset preference is OpenRouter's default."""
        return self.model_dump(exclude_none=True, exclude_defaults=True)


class ModelSpec(Contract):
    id: SafeId
    model: str
    provider: str
    tier: SafeId
    temperature: float | None = None
    max_tokens: int | None = None
    routing: ProviderRouting | None = None
    """Sent to OpenRouter only; part of the request hash, since it decides who answers."""
    prompt_price: float | None = None
    completion_price: float | None = None
    """USD per million prompt / completion tokens: for estimates and the budget's calls in flight,
    never sent; what a call cost is what the provider reports."""


class TierSpec(Contract):
    tier: SafeId
    max_concurrent: int
    requests_per_minute: float | None = None


DEFAULT_TIERS = (
    TierSpec(tier="free", max_concurrent=1, requests_per_minute=20),
    TierSpec(tier="paid", max_concurrent=5, requests_per_minute=None),
)
"""What a tier gets when tiers.csv does not name it; also the consumers a worker declares on an empty server."""


class ExperimentSpec(Contract):
    """The resolved, validated selection: what `publish` snapshots and the combiner expands."""

    experiment_id: SafeId
    name: str
    k_max: int
    description_level: str
    replicates: int = 1
    fresh: bool = False
    evaluate_truncated: bool = True
    seed: int | None = None
    concepts: list[ConceptSpec]
    generation_templates: list[TemplateSpec]
    evaluation_templates: list[EvaluationTemplateSpec]
    generation_models: list[ModelSpec]
    evaluation_models: list[ModelSpec]
    tiers: list[TierSpec]
    endpoint: str | None = None
    """The `endpoint_identity` the experiment was published against (never the key)."""
    max_cost: float | None = None
    """The budget in USD: how one publish steers the run, like `fresh`, not part of the selection."""


class EvaluationPlan(Contract):
    """Rides along with each generation so the evaluator can fan out without any state."""

    templates: list[EvaluationTemplateSpec]
    models: list[ModelSpec]
    tiers: list[TierSpec]
    evaluate_truncated: bool = True


class CallParameters(Contract):
    temperature: float | None = None
    max_tokens: int | None = None
    seed: int | None = None


# ---- events ------------------------------------------------------------------------------


class ExperimentRequested(Event):
    subject: ClassVar[str] = "dd.experiment.requested"
    message_kind: ClassVar[str] = "requested"
    spec: ExperimentSpec

    def identity(self) -> tuple[str, ...]:
        return (self.spec.experiment_id,)


class ComboPlanned(Contract):
    combo_id: SafeId
    concept_ids: list[str]


class ExperimentPlanned(Event):
    subject: ClassVar[str] = "dd.experiment.planned"
    message_kind: ClassVar[str] = "planned"
    experiment_id: SafeId
    name: str
    k_max: int
    description_level: str
    replicates: int
    combos: list[ComboPlanned]
    generation_tasks: int
    evaluation_tasks: int
    tasks_by_tier: dict[str, dict[str, int]]
    """stage -> tier -> planned task count."""

    def identity(self) -> tuple[str, ...]:
        return (self.experiment_id,)


class TaskBase(Event):
    """One LLM call to make; what both stages' tasks share."""

    stage: Stage
    experiment_id: SafeId
    task_id: SafeId
    tier: TierSpec
    model: ModelSpec
    parameters: CallParameters
    prompt: str
    replicate: int = 1
    fresh: bool = False
    endpoint: str | None = None
    """The experiment's `endpoint_identity`: a worker serving another endpoint never answers it."""
    max_cost: float | None = None
    """The experiment's budget in USD: no new call starts once its spend plus the calls in flight reach it."""
    combo_id: SafeId
    generation_template_id: SafeId
    generation_model_id: SafeId
    generation_task_id: SafeId

    def subject_name(self) -> str:
        return task_subject(self.stage, self.tier.tier)

    def identity(self) -> tuple[str, ...]:
        return (self.experiment_id, self.task_id)


class GenerationTask(TaskBase):
    message_kind: ClassVar[str] = "gen"
    stage: Literal["generation"] = "generation"
    evaluation_plan: EvaluationPlan | None = None
    """What the evaluator fans out to once this generation is done (not kept in artifacts)."""


class EvaluationTask(TaskBase):
    message_kind: ClassVar[str] = "eval-task"
    stage: Literal["evaluation"] = "evaluation"
    evaluation_template_id: SafeId
    evaluation_model_id: SafeId
    parser: str
    max_score: int
    allow_decimals: bool = False
    generation_truncated: bool = False


TaskCreated = Annotated[GenerationTask | EvaluationTask, Field(discriminator="stage")]
TASK_CREATED: TypeAdapter[GenerationTask | EvaluationTask] = TypeAdapter(TaskCreated)
"""Reads a task of either stage; its `stage` says which."""


class CallRecord(Contract):
    """What one LLM call returned, kept with every result."""

    text: str
    finish_reason: str | None = None
    native_finish_reason: str | None = None
    truncated: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    cost_usd: float | None = None
    latency_s: float = 0.0
    provider: str | None = None
    response_id: str | None = None
    resolved_model: str | None = None
    attempt: int = 1
    cached: bool = False
    request_hash: str
    started_at: datetime
    finished_at: datetime


class _TaskOutcome(Event):
    task: TaskBase

    def identity(self) -> tuple[str, ...]:
        task = self.task
        return (task.experiment_id, task.task_id)


class GenerationDone(_TaskOutcome):
    subject: ClassVar[str] = "dd.generation.done"
    message_kind: ClassVar[str] = "gen-done"
    task: GenerationTask
    call: CallRecord


class EvaluationDone(_TaskOutcome):
    subject: ClassVar[str] = "dd.evaluation.done"
    message_kind: ClassVar[str] = "eval-done"
    task: EvaluationTask
    call: CallRecord


class EvaluationScored(_TaskOutcome):
    subject: ClassVar[str] = "dd.evaluation.scored"
    message_kind: ClassVar[str] = "scored"
    task: EvaluationTask
    parser: str
    score: float | None
    parse_error: str | None = None
    candidates: list[float] = Field(default_factory=list)
    lines_examined: list[str] = Field(default_factory=list)


class TaskFailed(Event):
    subject: ClassVar[str] = "dd.task.failed"
    message_kind: ClassVar[str] = "failed"
    stage: str
    experiment_id: SafeId
    task_id: SafeId
    reason: str
    """A reason class: rate_limited, server_error, timeout, auth, bad_request, poison_message, …"""
    message: str
    attempts: int
    tier: SafeId | None = None
    model_id: SafeId | None = None
    task: TaskCreated | None = None

    def identity(self) -> tuple[str, ...]:
        return (self.experiment_id, self.task_id)


SKIPPED_TRUNCATED_GENERATION = "skipped_truncated_generation"
"""The `TaskFailed.reason` of an evaluation not run because its generation was truncated and the
experiment does not judge truncated generations: a choice, counted as skipped, not as failed."""


# ---- subjects ----------------------------------------------------------------------------

TASK_CREATED_PREFIX = "dd.task.created."
EXPERIMENT_REQUESTED = ExperimentRequested.subject
EXPERIMENT_PLANNED = ExperimentPlanned.subject
GENERATION_DONE = GenerationDone.subject
EVALUATION_DONE = EvaluationDone.subject
EVALUATION_SCORED = EvaluationScored.subject
TASK_FAILED = TaskFailed.subject
TASK_CREATED_WILDCARD = TASK_CREATED_PREFIX + ">"
EVENT_SUBJECTS = (
    EXPERIMENT_REQUESTED,
    EXPERIMENT_PLANNED,
    GENERATION_DONE,
    EVALUATION_DONE,
    EVALUATION_SCORED,
    TASK_FAILED,
)


def task_subject(stage: Stage, tier: str) -> str:
    return f"{TASK_CREATED_PREFIX}{stage}.{tier}"


def message_id(kind: str, *identity: str) -> str:
    return ":".join((kind, *identity))


ModelT = TypeVar("ModelT", bound=BaseModel)


def parse_event(model: type[ModelT] | TypeAdapter[ModelT], body: bytes | str) -> ModelT:
    """Read a message of `model`'s type; one from a newer, incompatible contract is refused by
    name rather than misread."""
    event = model.validate_json(body) if isinstance(model, TypeAdapter) else model.model_validate_json(body)
    version = getattr(event, "schema_version", SCHEMA_VERSION)
    if version > SCHEMA_VERSION:
        raise NewerSchema(f"{type(event).__name__} has schema_version {version}; this DayDream reads up to "
                          f"{SCHEMA_VERSION}: upgrade it")
    return event
