"""Judge text -> a score, or an explicit reason there is none.

A wrong score is worse than no score: it silently ranks the wrong essay first. So every strategy
either finds one verdict it can defend or returns an error code (`empty_response`,
`no_score_found`, `out_of_range`, `scale_mismatch`, `ambiguous`) with the lines it looked at.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace

from pydantic import BaseModel, ConfigDict, Field

from shared.parsers import DEFAULT_PARSER

DEFAULT_MAX_SCORE = 9
"""The scale of the original pipeline's judges, for a task that does not name its own."""


class ScoreResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    parser: str
    score: float | None = None
    error: str | None = None
    """`<reason>` or `<reason>: <detail>`; None exactly when `score` is set."""
    candidates: list[float] = Field(default_factory=list)
    lines_examined: list[str] = Field(default_factory=list)

    @property
    def reason(self) -> str | None:
        return reason_code(self.error)


def reason_code(error: str | None) -> str | None:
    """The bare reason of an error (`ambiguous` of `ambiguous: 6, 8`), for counting failures by kind."""
    return error.split(":", 1)[0] if error else None


ScoreParser = Callable[..., ScoreResult]

NUMBER = r"\d+(?:\.\d+)?"


def _non_empty_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def _format(value: float) -> str:
    return f"{value:g}"


def _range_error(value: float, max_score: int) -> str | None:
    if not 0 <= value <= max_score:
        return f"out_of_range: {_format(value)} is outside 0..{max_score}"
    return None


# ---- in_last_line: the original pipeline's contract ------------------------------------------

_LAST_LINE_VALUE = rf"\s*:?\s*(?:(?P<triple>\d\s*,\s*\d\s*,\s*\d)|(?P<number>{NUMBER}))"
_EXACT_SCORE_LINE = re.compile(rf"SCORE{_LAST_LINE_VALUE}", re.IGNORECASE)
_LABELLED_SCORE = re.compile(rf"\b(?:final\s+|total\s+)?score{_LAST_LINE_VALUE}", re.IGNORECASE)


def _last_line_value(match: re.Match[str]) -> float:
    """A three-digit value is three sub-scores written together; the original averaged them."""
    digits = match["triple"] or match["number"]
    if re.fullmatch(r"\d\s*,\s*\d\s*,\s*\d|\d{3}", digits):
        return sum(int(d) for d in re.findall(r"\d", digits)) / 3
    return float(digits)


def parse_in_last_line(text: str, *, max_score: int = DEFAULT_MAX_SCORE, allow_decimals: bool = False) -> ScoreResult:
    """Kept as the original pipeline had it so its results re-parse identically; like the
    original it accepts decimal values whatever `allow_decimals` says."""
    name = "in_last_line"
    tail = [re.sub(r"[*#]", "", line).strip() for line in _non_empty_lines(text)[-3:]]
    if not tail:
        return ScoreResult(parser=name, error="empty_response")
    exact = [m for line in reversed(tail) if (m := _EXACT_SCORE_LINE.fullmatch(line))]
    labelled = [m for line in reversed(tail) if (m := _LABELLED_SCORE.search(line))]
    found = (exact or labelled)[:1]
    if not found:
        return ScoreResult(parser=name, error="no_score_found", lines_examined=tail)
    value = _last_line_value(found[0])
    error = _range_error(value, max_score)
    return ScoreResult(
        parser=name,
        score=None if error else value,
        error=error,
        candidates=[value],
        lines_examined=tail,
    )


# ---- final_verdict: read the answer as a careful reader does ----------------------------------

_FINAL, _OVERALL, _INTERMEDIATE = 3, 2, 1
"""How strongly a statement claims to be the verdict: a `Final Score` beats a `Score`, which
beats arithmetic (`3 + 2 = 5`) or a bare number on the last line."""

