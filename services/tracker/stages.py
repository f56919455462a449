"""The result stages the tracker knows, as lookups that fail loudly on any other stage.

Everything that differs by stage (folder, table, CSV columns, completeness rule, store function) is
a `StageRegistry` keyed by stage name: adding a third stage means adding its entry to each registry,
and a stage missing from one raises `UnknownStage` instead of landing in another stage's folders."""

from __future__ import annotations

from typing import TypeVar

RESULT_STAGES = ("generation", "evaluation")

Value = TypeVar("Value")


class UnknownStage(KeyError):
    """A stage no registry entry was written for."""


class StageRegistry(dict[str, Value]):
    """A dict of per-stage values whose missing key names the stage and the registry."""

    def __init__(self, what: str, **by_stage: Value) -> None:
        super().__init__(by_stage)
        self.what = what

    def __missing__(self, stage: str) -> Value:
        raise UnknownStage(f"no {self.what} for stage {stage!r}; known stages: {', '.join(self)}")
