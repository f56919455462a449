"""The estimate `plan` and `run` print before launch: cost from llm_models.csv's prices and the
stated token assumptions, the least time the tiers' caps and rates allow, the free-quota warning
and when `run` must ask."""

from __future__ import annotations

import pytest

from shared.estimate import estimate
from shared.events import ConceptSpec, EvaluationTemplateSpec, ExperimentSpec, ModelSpec, TemplateSpec, TierSpec
from shared.settings import Settings
from shared.tasks import generation_tasks

SETTINGS = Settings(estimate_completion_tokens=100, estimate_call_s=10.0, free_daily_requests=50,
                    confirm_calls=1000, confirm_cost_usd=5.0)
PROMPT = "x" * 400
"""A generation prompt of exactly 100 tokens at 4 characters a token."""
JUDGE_TEMPLATE = "y" * 200 + "{{ response }}"
"""50 tokens around the generation."""


def spec(writer: ModelSpec, judge: ModelSpec, tiers: list[TierSpec], concepts: int = 3) -> ExperimentSpec:
    return ExperimentSpec(
        experiment_id="est", name="est", k_max=1, description_level="sentence",
        concepts=[ConceptSpec(concept_id=f"c{i}", name=f"C{i}", content="-", description_level="sentence")
                  for i in range(concepts)],
        generation_templates=[TemplateSpec(template_id="t", template_name="t", text=PROMPT)],
        evaluation_templates=[EvaluationTemplateSpec(template_id="j", template_name="j", text=JUDGE_TEMPLATE,
                                                     parser="in_last_line", max_score=10)],
        generation_models=[writer], evaluation_models=[judge], tiers=tiers,
    )


def of(experiment: ExperimentSpec, settings: Settings = SETTINGS):
    return estimate(experiment, generation_tasks(experiment), settings)


PAID = TierSpec(tier="paid", max_concurrent=2)
FREE = TierSpec(tier="free", max_concurrent=1, requests_per_minute=20)
WRITER = ModelSpec(id="w", model="v/writer", provider="openrouter", tier="paid", max_tokens=200,
                   prompt_price=1.0, completion_price=10.0)
JUDGE = ModelSpec(id="j", model="v/judge", provider="openrouter", tier="paid", prompt_price=2.0, completion_price=4.0)


def test_cost_follows_the_prices_and_the_stated_token_assumptions() -> None:
    found = of(spec(WRITER, JUDGE, [PAID]))
    # 3 generations: 100 prompt tokens, max_tokens 200 written. 3 evaluations: 50 + the 200 written, 100 default.
    assert (found.calls, found.prompt_tokens, found.completion_tokens) == (6, 3 * 100 + 3 * 250, 3 * 200 + 3 * 100)
    writing = 3 * (100 * 1.0 + 200 * 10.0) / 1e6
    judging = 3 * (250 * 2.0 + 100 * 4.0) / 1e6
    assert found.cost_usd == pytest.approx(writing + judging)
    assert found.unpriced_calls == 0
    assert "max_tokens, else 100" in found.assumptions()


def test_a_model_without_prices_is_unpriced_not_free_unless_it_is_a_free_variant() -> None:
    unpriced = JUDGE.model_copy(update={"prompt_price": None, "completion_price": None})
    found = of(spec(WRITER, unpriced, [PAID]))
    assert (found.unpriced_calls, found.unpriced_models) == (3, {"j"})
    assert found.cost_usd == pytest.approx(3 * (100 * 1.0 + 200 * 10.0) / 1e6)
    free = unpriced.model_copy(update={"model": "v/judge:free"})
    found = of(spec(WRITER, free, [PAID]))
    assert (found.unpriced_calls, found.free_calls) == (0, 3)


def test_least_time_is_the_slowest_tier_and_the_tier_is_shared_by_writing_and_judging() -> None:
    writer = WRITER.model_copy(update={"tier": "free"})
    judge = JUDGE.model_copy(update={"tier": "free"})
    found = of(spec(writer, judge, [FREE], concepts=10))
    (tier,) = found.tiers
    assert tier.calls == 20
    assert tier.rate_s == pytest.approx(20 * 60 / 20)  # one call every 3 s
    assert tier.cap_s == pytest.approx(20 * 10.0)  # one at a time, 10 s each
    assert found.minimum_s == pytest.approx(200.0)
    split = of(spec(writer, JUDGE, [FREE, PAID], concepts=10))
    assert {t.tier: t.calls for t in split.tiers} == {"free": 10, "paid": 10}
    assert split.minimum_s == pytest.approx(max(10 * 3.0, 10 * 10.0, 5 * 10.0))


def test_free_calls_over_the_daily_quota_are_warned_about() -> None:
    free_writer = WRITER.model_copy(update={"model": "v/writer:free"})
    assert of(spec(free_writer, JUDGE, [PAID], concepts=50)).free_quota_warning(SETTINGS) is None
    warning = of(spec(free_writer, JUDGE, [PAID], concepts=51)).free_quota_warning(SETTINGS)
    assert warning is not None and "51 calls" in warning and "50 free requests a day" in warning


def test_run_asks_over_either_threshold() -> None:
    small = of(spec(WRITER, JUDGE, [PAID]))
    assert small.confirmation_reason(SETTINGS) is None
    assert "6 LLM calls" in small.confirmation_reason(SETTINGS.model_copy(update={"confirm_calls": 5}))
    assert "estimated $" in small.confirmation_reason(SETTINGS.model_copy(update={"confirm_cost_usd": 0.001}))
