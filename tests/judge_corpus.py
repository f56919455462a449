"""The labelled judge answers of tests/data/judge_answers/, read once for the test and the bench."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

CORPUS_DIR = Path(__file__).parent / "data" / "judge_answers"


@dataclass(frozen=True)
class JudgeAnswer:
    id: str
    file: str
    text: str
    max_score: int
    allow_decimals: bool
    score: float | None = None
    error: str | None = None
    """The reason code a reader must give when the answer has no defensible verdict."""
    candidates: list[float] | None = None
    shape: str = ""
    miss: str | None = None
    """Why the parser is known to give an error for this labelled score (never a wrong score)."""

    def __post_init__(self) -> None:
        if (self.score is None) == (self.error is None):
            raise ValueError(f"{self.file}: {self.id} needs exactly one of score and error")
        if self.miss and self.score is None:
            raise ValueError(f"{self.file}: {self.id}: a miss is a labelled score the parser does not find")

    @property
    def options(self) -> dict:
        return {"max_score": self.max_score, "allow_decimals": self.allow_decimals}


def load_corpus(directory: Path = CORPUS_DIR) -> list[JudgeAnswer]:
    """Every answer, file defaults (`max_score`, `allow_decimals`) applied; ids are unique."""
    answers: list[JudgeAnswer] = []
    for path in sorted(directory.glob("*.toml")):
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        defaults = {key: data[key] for key in ("max_score", "allow_decimals") if key in data}
        answers += [JudgeAnswer(file=path.name, **(defaults | entry)) for entry in data["answers"]]
    ids = [answer.id for answer in answers]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ValueError(f"duplicate answer ids: {', '.join(duplicates)}")
    return answers
