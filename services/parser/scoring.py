"""Judge text -> a score, or an explicit reason there is none.

A wrong score is worse than no score: it silently ranks the wrong essay first. So every strategy
either finds one verdict it can defend or returns an error code (`empty_response`,
`no_score_found`, `out_of_range`, `scale_mismatch`, `ambiguous`) with the lines it looked at.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from shared.inputs import DEFAULT_PARSER

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
        """The bare reason code, for counting failures by kind."""
        return self.error.split(":", 1)[0] if self.error else None


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
    r"(?:final|revised|updated)\s+(?:overall\s+|total\s+)?"
    r"(?:score|rating|grade|verdict|mark|evaluation|assessment|answer|total)"
)
_OVERALL_LABEL = r"(?:overall|total)\s+(?:score|rating|grade|mark)|score|total|overall|verdict|rating|grade"
_LABEL = re.compile(rf"\b(?:(?P<final>{_FINAL_LABEL})|(?P<overall>{_OVERALL_LABEL}))\b", re.IGNORECASE)
_LABEL_ONLY = re.compile(rf"(?:(?P<final>{_FINAL_LABEL})|(?P<overall>{_OVERALL_LABEL}))\s*[:\-–—]?", re.IGNORECASE)
_WORDS_BEFORE_AN_OVERALL_LABEL = {"the", "my", "our", "a", "an", "this", "its", "their", "your", "and", "so"}
"""Any other word right before `score` names a criterion (`Novelty score: 3`): a sub-score."""

_PARENTHETICAL = r"\([^()]*\)"
_SUM = rf"(?:{NUMBER}\s*(?:{_PARENTHETICAL}\s*)?\+\s*)+{NUMBER}\s*(?:{_PARENTHETICAL}\s*)?=\s*"
_VALUE = (
    rf"\[?(?P<number>{NUMBER})(?!\.?\d|\s*(?:[-–]|to)\s*\d|\s*(?:{_PARENTHETICAL}\s*)?\+)\]?"
    rf"(?:\s*(?:/|out\s+of)\s*(?P<denominator>\d+)|\s*(?P<percent>%))?"
)
_AFTER_LABEL = re.compile(
    rf"\s*(?:{_PARENTHETICAL}\s*)?(?P<separator>[:=\-–—]|\bis\b|\bof\b|\bwas\b)?\s*(?:an?\s+)?"
    rf"(?P<sum>{_SUM})?{_VALUE}",
    re.IGNORECASE,
)
_FIRST_PERSON_VERDICT = re.compile(
    r"\b(?:I|I'd|I'll|we)\b(?:\s+(?:would|will|can|must|therefore|thus|now))*\s+(?:give|rate|award|assign)\b"
    r"(?:\s+(?:it|this|the)(?:\s+(?!a\b|an\b|\d)\w+)?)?\s+(?:a\s+(?:score|rating|grade)\s+of\s+|an?\s+)?"
    rf"{_VALUE}",
    re.IGNORECASE,
)
_FOR_A_CRITERION = re.compile(r"for\s+(?!this\b|the\s+(?:essay|response|answer|text)\b)\w", re.IGNORECASE)
"""`Score: 2/2 for core concepts` scores one criterion."""
_ARITHMETIC = re.compile(rf"{_SUM}{_VALUE}", re.IGNORECASE)
_BARE_VALUE = re.compile(rf"{_VALUE}\s*[.!]?", re.IGNORECASE)
_BOXED = re.compile(rf"\\boxed\{{\s*{_VALUE}\s*\}}", re.IGNORECASE)
_ROUNDING = re.compile(
    rf"\bround(?:ed|s|ing)?(?:\s+(?:it|this|that))?(?:\s+(?:up|down))?\s+to\s+(?:an?\s+)?(?P<rounded>{NUMBER})",
    re.IGNORECASE,
)
_REVISION = re.compile(
    r"\b(?:revis\w*|actually|on\s+(?:second\s+thought|reflection)|reconsider\w*|upon\s+(?:further\s+)?"
    r"reflection|correct(?:ion|ed)|adjust\w*|chang\w+\s+(?:my|the)\s+(?:score|mind)|instead)\b",
    re.IGNORECASE,
)

_NEARBY = 80
"""Characters around a value that can qualify it (`Novelty score`, `rounded to 7`); bounded so
that a long paragraph full of the word `score` stays linear."""

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
    denominator: int | None
    line: str
    revises: bool

    def readings(self, allow_decimals: bool) -> list[float]:
        """What the judge may mean, preferred first: `6.5, rounded to 7` means 7 on a whole-number
        scale and 6.5 on a decimal one."""
        if self.rounded is None:
            return [self.stated]
        return [self.stated, self.rounded] if allow_decimals else [self.rounded, self.stated]


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


def _statement(match: re.Match[str], strength: int, line: str, revises: bool) -> _Statement:
    """`line` is what the report shows; a rounding is looked for after the value on its own line."""
    denominator = match["denominator"]
    rounding = _ROUNDING.search(match.string[match.end() : match.end() + _NEARBY])
    return _Statement(
        strength=strength,
        stated=float(match["number"]),
        rounded=float(rounding["rounded"]) if rounding else None,
        denominator=100 if match["percent"] else int(denominator) if denominator else None,
        line=line,
        revises=revises,
    )


def _names_the_verdict(line: str, label: re.Match[str]) -> bool:
    clause = re.split(r"[.,;:!?()|—]|\s[-–]\s", line[max(0, label.start() - _NEARBY) : label.start()])[-1]
    before = re.findall(r"[A-Za-z']+", clause)
    return not before or before[-1].lower() in _WORDS_BEFORE_AN_OVERALL_LABEL or before[-1].endswith("'s")


def _label_strength(label: re.Match[str]) -> int:
    return _FINAL if label["final"] else _OVERALL


def _table_row_statements(line: str, revises: bool) -> list[_Statement]:
    """A row whose first cell is an overall label (`| **Total** | 5/9 |`); criterion rows are
    sub-scores and are not read."""
    cells = [_clean(cell) for cell in line.strip().strip("|").split("|")]
    label = _LABEL_ONLY.fullmatch(cells[0]) if cells else None
    if not label:
        return []
    for cell in cells[1:]:
        value = _BARE_VALUE.fullmatch(cell)
        if value:
            return [_statement(value, _label_strength(label), line.strip(), revises)]
    return []


def _line_statements(line: str, revises: bool) -> list[_Statement]:
    text = _clean(line)
    found: list[_Statement] = []
    taken_until = 0
    for label in _LABEL.finditer(text):
        if label.start() < taken_until or not _names_the_verdict(text, label):
            continue
        value = _AFTER_LABEL.match(text, label.end())
        if not value:
            continue
        rest = text[value.end() :].strip()
        if value["separator"] is None and value["sum"] is None and rest and rest[0].isalnum():
            continue  # `Score 9 means ...` is a rubric echo, not a score
        if _FOR_A_CRITERION.match(rest):
            continue
        found.append(_statement(value, _label_strength(label), text, revises))
        taken_until = value.end()
    for pattern, strength in ((_BOXED, _FINAL), (_FIRST_PERSON_VERDICT, _OVERALL)):
        found += [
            _statement(m, strength, text, revises)
            for m in pattern.finditer(text)
            if not _FOR_A_CRITERION.match(text[m.end() :].strip())
        ]
    if not found and ":" not in text:
        found += [_statement(m, _INTERMEDIATE, text, revises) for m in _ARITHMETIC.finditer(text)]
    return found


def _find_statements(answer: str) -> list[_Statement]:
    """Every score statement in the answer, in reading order."""
    lines = _non_empty_lines(answer)
    statements: list[_Statement] = []
    for index, line in enumerate(lines):
        revises = any(_REVISION.search(near) for near in lines[max(0, index - 1) : index + 1])
        if line.startswith("|"):
            statements += _table_row_statements(line, revises)
            continue
        statements += _line_statements(line, revises)
        label_only = _LABEL_ONLY.fullmatch(_clean(line))
        if label_only and index + 1 < len(lines):
            value = _BARE_VALUE.fullmatch(_clean(lines[index + 1]))
            if value:
                joined = f"{line} {lines[index + 1]}"
                statements.append(_statement(value, _label_strength(label_only), joined, revises))
    if lines and not statements:
        last = _BARE_VALUE.fullmatch(_clean(lines[-1]))
        if last:
            statements.append(_statement(last, _INTERMEDIATE, lines[-1], False))
    return statements


def _choose_verdict(statements: list[_Statement], allow_decimals: bool) -> tuple[list[_Statement], float | None]:
    """The strongest statements, and the one value they all admit. A later statement that says it
    revises the earlier ones wins; otherwise disagreement has no verdict."""
    strongest = max(s.strength for s in statements)
    chosen = [s for s in statements if s.strength == strongest]
    preferred = chosen[-1].readings(allow_decimals)
    agreed = [v for v in preferred if all(v in s.readings(allow_decimals) for s in chosen)]
    if agreed:
        return chosen, agreed[0]
    if chosen[-1].revises:
        return [chosen[-1]], preferred[0]
    return chosen, None


def parse_final_verdict(text: str, *, max_score: int = DEFAULT_MAX_SCORE, allow_decimals: bool = False) -> ScoreResult:
    """Reasoning that never reached an answer (only `<think>`, or an unterminated one) is not read:
    judges change their minds while thinking, and a score it did not commit to is an invented one."""
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
    statements = _find_statements(answer)
    if not statements:
        return ScoreResult(parser=name, error="no_score_found", lines_examined=_non_empty_lines(answer)[-3:])
    chosen, verdict = _choose_verdict(statements, allow_decimals)
    candidates = list(dict.fromkeys(s.readings(allow_decimals)[0] for s in chosen))
    lines = list(dict.fromkeys(s.line for s in chosen))
    result = {"parser": name, "candidates": candidates, "lines_examined": lines}
    if verdict is None:
        return ScoreResult(**result, error="ambiguous: " + ", ".join(_format(v) for v in candidates))
    error = _verdict_error(verdict, chosen, max_score, allow_decimals)
    return ScoreResult(**result, score=None if error else verdict, error=error)


def _verdict_error(verdict: float, chosen: list[_Statement], max_score: int, allow_decimals: bool) -> str | None:
    """A fraction over another scale is not rescaled: the judge was asked for 0..max_score, and
    guessing what its 7/10 means on 0..9 would be inventing."""
    for statement in chosen:
        if statement.denominator is not None and statement.denominator != max_score:
            shown = f"{_format(statement.stated)}/{statement.denominator}"
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


def parse_score(
    text: str, *, parser: str = DEFAULT_PARSER, max_score: int = DEFAULT_MAX_SCORE, allow_decimals: bool = False
) -> ScoreResult:
    strategy = PARSERS.get(parser)
    if strategy is None:
        raise ValueError(f"unknown score parser {parser!r}; valid parsers: {', '.join(sorted(PARSERS))}")
    return strategy(text, max_score=max_score, allow_decimals=allow_decimals)
