"""What an experiment will cost and how long it must take, known before anything is published.

Token counts are assumptions, said with the estimate: a prompt is its rendered length / 4 tokens;
a completion is the model's `max_tokens` (an upper bound) or `DAYDREAM_ESTIMATE_COMPLETION_TOKENS`;
a judge's prompt is its template rendered around a generation of the writer's assumed length.
Prices are llm_models.csv's `prompt_price` / `completion_price` (USD per million tokens); a
`:free` model without prices costs nothing; any other model without prices is counted as unpriced.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

from shared.events import ExperimentSpec, GenerationTask, ModelSpec
from shared.prompts import render_evaluation_prompt
from shared.settings import Settings

CHARS_PER_TOKEN = 4
FREE_SUFFIX = ":free"


def prompt_tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def completion_tokens(model: ModelSpec, settings: Settings) -> int:
    return model.max_tokens or settings.estimate_completion_tokens


def call_cost(model: ModelSpec, prompt: int, completion: int) -> float | None:
    """USD for one call of that many tokens; None when the model has no price."""
    if model.prompt_price is None or model.completion_price is None:
        return 0.0 if is_free(model) else None
    return (prompt * model.prompt_price + completion * model.completion_price) / 1e6


def is_free(model: ModelSpec) -> bool:
    return model.model.endswith(FREE_SUFFIX)


@dataclass(frozen=True)
class TierTime:
    """The least time a tier's calls can take: its rate spaces them 60/rpm seconds apart, and its
    cap lets `max_concurrent` run at once, each taking the assumed seconds per call."""

    tier: str
    calls: int
    max_concurrent: int
    requests_per_minute: float | None
    call_s: float

    @property
    def rate_s(self) -> float:
        return self.calls * 60.0 / self.requests_per_minute if self.requests_per_minute else 0.0

    @property
    def cap_s(self) -> float:
        return math.ceil(self.calls / self.max_concurrent) * self.call_s

    @property
    def minimum_s(self) -> float:
        return max(self.rate_s, self.cap_s)


@dataclass
class Estimate:
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    """Of the priced calls only; `unpriced_calls` are not in it."""
    unpriced_calls: int = 0
    unpriced_models: set[str] = field(default_factory=set)
    free_calls: int = 0
    tiers: list[TierTime] = field(default_factory=list)
    completion_default: int = 0

    @property
    def minimum_s(self) -> float:
        """Tiers run side by side: the slowest one bounds the experiment."""
        return max((tier.minimum_s for tier in self.tiers), default=0.0)

    def add(self, model: ModelSpec, calls: int, prompt: int, completion: int) -> None:
        """`calls` calls of `model`, each of `prompt` + `completion` tokens."""
        self.calls += calls
        self.prompt_tokens += calls * prompt
        self.completion_tokens += calls * completion
        self.free_calls += calls if is_free(model) else 0
        cost = call_cost(model, prompt, completion)
        if cost is None:
            self.unpriced_calls += calls
            self.unpriced_models.add(model.id)
        else:
            self.cost_usd += calls * cost

    def assumptions(self) -> str:
        return (f"prompt tokens = rendered prompt length / {CHARS_PER_TOKEN}; completion tokens = the model's "
                f"max_tokens, else {self.completion_default} (DAYDREAM_ESTIMATE_COMPLETION_TOKENS); a judge reads "
                "its template around a generation of that length")

    def free_quota_warning(self, settings: Settings) -> str | None:
        quota = settings.free_daily_requests
        if self.free_calls <= quota:
            return None
        return (f"{self.free_calls:,} calls go to ':free' models, more than OpenRouter's {quota:,} free requests a "
                f"day (DAYDREAM_FREE_DAILY_REQUESTS; 1000 once you have bought $10 of credits): past that, free "
                f"calls fail as rate limited until the next UTC day, so this needs at least "
                f"{math.ceil(self.free_calls / quota) if quota else '∞'} days")

    def confirmation_reason(self, settings: Settings) -> str | None:
        """Why `run` should ask before starting, or None."""
        reasons = []
        if self.calls > settings.confirm_calls:
            reasons.append(f"{self.calls:,} LLM calls, more than {settings.confirm_calls:,} (DAYDREAM_CONFIRM_CALLS)")
        if self.cost_usd > settings.confirm_cost_usd:
            reasons.append(f"an estimated ${self.cost_usd:,.2f}, more than ${settings.confirm_cost_usd:,.2f} "
                           "(DAYDREAM_CONFIRM_COST_USD)")
        return " and ".join(reasons) or None


def estimate(spec: ExperimentSpec, generations: list[GenerationTask], settings: Settings) -> Estimate:
    """Cost, tokens and least time of the planned calls, from the rendered generation prompts."""
    result = Estimate(completion_default=settings.estimate_completion_tokens)
    calls_by_tier: dict[str, int] = defaultdict(int)
    evaluation_prompts = {
        template.template_id: prompt_tokens(render_evaluation_prompt(template, "")) for template in spec.evaluation_templates
    }
    writers: dict[str, list[int]] = defaultdict(list)
    models = {model.id: model for model in spec.generation_models}
    for task in generations:
        writers[task.model.id].append(prompt_tokens(task.prompt))
    for model_id, prompts in writers.items():
        writer = models[model_id]
        written = completion_tokens(writer, settings)
        for prompt in prompts:
            result.add(writer, 1, prompt, written)
        calls_by_tier[writer.tier] += len(prompts)
        for judge in spec.evaluation_models:
            for template_prompt in evaluation_prompts.values():
                result.add(judge, len(prompts), template_prompt + written, completion_tokens(judge, settings))
            calls_by_tier[judge.tier] += len(prompts) * len(evaluation_prompts)
    tiers = {tier.tier: tier for tier in spec.tiers}
    result.tiers = [
        TierTime(name, calls, tiers[name].max_concurrent, tiers[name].requests_per_minute, settings.estimate_call_s)
        for name, calls in sorted(calls_by_tier.items())
    ]
    return result
