"""Templates render bounded in time and size: a template that would hang or fill memory is a
`TemplateProblem`, raised before the work is done; ordinary templates render as before."""

from __future__ import annotations

import threading

import pytest

from shared import prompts
from shared.prompts import TemplateProblem, render

HUGE = [
    ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "range() would be 100,000"),
    ("{{ lipsum(10**7) }}", "lipsum() paragraphs"),
    ("{{ lipsum(3, max=10**9) }}", "lipsum() words per paragraph"),
    ("{{ 'a' * 10**9 }}", "a repeated sequence"),
    ("{{ 10 * 'a' * 10**8 }}", "a repeated sequence"),
    ("{{ [1] * 10**6 }}", "a repeated sequence"),
    ("{{ 7 ** 1000000 }}", "a power (in bits)"),
    ("{{ 'a'|center(10**9) }}", "a padded text"),
    ("{{ 'a'.ljust(10**9) }}", "a padded text"),
    ("{% set a = 'a' * 900000 %}{{ a ~ a }}", "a concatenation with ~"),
    ("{% set a = 'a' * 900000 %}{{ a + a }}", "a concatenation"),
    ("{{ '%999999999d' % 1 }}", "a width or precision"),
    ("{{ '{:>999999999}'.format(1) }}", "a width or precision"),
    ("{{ '%d'|format(1) ~ '%999999999d'|format(1) }}", "a width or precision"),
    ("{% set a = 'a' * 1000 %}{{ (a ~ a)|replace('a', a) }}", "a replaced text"),
    ("{% set a = 'a\n' * 500000 %}{{ a|indent(100) }}", "an indented text"),
    ("{{ [1, 2]|batch(10**9, 'x')|list }}", "a batch"),
    ("{% set a = 'a' * 1000 %}{{ (range(2000)|map('string')|map('center', 900)|list)|join(a) }}", "a joined text"),
    ("{% set a = 'a' * 100000 %}{% for i in range(20) %}{{ a }}{% endfor %}", "the rendered prompt would be"),
    ("{% set a = 'a' * 100000 %}{{ [a] * 5000 }}", "an output value"),
]


@pytest.mark.parametrize(("text", "refusal"), HUGE)
def test_a_template_that_would_be_huge_is_refused_before_it_is_built(text: str, refusal: str) -> None:
    with pytest.raises(TemplateProblem) as caught:
        render(text, {})
    assert "exceeds a limit" in caught.value.message
    assert refusal in caught.value.message
    assert "1,000,000 characters" in caught.value.fix


def test_constant_expressions_are_not_folded_at_compile_time() -> None:
    """A folded constant would be computed while compiling, outside every limit."""
    with pytest.raises(TemplateProblem, match="a padded text"):
        render("{{ 'a'|center(1000000000) }}", {})


def test_a_render_that_takes_too_long_is_stopped_and_names_its_line() -> None:
    slow = "First line\n{% for i in range(10000) %}{% for j in range(10000) %}{% endfor %}{% endfor %}"
    with pytest.raises(TemplateProblem, match=r"rendering took more than 2 s") as caught:
        render(slow, {})
    assert caught.value.line == 2


def test_a_render_in_another_thread_is_stopped_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prompts, "RENDER_TIME_BUDGET_S", 0.2)
    outcome: list[str] = []

    def slow_render() -> None:
        try:
            render("{% for i in range(10000) %}{% for j in range(10000) %}{% endfor %}{% endfor %}", {})
        except TemplateProblem as problem:
            outcome.append(problem.message)

    worker = threading.Thread(target=slow_render)
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive()
    assert outcome and "rendering took more than 0.2 s" in outcome[0]


def test_a_deadline_that_passes_as_a_render_ends_never_strikes_later(monkeypatch: pytest.MonkeyPatch) -> None:
    """Renders that finish around their deadline either fail as a TemplateProblem or succeed; the
    watchdog's exception never lands in the code that runs after them."""
    monkeypatch.setattr(prompts, "RENDER_TIME_BUDGET_S", 0.005)
    outcomes: list[str] = []
    for size in range(0, 10000, 25):
        try:
            render(f"{{% for i in range({size}) %}}{{% for j in range(100) %}}{{% endfor %}}{{% endfor %}}", {})
            outcomes.append("rendered")
        except TemplateProblem:
            outcomes.append("refused")
        assert sum(range(20000)) == 199990000  # bytecode that a stray exception would interrupt
        if outcomes.count("refused") == 20:
            break
    assert set(outcomes) == {"rendered", "refused"}


def test_ordinary_templates_render_as_before() -> None:
    text = (
        "{% for c in concepts %}{{ loop.index }}. {{ c.name|upper }} {{ '-' * 3 }} {{ c.name ~ '!' }}\n{% endfor %}"
        "{{ '%s and %d'|format('x', 2) }} {{ '{} {}'.format('a', 'b') }} {{ 2 ** 10 }} {{ (range(3)|list) * 2 }} "
        "{{ 'ab'|replace('a', 'c') }} {{ ['a', 'b']|join(', ') }} {{ 'x'|center(5) }}|"
    )
    concepts = [{"name": "alpha"}, {"name": "beta"}]
    assert render(text, {"concepts": concepts}) == (
        "1. ALPHA --- alpha!\n2. BETA --- beta!\n"
        "x and 2 a b 1024 [0, 1, 2, 0, 1, 2] cb a, b   x  |"
    )
