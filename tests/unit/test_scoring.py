"""Score parsing against the shapes real LLM judges write."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from textwrap import dedent

import pytest
from pydantic import ValidationError

from services.parser.scoring import DEFAULT_PARSER, PARSERS, ScoreResult, parse_score, reason_code
from shared.parsers import KNOWN_PARSERS
from tests.judge_corpus import JudgeAnswer, load_corpus


@dataclass(frozen=True)
class Case:
    id: str
    text: str
    score: float | None = None
    error: str | None = None
    """The reason code the result must carry (the part before the colon)."""
    candidates: list[float] | None = None
    options: dict = field(default_factory=dict)


def judge(text: str) -> str:
    return dedent(text).strip("\n")


LONG_JUSTIFICATION = judge(
    """
    The essay explains the default mode network clearly and ties it to background processing.
    It then introduces the generator-verifier gap, but only in passing; the reader is left to
    infer why a cheap generator and an expensive critic make a loop worth running.
    Economic moats appear in the final paragraph as an afterthought. The link between a
    proprietary stream of daydreams and a durable advantage is asserted, not argued.
    Overall the piece gets close to the daydreaming-loop idea without naming the feedback step.
    """
)

# ---- the original pipeline's cases, read by both strategies ---------------------------------------

ORIGINAL_CASES = [
    Case("bold-score-line", "The essay is coherent.\n\n**SCORE: 8**", score=8),
    Case("italic-score-line", "The essay is coherent.\n\n*SCORE: 8*", score=8),
    Case("bold-label-colon-inside", "Some reasoning here.\n**Score:** 5", score=5),
    Case("total-score-label", "Strong synthesis, weak on moats.\nTotal Score: 6", score=6),
    Case("score-above-range", "The essay is excellent in every respect.\nSCORE: 12", error="out_of_range"),
    Case("empty-text", "", error="empty_response"),
    Case("whitespace-only", "  \n\n \t\n", error="empty_response"),
]


@pytest.mark.parametrize("parser", sorted(PARSERS))
@pytest.mark.parametrize("case", ORIGINAL_CASES, ids=lambda c: c.id)
def test_original_pipeline_cases_read_the_same_with_every_parser(case: Case, parser: str) -> None:
    assert_reads(case, parser)


# ---- in_last_line: the original contract -------------------------------------------------------

IN_LAST_LINE_CASES = [
    Case("three-digit-is-mean-of-digits", "Core 4, links 5, depth 6.\nScore: 456", score=5.0),
    Case("comma-separated-digits-are-averaged", "Per criterion:\nScore: 4,5,6", score=5.0),
    Case("exact-score-line-beats-labelled-line", "SCORE: 3\nFinal Score: 7 would be too generous", score=3),
    Case(
        "only-the-last-three-lines-are-read",
        "Score: 7\n" + LONG_JUSTIFICATION,
        error="no_score_found",
    ),
    Case("label-and-number-apart-is-not-read", "The essay is fine.\nSCORE:\n\n7", error="no_score_found"),
    Case("decimal-accepted-as-in-the-original", "Reasoning.\nScore: 6.5", score=6.5),
    Case("fraction-numerator-taken", "Solid work.\n**Final Score: 7/10**", score=7, options={"max_score": 10}),
]


@pytest.mark.parametrize("case", IN_LAST_LINE_CASES, ids=lambda c: c.id)
def test_in_last_line(case: Case) -> None:
    assert_reads(case, "in_last_line")


def test_in_last_line_reports_the_lines_it_looked_at() -> None:
    result = parse_score("Intro.\nBody.\n\n## Verdict\n**SCORE: 6**", parser="in_last_line")
    assert result.lines_examined == ["Body.", "Verdict", "SCORE: 6"]


# ---- final_verdict: a careful reader -------------------------------------------------------------

FINAL_VERDICT_CASES = [
    Case(
        "total-above-a-long-justification",
        "**Final Score: 6/9**\n\n" + LONG_JUSTIFICATION,
        score=6,
    ),
    Case(
        "total-above-a-list-of-omissions",
        judge(
            """
            Score: 4

            What the essay leaves out:
            1. The critic never feeds results back into memory.
            2. No mention of why background processing is cheap.
            3. Economic moats are named but not connected.
            """
        ),
        score=4,
    ),
    Case(
        "sub-scores-then-total",
        judge(
            """
            ## Evaluation
            - Core concepts: 2/2
            - Connections: 2/3
            - Novelty score: 1/2
            - Clarity: 2/2

            **Total: 7/9**
            """
        ),
        score=7,
    ),
    Case(
        "intermediate-sum-then-final-score",
        judge(
            """
            Core concepts are all present and the connections are mostly explicit.

            3 (Core) + 2 (Connections) = 5/10

            Final Score: 5
            """
        ),
        score=5,
        options={"max_score": 10},
    ),
    Case(
        "intermediate-sum-is-the-verdict-when-nothing-else-is-stated",
        judge(
            """
            Core concepts present, connections partial.
            3 (Core) + 2 (Connections) = 5/9
            """
        ),
        score=5,
    ),
    Case(
        "criterion-sums-are-not-the-total",
        judge(
            """
            Core concepts: 1 + 2 = 3
            Connections: 1 + 1 = 2
            Total: 3 + 2 = 5
            """
        ),
        score=5,
    ),
    Case(
        "think-block-with-a-changed-mind",
        judge(
            """
            <think>
            The essay mentions the generator-verifier gap. Score: 5 seems right.
            Wait, it also describes the feedback into memory in paragraph four. That is the key
            step. I should go higher. Final Score: 8? Let me settle on 7.
            </think>
            The essay reaches the core idea, including the feedback step, but the moat argument
            stays thin.

            SCORE: 7
            """
        ),
        score=7,
    ),
    Case(
        "orphan-closing-think-tag",
        "Score: 3, no wait, the critic is there.\n</think>\n\nThe loop is described.\nSCORE: 6",
        score=6,
    ),
    Case(
        "label-and-number-on-separate-lines",
        "The essay covers the default mode network and the critic.\n\nSCORE:\n\n7",
        score=7,
    ),
    Case(
        "heading-label-then-bold-value",
        "Good coverage of all three concepts.\n\n## Final Score\n\n**8/9**",
        score=8,
    ),
    Case("score-after-a-worded-verdict", "Final Verdict: **Strong** — Score: 7", score=7),
    Case("bold-label-only", "Reasonable but shallow.\n\n**SCORE**: 4", score=4),
    Case("rounded-value-is-the-verdict", "Solid but derivative.\n\nScore: 6.5/9, rounded to 7", score=7),
    Case(
        "rounded-value-in-prose",
        "Weighing the omissions, the essay earns 6.5 overall.\nFinal score: 6.5, which I round up to 7.",
        score=7,
    ),
    Case(
        "stated-rounding-followed-when-decimals-allowed",
        "Solid but derivative.\n\nScore: 6.5/9, rounded to 7",
        score=7,
        options={"allow_decimals": True},
    ),
    Case(
        "rounded-from-names-the-unrounded-value",
        "The essay is close to complete.\nFinal Score: 7/9 (rounded from 6.8)",
        score=7,
    ),
    Case(
        "decimal-without-rounding-on-a-whole-number-scale",
        "Close to the idea.\nFinal Score: 6.5",
        error="out_of_range",
    ),
    Case(
        "decimal-without-rounding-on-a-decimal-scale",
        "Close to the idea.\nFinal Score: 6.5",
        score=6.5,
        options={"allow_decimals": True},
    ),
    Case(
        "two-conflicting-totals",
        "Score: 6\n\nThe connections are explicit and the loop is complete.\n\nScore: 8",
        error="ambiguous",
        candidates=[6, 8],
    ),
    Case(
        "two-conflicting-final-scores",
        "Final Score: 5\n\nOn the other hand the writing is clear.\n\nFinal Score: 7",
        error="ambiguous",
        candidates=[5, 7],
    ),
    Case(
        "explicit-revision-wins",
        "Score: 6\n\nOn reflection, the feedback step is there in paragraph four, so I revise upward.\nScore: 8",
        score=8,
    ),
    Case(
        "final-label-beats-an-earlier-plain-score",
        "Score: 6 for now; see below.\n" + LONG_JUSTIFICATION + "\n\nFinal Score: 7",
        score=7,
    ),
    Case("total-restated-at-the-end", "Score: 5\n\n" + LONG_JUSTIFICATION + "\n\nSCORE: 5", score=5),
    Case("no-number-anywhere", LONG_JUSTIFICATION, error="no_score_found"),
    Case(
        "numbered-list-is-not-a-score",
        judge(
            """
            Strengths:
            1. Names the default mode network.
            2. Explains the critic.
            3. Ties daydreams to a data moat.
            4. Proposes a budget for background compute.
            """
        ),
        error="no_score_found",
    ),
    Case(
        "years-are-not-scores",
        judge(
            """
            The essay cites the 2023 work on generator-verifier gaps and a 2019 survey.
            It was clearly written with 2024 models in mind.

            Score: 6
            """
        ),
        score=6,
    ),
    Case("a-year-alone-is-not-a-verdict", "Published in 2023 by the lab.\nThe essay is fine.", error="no_score_found"),
    Case(
        "markdown-table-of-criteria-with-total-row",
        judge(
            """
            | Criterion | Score | Notes |
            |---|---|---|
            | Core concepts | 3/3 | all present |
            | Connections | 2/3 | moat link weak |
            | Novelty | 1/3 | familiar framing |
            | **Total** | **6/9** | |
            """
        ),
        score=6,
    ),
    Case(
        "markdown-table-of-criteria-then-score-line",
        judge(
            """
            | Criterion | Points |
            |-----------|--------|
            | Core concepts | 2 |
            | Connections | 3 |

            SCORE: 5
            """
        ),
        score=5,
    ),
    Case(
        "markdown-table-without-total-has-no-verdict",
        "| Criterion | Score |\n|---|---|\n| Core concepts | 2 |\n| Connections | 3 |",
        error="no_score_found",
    ),
    Case(
        "criterion-scores-only-have-no-verdict",
        "Core concepts: 2/2\nConnections: 3/3\nNovelty score: 1/2",
        error="no_score_found",
    ),
    Case(
        "first-person-verdict",
        "The essay nearly reinvents the loop but misses the memory write-back.\nI would give this essay a 6.",
        score=6,
    ),
    Case(
        "first-person-criterion-score-is-not-the-verdict",
        "I'd give it 2/2 for core concepts and 1/3 for connections.\nOverall score: 5",
        score=5,
    ),
    Case("verdict-in-a-sentence", "Taking everything into account, my final score is 7.", score=7),
    Case("boxed-answer", "The loop is described end to end.\n\nFinal answer: $\\boxed{8}$", score=8),
    Case("score-out-of-n-in-words", "Clear and complete.\nFinal Rating: 8 out of 9", score=8),
    Case(
        "rubric-echo-before-the-score",
        "Score 0-9, where 9 means the idea is fully reinvented.\n\nThe essay is partial.\nSCORE: 4",
        score=4,
    ),
    Case(
        "scale-stated-in-the-label",
        "Partial coverage.\nTotal Score (out of 9): 5",
        score=5,
    ),
    Case(
        "fraction-on-another-scale-is-not-rescaled",
        "Close to the idea.\n\n**Final Score: 7/10**",
        error="scale_mismatch",
    ),
    Case(
        "fraction-on-the-template-scale",
        "Close to the idea.\n\n**Final Score: 7/10**",
        score=7,
        options={"max_score": 10},
    ),
    Case("percent-is-another-scale", "Mostly there.\nOverall: 70%", error="scale_mismatch"),
    Case("range-is-not-a-score", "Somewhere between good and very good.\nScore: 6-7", error="no_score_found"),
    Case("bare-number-on-the-last-line", "The essay is good but incomplete.\n\n**6/9**", score=6),
    Case("dash-after-verdict-label", "Verdict - 3\n\nThe essay misses the critic entirely.", score=3),
    Case(
        "only-think-block-is-not-read",
        "<think>\nThe essay is decent. Score: 6. Hmm, maybe 7.\n</think>",
        error="no_score_found",
    ),
    Case(
        "unterminated-think-block-is-not-read",
        "<think>\nFirst pass: the essay names all three concepts. Tentative score: 7.\nBut the",
        error="no_score_found",
    ),
    Case(
        "answer-before-an-unterminated-think-is-read",
        "SCORE: 5\n<think>\nLet me double check the moat argument, it might be worth",
        score=5,
    ),
    Case(
        "zero-is-a-score",
        "None of the concepts are connected; the essay is about something else.\nSCORE: 0",
        score=0,
    ),
    Case("top-of-scale-is-a-score", "Everything is there, feedback loop included.\nSCORE: 9", score=9),
    Case("three-digit-is-not-averaged", "Per criterion.\nScore: 456", error="out_of_range"),
]


@pytest.mark.parametrize("case", FINAL_VERDICT_CASES, ids=lambda c: c.id)
def test_final_verdict(case: Case) -> None:
    assert_reads(case, "final_verdict")


# ---- shapes an audit of real judge answers found scored wrong -----------------------------------

AUDITED_CASES = [
    # A labelled number followed by a counted noun is a count, not a score.
    Case(
        "total-is-a-count-of-concepts",
        judge(
            """
            The essay touches the default mode network and the generator-verifier gap.
            It never explains how the critic's verdicts feed back into memory.

            The total is 3 concepts.
            """
        ),
        error="no_score_found",
    ),
    Case(
        "a-total-of-n-of-the-m-concepts",
        judge(
            """
            The essay covers a total of 2 of the 3 required concepts, leaving out economic moats.
            The prose is clear and the structure is easy to follow.
            """
        ),
        error="no_score_found",
    ),
    Case(
        "overall-dash-a-count",
        judge(
            """
            The essay is readable and well structured.
            Overall - 2 concepts are missing from the argument.
            """
        ),
        error="no_score_found",
    ),
    Case(
        "verdict-is-a-length-complaint",
        judge(
            """
            The argument is there but buried under background.
            The verdict is 3 paragraphs too long before it reaches the point.
            """
        ),
        error="no_score_found",
    ),
    Case(
        "footnote-marker-on-the-last-line",
        judge(
            """
            The essay leans on the generator-verifier gap work as its main source.
            It does not reach the feedback loop.

            [1]
            """
        ),
        error="no_score_found",
    ),
    Case(
        "a-score-of-n-that-is-endorsed-is-a-score",
        "The critic and the memory write-back are both there.\nA score of 7 is fair.",
        score=7,
    ),
    # The scale stated in a parenthetical is checked like `8/10`.
    Case(
        "scale-in-a-parenthetical-label",
        "The loop is described end to end, with a thin moat.\n\nScore (out of 10): 8",
        error="scale_mismatch",
    ),
    Case(
        "scale-in-a-parenthetical-after-the-value",
        "The loop is described end to end, with a thin moat.\n\nScore: 8 (out of 10)",
        error="scale_mismatch",
    ),
    Case(
        "scale-as-a-range-in-the-label",
        "The loop is described end to end, with a thin moat.\n\nScore (0-10): 8",
        error="scale_mismatch",
    ),
    Case(
        "template-scale-in-a-parenthetical-label",
        "The loop is described end to end, with a thin moat.\n\nScore (out of 9): 8",
        score=8,
    ),
    # A later statement that revises wins over an earlier, stronger label.
    Case(
        "revision-after-a-final-score",
        judge(
            """
            Final Score: 5

            The critic is missing, and the moat is only named.

            Actually, on reflection, I revise this: the critic is described in paragraph four.
            Score: 8
            """
        ),
        score=8,
    ),
    Case(
        "revision-to-an-unlabelled-number-is-ambiguous",
        judge(
            """
            Final Score: 8

            On second thought, the moat argument is asserted, not argued. 6.
            """
        ),
        error="ambiguous",
        candidates=[8],
    ),
    Case(
        "edit-with-a-first-person-verdict",
        "Final Score: 7\n\nThe loop is complete.\n\nEdit: I would actually give it a 6.",
        score=6,
    ),
    Case(
        "lowered-on-reflection",
        judge(
            """
            **Final Score: 6/9**

            The essay is clear, but on reflection, I would lower this to 5 because the moat is never argued.
            """
        ),
        score=5,
    ),
    Case(
        "wait-then-a-second-final-score",
        judge(
            """
            Final Score: 6

            Wait — I overlooked the paragraph on memory write-back, which is the key step.

            Final Score: 8
            """
        ),
        score=8,
    ),
    Case("revision-later-in-the-same-line", "Score: 5. Actually, make that a 6.", score=6),
    Case("a-change-gives-its-reason", "Final Score: 7\n\nLowering my score to 5 for length.", score=5),
    Case("an-alternative-instead", "Final Score: 8\n\nThe moat is thin. I'd give it a 6 instead.", score=6),
    Case(
        "a-hypothetical-change-is-not-a-revision",
        "Final Score: 7\n\nI would lower this to 5 if the critic were missing, but it is there.",
        score=7,
    ),
    Case(
        "second-thoughts-after-the-verdict-leave-no-verdict",
        "Final Score: 7\n\nOn reflection, the moat argument is weaker than I first credited.",
        error="ambiguous",
    ),
    # Working after a value: the verdict is where it ends, never the first number.
    Case(
        "arrow-to-the-revised-value",
        "The essay nearly reaches the loop.\nScore: 6/9 -> 7/9 after considering the memory write-back paragraph.",
        score=7,
    ),
    Case(
        "deduction-then-final",
        "All three concepts are covered.\nScore: 7, but deducting 2 for the unargued moat, final 5.",
        score=5,
    ),
    Case(
        "penalty-arithmetic-on-a-fraction",
        "Coverage is complete but the essay is twice the requested length.\nTotal: 8/9 - 2 (penalty) = 6/9",
        score=6,
    ),
    Case(
        "deduction-without-a-result-is-ambiguous",
        "Coverage is complete.\nScore: 7 (minus 1 for length)",
        error="ambiguous",
    ),
    Case("list-of-values-is-ambiguous", "Per criterion:\nScore: 4,5,6", error="ambiguous", candidates=[4, 5, 6]),
    # Hypothetical and superseded scores beside the real one.
    Case(
        "hypothetical-top-score",
        judge(
            """
            A score of 9 would require the essay to describe the feedback into memory.
            It does not, but everything else is present.

            Score: 7
            """
        ),
        score=7,
    ),
    Case(
        "hypothetical-low-score-after-the-verdict",
        "Score: 7\n\nA score of 4 would be appropriate if the critic were missing, but it is present.",
        score=7,
    ),
    Case(
        "first-impression",
        "My first impression was a score of 5, but the fourth paragraph changes that.\n\nScore: 7",
        score=7,
    ),
    Case(
        "conditional-first-person-score",
        "Final Score: 7\n\nI would give it a 9 if the moat were argued rather than asserted.",
        score=7,
    ),
]


@pytest.mark.parametrize("case", AUDITED_CASES, ids=lambda c: c.id)
def test_final_verdict_on_audited_shapes(case: Case) -> None:
    assert_reads(case, "final_verdict")


# ---- issue 15: the strict line, sub-scores on another scale, stated rounding --------------------

TEN_WITH_HALVES = {"max_score": 10, "allow_decimals": True}

ISSUE_15_CASES = [
    Case(
        "strict-line-wins-over-an-earlier-total",
        "Total: 6/10\n\nThe loop closes in the last paragraph after all.\n\nSCORE: 7/10",
        score=7,
        options=TEN_WITH_HALVES,
    ),
    Case(
        "strict-line-wins-over-criterion-scores-without-a-scale",
        "Concepts — Score: 3\nConnections — Score: 2\nDepth — Score: 1\n\nSCORE: 6",
        score=6,
    ),
    Case(
        "strict-line-after-a-think-block-that-works-it-out",
        "<think>3 + 3 + 2 + 2 = 10, maybe 9?</think>\nRunning total: 3 + 3 + 2 + 2 = 10/10\n\nSCORE: 10/10",
        score=10,
        options=TEN_WITH_HALVES,
    ),
    Case(
        "strict-line-changed-after-it-is-read-by-the-heuristics",
        "The essay is complete.\n\nSCORE: 7\n\nThe moat is thin; I'd give it a 6 instead.",
        score=6,
    ),
    Case(
        "strict-line-with-a-revised-note-after-it-has-no-verdict",
        "The essay is complete.\n\nSCORE: 7\n\n(Revised: 6)",
        error="ambiguous",
    ),
    Case(
        "strict-line-twice-is-read-by-the-heuristics",
        "SCORE: 5\n\nThe critic is described with care.\n\nSCORE: 7",
        error="ambiguous",
        candidates=[5, 7],
    ),
    Case(
        "strict-line-on-another-scale-is-a-mismatch",
        "Everything is there.\n\n**SCORE: 8/10**",
        error="scale_mismatch",
    ),
    Case(
        "strict-line-with-its-own-rounding",
        "Off topic.\n\n**SCORE:** 2.5/10 → Rounded to **3/10**",
        score=3,
        options=TEN_WITH_HALVES,
    ),
    Case(
        "sub-scores-on-another-scale-are-not-candidates",
        "- Clarity — Score: **1/2**\n- Depth — (Score: 2/5)\n\n**Total Score: 7/10**\n\nA careful essay.",
        score=7,
        options=TEN_WITH_HALVES,
    ),
    Case(
        "only-sub-scores-on-another-scale-have-no-verdict",
        "- Clarity — Score: 1/2\n- Depth — Score: 2/5",
        error="no_score_found",
        options=TEN_WITH_HALVES,
    ),
    Case(
        "fractions-on-the-scale-still-compete",
        "Score: 6/10\n\nThe moat is thin.\n\nOverall: 8/10",
        error="ambiguous",
        candidates=[6, 8],
        options=TEN_WITH_HALVES,
    ),
    Case(
        "a-score-on-a-larger-scale-is-a-mismatch-not-a-sub-score",
        "Core 3 + Connections 2 + Depth 2 = 7\n\nMy score: 7/10",
        error="scale_mismatch",
    ),
    Case(
        "a-final-score-on-another-scale-is-a-mismatch-not-a-sub-score",
        "Close to the idea.\n\nFinal Score: 4/5",
        error="scale_mismatch",
        options=TEN_WITH_HALVES,
    ),
    Case(
        "arrow-rounding-is-the-result",
        "Nearly there.\n\n- **Total Score: 6.5/10** → Rounded to **7/10**",
        score=7,
        options=TEN_WITH_HALVES,
    ),
    Case(
        "arrow-rounding-then-strict-line",
        "**TOTAL: 5.5/10** → Rounded to **5/10**\n\n**SCORE:** 5",
        score=5,
        options=TEN_WITH_HALVES,
    ),
    Case(
        "rounding-in-a-later-table-cell-is-the-result",
        "| Criterion | Score | Note |\n|---|---|---|\n| **Total** | **7.25/10** | Rounded to **7/10** |",
        score=7,
        options=TEN_WITH_HALVES,
    ),
    Case(
        "an-average-worked-out-after-the-label",
        "**Overall Score**: (10+9+4)/3 = **7.67/10** → Rounded to **8/10**",
        score=8,
        options=TEN_WITH_HALVES,
    ),
    Case("approximately-is-the-result", "Nearly there.\nTotal: 6.5/10 ≈ 7/10", score=7, options=TEN_WITH_HALVES),
    Case(
        "rounded-down-to-is-the-result",
        "Nearly there.\nOverall score 6.5/10 — rounded down to 6/10 since the moat is only asserted.",
        score=6,
        options=TEN_WITH_HALVES,
    ),
]


@pytest.mark.parametrize("case", ISSUE_15_CASES, ids=lambda c: c.id)
def test_final_verdict_on_issue_15_shapes(case: Case) -> None:
    assert_reads(case, "final_verdict")


def test_the_strict_line_is_the_line_examined() -> None:
    result = parse_score("Total: 6/10\n\n**SCORE: 7/10**", max_score=10)
    assert result.lines_examined == ["**SCORE: 7/10**"]
    assert result.candidates == [7]


@pytest.mark.parametrize("answer", load_corpus(), ids=lambda a: f"{a.file}:{a.id}")
def test_labelled_judge_answers_read_as_labelled(answer: JudgeAnswer) -> None:
    """tests/data/judge_answers/: a labelled score must be found and no other, a labelled error
    given; a known miss (labelled with why) must stay an error, never become a wrong score."""
    if answer.miss:
        result = parse_score(answer.text, parser="final_verdict", **answer.options)
        assert result.score is None and result.error, result
        return
    case = Case(answer.id, answer.text, answer.score, answer.error, answer.candidates, answer.options)
    assert_reads(case, "final_verdict")


def test_a_revision_without_a_new_score_says_so() -> None:
    result = parse_score("Final Score: 8\n\nOn second thought, the moat is only asserted.")
    assert result.error == "ambiguous: 8 (revised later without a new score)"
    assert result.lines_examined == ["Final Score: 8"]


def test_an_adjustment_without_a_result_says_so() -> None:
    result = parse_score("Score: 7, minus 1 for length.")
    assert result.error == "ambiguous: 7 (adjusted without a stated result)"


def test_final_verdict_is_the_default() -> None:
    assert parse_score("SCORE:\n\n7").parser == "final_verdict"
    assert parse_score("SCORE:\n\n7").score == 7


def test_ambiguous_lists_the_candidates_in_the_error() -> None:
    result = parse_score("Score: 6\n\nScore: 8")
    assert result.error == "ambiguous: 6, 8"
    assert result.reason == "ambiguous"
    assert result.lines_examined == ["Score: 6", "Score: 8"]


def test_lines_examined_are_the_lines_that_state_the_verdict() -> None:
    text = "Core concepts: 2/2\n\nFinal Score: 5\n\nThe moat argument is thin."
    assert parse_score(text).lines_examined == ["Final Score: 5"]


def test_no_score_shows_the_tail_of_the_answer() -> None:
    result = parse_score(LONG_JUSTIFICATION)
    assert result.lines_examined == LONG_JUSTIFICATION.splitlines()[-3:]


def test_only_reasoning_says_so_and_shows_its_tail() -> None:
    result = parse_score("<think>\nIt is decent.\nScore: 6\n</think>")
    assert result.error is not None and "<think>" in result.error
    assert result.lines_examined[-1] == "Score: 6"


def test_scale_mismatch_names_the_fix() -> None:
    result = parse_score("Final Score: 7/10", max_score=9)
    assert result.score is None
    assert result.error == "scale_mismatch: judge wrote 7/10 but the template's max_score is 9"


def test_out_of_range_names_the_range() -> None:
    assert parse_score("SCORE: 12").error == "out_of_range: 12 is outside 0..9"


@pytest.mark.parametrize("parser", sorted(PARSERS))
def test_a_score_comes_without_an_error_and_an_error_without_a_score(parser: str) -> None:
    for case in ORIGINAL_CASES:
        result = parse_score(case.text, parser=parser)
        assert (result.score is None) != (result.error is None)


def test_a_very_long_answer_is_read_in_linear_time() -> None:
    """The parser service reads every answer; one rambling judge must not stall it."""
    paragraph = "The essay weighs 2023 results, score components and totals against the rubric. " * 1600
    started = time.perf_counter()
    result = parse_score((paragraph + "\n") * 5 + "SCORE: 7")
    assert result.score == 7
    assert time.perf_counter() - started < 10


def test_unknown_parser_names_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="final_verdict, in_last_line"):
        parse_score("SCORE: 5", parser="last_number")


def test_the_parser_service_knows_exactly_the_parsers_input_validation_accepts() -> None:
    """A template that passes validation must not fail at scoring time, and no parser may be unreachable."""
    assert set(PARSERS) == set(KNOWN_PARSERS)
    assert DEFAULT_PARSER in PARSERS


def test_the_reason_is_the_code_before_the_detail() -> None:
    """The parser service counts failures by this code; a result and a bare error agree on it."""
    result = parse_score("Score: 6\n\nScore: 8")
    assert reason_code(result.error) == result.reason == "ambiguous"
    assert reason_code("no_score_found") == "no_score_found"
    assert reason_code(None) is None


def test_result_is_immutable() -> None:
    result = parse_score("SCORE: 5")
    with pytest.raises(ValidationError):
        result.score = 9  # type: ignore[misc]


def assert_reads(case: Case, parser: str) -> None:
    result = parse_score(case.text, parser=parser, **case.options)
    assert isinstance(result, ScoreResult)
    assert result.parser == parser
    if case.error is None:
        assert (result.score, result.error) == (case.score, None), result
    else:
        assert result.score is None, result
        assert result.reason == case.error, result
    if case.candidates is not None:
        assert result.candidates == case.candidates