_FINAL_LABEL = (
    r"(?:final|revised|updated|corrected|adjusted)\s+(?:overall\s+|total\s+)?"
    r"(?:score|rating|grade|verdict|mark|evaluation|assessment|answer|total)"
)
_OVERALL_LABEL = r"(?:overall|total)\s+(?:score|rating|grade|mark)|score|total|overall|verdict|rating|grade"
_LABEL = re.compile(rf"\b(?:(?P<final>{_FINAL_LABEL})|(?P<overall>{_OVERALL_LABEL}))\b", re.IGNORECASE)
_LABEL_ONLY = re.compile(rf"(?:(?P<final>{_FINAL_LABEL})|(?P<overall>{_OVERALL_LABEL}))\s*[:\-–—]?", re.IGNORECASE)
_WORDS_BEFORE_AN_OVERALL_LABEL = {"the", "my", "our", "a", "an", "this", "its", "their", "your", "and", "so"}
"""Any other word right before `score` names a criterion (`Novelty score: 3`): a sub-score."""

_PARENTHETICAL = r"\([^()]*\)"
_SCALE_NOTE = r"\(\s*(?:out\s+of\s*|/\s*|\d+\s*(?:[-–]|to)\s*)(?P<scale>\d+)\s*\)"
"""The scale named between label and value: `Score (out of 10): 8`, `Score (0-10): 8`."""
_SUM = rf"(?:{NUMBER}\s*(?:{_PARENTHETICAL}\s*)?\+\s*)+{NUMBER}\s*(?:{_PARENTHETICAL}\s*)?=\s*"
_AVERAGE = rf"\(\s*{NUMBER}(?:\s*\+\s*{NUMBER})+\s*\)\s*/\s*\d+\s*=\s*"
"""`(10 + 9 + 4) / 3 = `: the working of an average, before the value it gives."""
_VALUE = (
    rf"\[?(?P<number>{NUMBER})(?!\.?\d|\s*(?:[-–]|to)\s*\d|\s*(?:{_PARENTHETICAL}\s*)?\+)\]?"
    rf"(?:\s*\(?\s*(?:(?P<slash>/)|out\s+of)\s*(?P<denominator>\d+)\s*\)?|\s*(?P<percent>%))?"
)
_AFTER_LABEL = re.compile(
    rf"[\"']?\s*(?:{_SCALE_NOTE}\s*|{_PARENTHETICAL}\s*)?(?P<separator>[:=\-–—]|\bis\b|\bof\b|\bwas\b)?\s*(?:an?\s+)?"
    rf"(?P<sum>{_SUM}|{_AVERAGE})?{_VALUE}",
    re.IGNORECASE,
)
_LISTED_VALUE = re.compile(rf"\s*,\s*{_VALUE}(?=\s*(?:,|[.!]?$))", re.IGNORECASE)
"""`Score: 4,5,6` states three values, not the first one: each is a candidate."""
_FIRST_PERSON_VERDICT = re.compile(
    r"\b(?:I|I'd|I'll|we)\b(?:\s+(?:would|will|can|must|therefore|thus|now|actually|instead))*"
    r"\s+(?:give|rate|award|assign)\b"
    r"(?:\s+(?:it|this|the)(?:\s+(?!a\b|an\b|\d)\w+)?)?\s+(?:a\s+(?:score|rating|grade)\s+of\s+|an?\s+)?"
    rf"{_VALUE}",
    re.IGNORECASE,
)
_CHANGE = (
    r"\b(?:lower|rais|reduc|increas|bump|drop|adjust|chang|revis)\w*\s+(?:(?:it|this|that|my|the)\s+)?"
    r"(?:(?:score|rating|grade|mark|verdict)\s+)?(?:(?:down|up)\s+)?to"
)
"""`lower this to 5`, `raise my score to 7`, `make that a 6`: a revision that names its new value."""
_CHANGED_TO = re.compile(rf"(?:{_CHANGE}|\bmake\s+(?:it|that|this))\s+(?:an?\s+)?{_VALUE}", re.IGNORECASE)
_FOR_A_CRITERION = re.compile(r"for\s+(?!this\b|the\s+(?:essay|response|answer|text)\b)\w", re.IGNORECASE)
"""`Score: 2/2 for core concepts` scores one criterion."""
_COUNTED = re.compile(
    r"(?!(?:because|since|as|given|after|for|overall|but|instead)\b"
    r"|(?:is|seems)\s+(?:fair|appropriate|warranted|justified|deserved)\s*(?:[.!,;]|$))[a-z]",
    re.IGNORECASE,
)
"""A word right after a value makes it a count or a hypothesis (`The total is 3 concepts`, `a total
of 2 of the 3`, `A score of 9 would require…`), unless it joins a reason on (`7 because…`) or
endorses the value and stops (`A score of 7 is fair.`). After a colon (`Score: 7 concepts…`) the
value is still read as a score."""
_TENTATIVE = re.compile(
    r"\b(?:first\s+impression|initial(?:ly)?|at\s+first|originally|tentative(?:ly)?|preliminary|provisional(?:ly)?)\b",
    re.IGNORECASE,
)
"""A score the judge says it held before (`My first impression was a score of 5`) is not its verdict."""
_ADJUSTMENT = re.compile(
    r"\s*[,;(]?\s*(?:(?:but|then|and|with|after|before)\s+)?"
    r"(?:[-+−]\s*\d|->|→|=>|⇒|≈|(?:deduct|subtract|minus|penal|bonus|plus)\w*)",
    re.IGNORECASE,
)
"""Working right after a value (`6/9 -> 7/9`, `7, but deducting 2`, `8/9 - 2 (penalty)`): the value is
where the judge started, not where it ended."""
_ADJUSTED_RESULT = re.compile(
    r"(?:=>|->|=|→|⇒|≈|\b(?:final(?:ly)?|total|score|net|so|leaving|leaves|giving|gives|making\s+it|(?:down|up)\s+to"
    r"|round(?:ed|s|ing)?(?:\s+(?:up|down))?\s+to)\b)"
    rf"(?:\s+(?:score|total|mark|rating|grade))?\s*(?:[:=]|\bis\b|\bof\b)?\s*(?:an?\s+)?{_VALUE}",
    re.IGNORECASE,
)
"""Where such working ends: the last `= 6/9`, `-> 7/9`, `→ rounded to 7` or `final 5` on the line."""
_ARITHMETIC = re.compile(rf"(?P<sum>{_SUM}){_VALUE}", re.IGNORECASE)
_BARE_VALUE = re.compile(rf"{_VALUE}\s*[.!]?", re.IGNORECASE)
_BARE_LAST_LINE = re.compile(rf"(?!\[){_VALUE}\s*[.!]?", re.IGNORECASE)
"""A number alone on the last line, but not a footnote marker such as `[1]`."""
_BOXED = re.compile(rf"\\boxed\{{\s*{_VALUE}\s*\}}", re.IGNORECASE)
_ROUNDING = re.compile(
    rf"\bround(?:ed|s|ing)?(?:\s+(?:it|this|that))?(?:\s+(?:up|down))?\s+to\s+(?:an?\s+)?(?P<rounded>{NUMBER})",
    re.IGNORECASE,
)
_REVISION = re.compile(
    r"\b(?:on|upon)\s+(?:second\s+thoughts?|(?:further\s+)?reflection|re-?reading|closer\s+(?:look|reading))"
    r"|\bI\s+(?:\w+\s+)?revise\b|\brevis(?:ed|ing)\s+(?:my\s+|the\s+)?(?:score|rating|grade|verdict|assessment)"
    r"|\b(?:I\s+(?:have\s+)?|after\s+|upon\s+|on\s+)reconsider\w*|\bchang\w*\s+my\s+(?:score|mind|rating)"
    r"|\bI\s+(?:overlooked|missed|misread|was\s+wrong)|\b(?:edit|correction|update[d]?|revis(?:ed|ion))\s*:|\bwait\s*[,:;!—–-]"
    r"|(?:^|[.!?:;—–]\s*)actually\b|\bI(?:'d|\s+would|\s+will)?\s+actually\b|\d\s+instead\b",
    re.IGNORECASE,
)
"""The judge changing its own mind (`On reflection`, `Edit:`, `Wait —`, `I would actually…`, `a 6
instead`); prose about the essay (`the essay revises…`) is not one. A `_CHANGED_TO` statement is
a revision too."""

_NEARBY = 80
"""Characters around a value that can qualify it (`Novelty score`, `rounded to 7`); bounded so
that a long paragraph full of the word `score` stays linear."""
_WORKING_REACH = 2 * _NEARBY
"""How far after a value its working (`, but deducting 2 for …, final 5`) may run."""

_STATED_ROUNDING = (
    rf"(?:->|→|=>|⇒)?\s*\(?\s*round(?:ed|s|ing)?(?:\s+(?:up|down))?\s+to\s+"
    rf"(?P<rounded>{NUMBER})(?:\s*/\s*(?P<rounded_scale>\d+))?\s*\)?"
)
_STRICT_SCORE_LINE = re.compile(
    rf"SCORE\s*:\s*(?P<number>{NUMBER})(?:\s*/\s*(?P<denominator>\d+))?(?:\s*{_STATED_ROUNDING})?\s*[.!]?",
    re.IGNORECASE,
)
"""`SCORE: 7`, `SCORE: 7/10`, `SCORE: 6.5 → rounded to 7` alone on its line, markdown removed."""
_STRICT_LINE_REACH = 3
"""The strict line counts on one of the answer's last this many non-empty lines."""

_THINK_BLOCK = re.compile(r"<(think|thinking)>(.*?)</\1>", re.IGNORECASE | re.DOTALL)
_THINK_OPEN = re.compile(r"<think(?:ing)?>", re.IGNORECASE)
_THINK_CLOSE = re.compile(r"</think(?:ing)?>", re.IGNORECASE)
_MARKDOWN = re.compile(r"\*\*|__|[*`]")
_LINE_PREFIX = re.compile(r"^(?:#+\s*|>\s*|[-+•]\s+|\d+[.)]\s+)+")


@dataclass(frozen=True)
class _Statement:
    """One place where the judge states a score, and how much it claims to be the verdict."""

    strength: int
    stated: float
    rounded: float | None
    scales: tuple[int, ...]
    """Every scale the judge named for this value (`/10`, `(out of 10)`, `%`)."""
    fractions: tuple[int, ...]
    """The denominators of the value written as a fraction (`2/5`), the working's included."""
    line: str
    line_number: int
    start: int
    end: int
    """Where the statement begins and its value ends, in the cleaned line."""
    unsettled: bool = False
    """The judge adjusted the value (`7, minus 1 for length`) without stating the result."""
    revises: bool = False
    """The statement itself changes the score (`I would lower this to 5`)."""
    whole: bool = False
    """Its label claims the whole answer (`Final …`, `Total …`, `Overall …`), not a criterion."""

    def readings(self) -> list[float]:
        """What the judge may mean, preferred first: `6.5, rounded to 7` means 7, on a decimal
        scale too, since the judge said what its result is."""
        return [self.stated] if self.rounded is None else [self.rounded, self.stated]

    def is_sub_score(self, max_score: int) -> bool:
        """`Score: 1/2` on a 0–10 template scores a criterion: a part is worth less than the
        whole. `Total: 7/10` or `Score: 7/10` on a 0–9 one is the judge's verdict on the wrong
        scale (a `scale_mismatch`), not a part to drop."""
        return not self.whole and any(d < max_score for d in self.fractions)


def _clean(line: str) -> str:
    return _LINE_PREFIX.sub("", _MARKDOWN.sub("", line).strip()).strip()


def _split_reasoning(text: str) -> tuple[str, str]:
    """(answer, reasoning). Reasoning is `<think>` blocks, text before an orphan `</think>` (the
    opening tag was part of the prompt) and an unterminated `<think>` (the model ran out of
    tokens while still thinking)."""
    reasoning = [m.group(2) for m in _THINK_BLOCK.finditer(text)]
    answer = _THINK_BLOCK.sub("\n", text)
    closes = list(_THINK_CLOSE.finditer(answer))
    if closes:
        reasoning.append(answer[: closes[-1].start()])
        answer = answer[closes[-1].end() :]
    opening = _THINK_OPEN.search(answer)
    if opening:
        reasoning.append(answer[opening.end() :])
        answer = answer[: opening.start()]
    return answer, "\n".join(reasoning)


def _scales(match: re.Match[str]) -> tuple[int, ...]:
    groups = match.groupdict()
    named = tuple(int(groups[name]) for name in ("scale", "denominator") if groups.get(name))
    return named + ((100,) if groups.get("percent") else ())


def _fractions(match: re.Match[str]) -> tuple[int, ...]:
    return (int(match["denominator"]),) if match.groupdict().get("slash") else ()


def _statement(
    match: re.Match[str],
    strength: int,
    line: str,
    line_number: int,
    *,
    scales: tuple[int, ...] = (),
    fractions: tuple[int, ...] = (),
    unsettled: bool = False,
    whole: bool = False,
) -> _Statement:
    """`line` is what the report shows; a rounding is looked for after the value on its own line."""
    rounding = _ROUNDING.search(match.string[match.end() : match.end() + _NEARBY])
    return _Statement(
        strength=strength,
        stated=float(match["number"]),
        rounded=float(rounding["rounded"]) if rounding else None,
        scales=scales + _scales(match),
        fractions=fractions + _fractions(match),
        line=line,
        line_number=line_number,
        start=match.start(),
        end=match.end(),
        unsettled=unsettled,
        whole=whole or strength == _FINAL,
    )


def _verdict_statement(
    text: str,
    value: re.Match[str],
    start: int,
    strength: int,
    line_number: int,
    *,
    counts_allowed: bool = False,
    revises: bool = False,
    whole: bool = False,
) -> _Statement | None:
    """What the statement from `start` to `value` says, or None when its context shows it is no
    verdict: a criterion's score, a tentative one, or a count. Working after the value moves the
    statement to its result. After a change, `for …` is its reason (`lower this to 5 for length`)."""
    rest = _after(text, value)
    sentence = re.split(r"[.!?;]\s", text[max(0, start - _NEARBY) : start])[-1]
    if _TENTATIVE.search(sentence) or (not counts_allowed and _COUNTED.match(rest)):
        return None
    if _FOR_A_CRITERION.match(rest) and not revises:
        return None
    adjusted = _ADJUSTMENT.match(text, value.end())
    reach = value.end() + _WORKING_REACH
    results = [
        result
        for result in (_ADJUSTED_RESULT.finditer(text, value.end(), reach) if adjusted else ())
        if not _COUNTED.match(_after(text, result))
    ]
    if results:
        statement = _statement(
            results[-1], strength, text, line_number, scales=_scales(value), fractions=_fractions(value), whole=whole
        )
    else:
        statement = _statement(value, strength, text, line_number, unsettled=adjusted is not None, whole=whole)
    return replace(statement, start=start, revises=revises)


def _after(text: str, match: re.Match[str]) -> str:
    """What follows a value, as far as it can qualify it."""
    return text[match.end() : match.end() + _NEARBY].lstrip()


def _names_the_verdict(line: str, label: re.Match[str]) -> bool:
    clause = re.split(r"[.,;:!?()|—]|\s[-–]\s", line[max(0, label.start() - _NEARBY) : label.start()])[-1]
    before = re.findall(r"[A-Za-z']+", clause)
    return not before or before[-1].lower() in _WORDS_BEFORE_AN_OVERALL_LABEL or before[-1].endswith("'s")


def _label_strength(label: re.Match[str]) -> int:
    return _FINAL if label["final"] else _OVERALL


def _claims_the_whole(label: re.Match[str]) -> bool:
    return bool(label["final"]) or label.group(0).lower().startswith(("total", "overall"))


def _table_row_statements(line: str, line_number: int) -> list[_Statement]:
    """A row whose first cell is an overall label (`| **Total** | 5/9 |`), with a rounding stated
    in a later cell (`| **Total** | 7.25/10 | rounded to 7/10 |`); criterion rows are sub-scores
    and are not read."""
    cells = [_clean(cell) for cell in line.strip().strip("|").split("|")]
    label = _LABEL_ONLY.fullmatch(cells[0]) if cells else None
    if not label:
        return []
    for index, cell in enumerate(cells[1:], start=1):
        value = _BARE_VALUE.fullmatch(cell)
        if value:
            statement = _statement(value, _label_strength(label), line.strip(), line_number, whole=_claims_the_whole(label))
            rounding = _ROUNDING.search(" | ".join(cells[index + 1 :]))
            if statement.rounded is None and rounding:
                statement = replace(statement, rounded=float(rounding["rounded"]))
            return [statement]
    return []


def _line_statements(line: str, line_number: int) -> list[_Statement]:
    text = _clean(line)
    found: list[_Statement] = []
    taken_until = 0
    for label in _LABEL.finditer(text):
        if label.start() < taken_until or not _names_the_verdict(text, label):
            continue
        value = _AFTER_LABEL.match(text, label.end())
        if not value:
            continue
        strength = _label_strength(label)
        counts_allowed = value["separator"] in (":", "=") or value["sum"] is not None
        whole = _claims_the_whole(label)
        statement = _verdict_statement(
            text, value, label.start(), strength, line_number, counts_allowed=counts_allowed, whole=whole
        )
        if statement is None:
            continue
        found.append(statement)
        taken_until = value.end()
        while listed := _LISTED_VALUE.match(text, taken_until):
            found.append(_statement(listed, strength, text, line_number, whole=whole))
            taken_until = listed.end()
    for pattern, strength in ((_BOXED, _FINAL), (_FIRST_PERSON_VERDICT, _OVERALL), (_CHANGED_TO, _OVERALL)):
        for match in pattern.finditer(text):
            revises = pattern is _CHANGED_TO
            statement = _verdict_statement(text, match, match.start(), strength, line_number, revises=revises)
            found += [statement] if statement else []
    if not found and ":" not in text:
        for match in _ARITHMETIC.finditer(text):
            statement = _verdict_statement(text, match, match.start(), _INTERMEDIATE, line_number)
            found += [statement] if statement else []
    return found


def _find_statements(lines: list[str]) -> list[_Statement]:
    """Every score statement in the answer, in reading order."""
    statements: list[_Statement] = []
    for number, line in enumerate(lines):
        if line.startswith("|"):
            statements += _table_row_statements(line, number)
            continue
        statements += _line_statements(line, number)
        label_only = _LABEL_ONLY.fullmatch(_clean(line))
        if label_only and number + 1 < len(lines):
            value = _BARE_VALUE.fullmatch(_clean(lines[number + 1]))
            if value:
                joined = f"{line} {lines[number + 1]}"
                strength, whole = _label_strength(label_only), _claims_the_whole(label_only)
                statements.append(_statement(value, strength, joined, number + 1, whole=whole))
    if not statements:
        last = _BARE_LAST_LINE.fullmatch(_clean(lines[-1]))
        if last:
            statements.append(_statement(last, _INTERMEDIATE, lines[-1], len(lines) - 1))
    return statements


def _revisions(lines: list[str], statements: list[_Statement]) -> list[tuple[int, int]]:
    """Where the judge changes its mind, as (line, offset in the cleaned line)."""
    markers = [(number, m.start()) for number, line in enumerate(lines) for m in _REVISION.finditer(_clean(line))]
    return markers + [(s.line_number, s.start) for s in statements if s.revises]


def _strict_verdict(lines: list[str], statements: list[_Statement]) -> _Statement | None:
    """The line the templates ask for, when the judge wrote it once, on one of the last lines, with
    no score or change of mind after it: that is the verdict, whatever the working above it says.
    Written twice, early, or followed by more, the answer is read like any other."""
    strict = [(n, m) for n, line in enumerate(lines) if (m := _STRICT_SCORE_LINE.fullmatch(_clean(line)))]
    if len(strict) != 1 or strict[0][0] < len(lines) - _STRICT_LINE_REACH:
        return None
    number, match = strict[0]
    after = lines[number + 1 :]
    if any(s.line_number > number for s in statements) or any(_REVISION.search(_clean(line)) for line in after):
        return None
    scales = tuple(int(match[group]) for group in ("denominator", "rounded_scale") if match[group])
    return _Statement(
        strength=_FINAL,
        stated=float(match["number"]),
        rounded=float(match["rounded"]) if match["rounded"] else None,
        scales=scales,
        fractions=scales,
        line=lines[number],
        line_number=number,
        start=0,
        end=match.end(),
        whole=True,
    )


def _choose_verdict(
    statements: list[_Statement], revisions: list[tuple[int, int]]
) -> tuple[list[_Statement], float | None, str]:
    """The statements that state the verdict, the one value they all admit (None if there is none)
    and why there is none when it is not plain disagreement. A revision supersedes every statement
    whose value it follows, however strongly labelled; a revision that states no new value leaves
    no verdict rather than the superseded one."""
    ends = [(s.line_number, s.end) for s in statements]
    first_end = min(ends)
    cut = max((revision for revision in revisions if revision > first_end), default=None)
    current = [s for s, end in zip(statements, ends, strict=True) if cut is None or end > cut]
    considered = current or statements
    strongest = max(s.strength for s in considered)
    chosen = [s for s in considered if s.strength == strongest]
    if not current:
        return chosen, None, "revised later without a new score"
    if any(s.unsettled for s in chosen):
        return chosen, None, "adjusted without a stated result"
    preferred = chosen[-1].readings()
    agreed = [v for v in preferred if all(v in s.readings() for s in chosen)]
    return chosen, agreed[0] if agreed else None, ""


def parse_final_verdict(text: str, *, max_score: int = DEFAULT_MAX_SCORE, allow_decimals: bool = False) -> ScoreResult:
    """Reasoning that never reached an answer (only `<think>`, or an unterminated one) is not read:
    judges change their minds while thinking, and a score it did not commit to is an invented one.
    Sub-scores are dropped first, so they can neither contradict the strict line nor the verdict."""
    name = "final_verdict"
    if not text.strip():
        return ScoreResult(parser=name, error="empty_response")
    answer, reasoning = _split_reasoning(text)
    if not answer.strip():
        return ScoreResult(
            parser=name,
            error="no_score_found: only <think> reasoning, no answer after it",
            lines_examined=_non_empty_lines(reasoning)[-3:],
        )
    lines = _non_empty_lines(answer)
    statements = [s for s in _find_statements(lines) if not s.is_sub_score(max_score)]
    strict = _strict_verdict(lines, statements)
    verdict: float | None
    if strict:
        chosen, verdict, doubt = [strict], strict.readings()[0], ""
    elif statements:
        chosen, verdict, doubt = _choose_verdict(statements, _revisions(lines, statements))
    else:
        return ScoreResult(parser=name, error="no_score_found", lines_examined=lines[-3:])
    candidates = list(dict.fromkeys(s.readings()[0] for s in chosen))
    shown = list(dict.fromkeys(s.line for s in chosen))
    result = {"parser": name, "candidates": candidates, "lines_examined": shown}
    if verdict is None:
        listed = ", ".join(_format(v) for v in candidates)
        return ScoreResult(**result, error=f"ambiguous: {listed}" + (f" ({doubt})" if doubt else ""))
    error = _verdict_error(verdict, chosen, max_score, allow_decimals)
    return ScoreResult(**result, score=None if error else verdict, error=error)


def _verdict_error(verdict: float, chosen: list[_Statement], max_score: int, allow_decimals: bool) -> str | None:
    """A value on another scale is not rescaled: the judge was asked for 0..max_score, and
    guessing what its 7/10 means on 0..9 would be inventing."""
    for statement in chosen:
        for scale in statement.scales:
            if scale != max_score:
                shown = f"{_format(statement.stated)}/{scale}"
                return f"scale_mismatch: judge wrote {shown} but the template's max_score is {max_score}"
    range_error = _range_error(verdict, max_score)
    if range_error:
        return range_error
    if not allow_decimals and verdict != int(verdict):
        return f"out_of_range: {_format(verdict)} is not a whole number and decimals are not allowed"
    return None


# ---- registry ----------------------------------------------------------------------------------

PARSERS: dict[str, ScoreParser] = {
    "final_verdict": parse_final_verdict,
    "in_last_line": parse_in_last_line,
}


def find_parser(name: str) -> ScoreParser:
    """The strategy called `name`; an unknown name is an error that lists the valid ones."""
    if name not in PARSERS:
        raise ValueError(f"unknown score parser {name!r}; valid parsers: {', '.join(sorted(PARSERS))}")
    return PARSERS[name]


def parse_score(
    text: str, *, parser: str = DEFAULT_PARSER, max_score: int = DEFAULT_MAX_SCORE, allow_decimals: bool = False
) -> ScoreResult:
    return find_parser(parser)(text, max_score=max_score, allow_decimals=allow_decimals)
