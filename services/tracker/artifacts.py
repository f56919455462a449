"""Artifact files: written atomically, never silently overwritten.

Naming rule. A task's file is `<task_id><suffix>`, as in the original pipeline. Task ids recur across
experiments (they derive from combo, template and model), so when that name already holds
*different* content the file goes to `<task_id>.<experiment_id><suffix>`, and if that too holds
different content (a rerun inside the same experiment) to `<task_id>.<experiment_id>.<sha8><suffix>`,
a name fixed by the content itself. Identical content at any candidate is a no-op, so a redelivered
event rewrites nothing. Each file is chosen on its own; the call-record JSON names the prompt and
response files it belongs to, and the database row records the actual paths.

The tracker is the single writer of these directories, so check-then-replace cannot race.

Durability. Files are written without an fsync each; `Layout.sync()` makes every file written
since the last sync durable at once, and the tracker calls it before each commit (see
`rows.Rows.batch`): a committed row never names a file a power loss could take back, and a process
killed at any moment leaves its written files in the page cache, where they survive it.
"""

from __future__ import annotations

import csv
import ctypes
import hashlib
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from services.tracker.stages import StageRegistry
from shared.events import TASK_CREATED, CallRecord, EvaluationScored, TaskCreated, TaskFailed
from shared.files import atomic_write_bytes, atomic_write_text, csv_text

GENERATION_DIR = "3_generation"
EVALUATION_DIR = "4_evaluation"
CROSS_EXPERIMENT_DIR = "7_cross_experiment"
EXPERIMENTS_DIR = "experiments"
STAGE_DIRS = StageRegistry("artifact folder", generation=GENERATION_DIR, evaluation=EVALUATION_DIR)
TASK_FIELDS_NOT_KEPT = {"prompt", "evaluation_plan"}
"""The prompt has its own file; the evaluation plan is only for the evaluator's fan-out."""


def to_json(data: Any) -> str:
    """Stable text for the same data, so a redelivered event compares equal to what is on disk."""
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def content_digest(content: str) -> str:
    return hashlib.sha256(content.encode("utf-8")).hexdigest()[:8]


def write_once(directory: Path, names: Sequence[str], content: str) -> Path:
    """Write `content` under the first of `names` that is free or already holds it; the last
    resort is a name derived from the content's hash, so no existing file is ever replaced."""
    suffix = _suffix(names[-1])
    last_resort = f"{names[-1].removesuffix(suffix)}.{content_digest(content)}{suffix}"
    data = content.encode("utf-8")
    for name in [*names, last_resort]:
        path = directory / name
        existing = _read_or_none(path)
        if existing is None:
            _write_unsynced(path, data)
            return path
        if existing == data:
            return path
    raise FileExistsError(f"{directory / last_resort} holds different content under its own content hash")


def _suffix(name: str) -> str:
    """`.score.json` for `x.score.json`, `.txt` for `x.txt`: the part the hash goes in front of."""
    for suffix in (".score.json", ".json", ".txt"):
        if name.endswith(suffix):
            return suffix
    return Path(name).suffix


def task_artifact_names(task_id: str, experiment_id: str, suffix: str) -> list[str]:
    return [f"{task_id}{suffix}", f"{task_id}.{experiment_id}{suffix}"]


_UNSYNCED: list[Path] = []
"""Files written since the last `sync()`: the tracker is one writer per process."""


def _read_or_none(path: Path) -> bytes | None:
    """The file's bytes, None if there is no such file: one open where `exists` then a read took two."""
    try:
        with open(path, "rb") as stream:
            return stream.read()
    except FileNotFoundError:
        return None


def _write_unsynced(path: Path, content: bytes) -> None:
    """Atomic, but durable only at the next `sync()`."""
    atomic_write_bytes(path, content, fsync=False)
    _UNSYNCED.append(path)


def _syncfs():
    """Linux's syncfs(2): one flush of a whole file system, much cheaper than an fsync per file."""
    if not sys.platform.startswith("linux"):
        return None
    return getattr(ctypes.CDLL(None, use_errno=True), "syncfs", None)


SYNCFS = _syncfs()


def sync_written_files(data_dir: Path) -> None:
    """Makes every file written since the last call durable, with their names: one syncfs of the
    data directory's file system where there is one, else an fsync of each file and folder."""
    if not _UNSYNCED:
        return
    written = list(_UNSYNCED)
    if SYNCFS is not None:
        handle = os.open(data_dir, os.O_RDONLY)
        try:
            if SYNCFS(handle) != 0:
                raise OSError(ctypes.get_errno(), "syncfs failed", str(data_dir))
        finally:
            os.close(handle)
    else:
        for path in [*written, *{path.parent for path in written}]:
            handle = os.open(path, os.O_RDONLY)
            try:
                os.fsync(handle)
            finally:
                os.close(handle)
    del _UNSYNCED[: len(written)]


class Layout:
    """Where each artifact lives under the data directory."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir

    def sync(self) -> None:
        sync_written_files(self.data_dir)

    def prompts_dir(self, stage: str) -> Path:
        return self._stage_dir(stage) / f"{stage}_prompts"

    def responses_dir(self, stage: str) -> Path:
        return self._stage_dir(stage) / f"{stage}_responses"

    def _stage_dir(self, stage: str) -> Path:
        return self.data_dir / STAGE_DIRS[stage]

    def experiment_dir(self, experiment_id: str) -> Path:
        return self.data_dir / EXPERIMENTS_DIR / experiment_id

    def events_dir(self, experiment_id: str) -> Path:
        """The tracker's own records of an experiment, beside (not inside) the inputs snapshot."""
        return self.experiment_dir(experiment_id) / "events"

    def failures_dir(self, experiment_id: str) -> Path:
        return self.events_dir(experiment_id) / "failures"

    def cross_experiment_csv(self, stage: str) -> Path:
        return self.data_dir / CROSS_EXPERIMENT_DIR / f"{stage}_results.csv"

    def combo_mappings_csv(self) -> Path:
        return self.data_dir / "combo_mappings.csv"

    def relative(self, path: Path) -> str:
        return path.relative_to(self.data_dir).as_posix()

    def absolute(self, relative: str) -> Path:
        return self.data_dir / relative


@dataclass(frozen=True)
class ResultFiles:
    """Where one result's artifacts are, relative to the data directory."""

    prompt_path: str
    response_path: str
    call_path: str
    prompt_chars: int


def kept_task_fields(task: TaskCreated) -> dict[str, Any]:
    return task.model_dump(mode="json", exclude=TASK_FIELDS_NOT_KEPT)


def task_from_kept_fields(fields: dict[str, Any]) -> TaskCreated:
    """The task as the tracker needs it back; its prompt text lives in the prompt file."""
    return TASK_CREATED.validate_python({**fields, "prompt": ""})


def write_event_file(layout: Layout, experiment_id: str, name: str, event: Any) -> Path:
    return write_once(layout.events_dir(experiment_id), [name], to_json(event.model_dump(mode="json")))


def write_result_files(layout: Layout, stage: str, task: TaskCreated, call: CallRecord) -> ResultFiles:
    """Prompt, response and call record; the call record carries what the row needs (see `rebuild`)."""
    names = partial(task_artifact_names, task.task_id, task.experiment_id)
    prompt = write_once(layout.prompts_dir(stage), names(".txt"), task.prompt)
    response = write_once(layout.responses_dir(stage), names(".txt"), call.text)
    record: dict[str, Any] = {
        "experiment_id": task.experiment_id,
        "task_id": task.task_id,
        "stage": stage,
        "task": kept_task_fields(task),
        "call": call.model_dump(mode="json"),
        "prompt_path": layout.relative(prompt),
        "response_path": layout.relative(response),
        "prompt_chars": len(task.prompt),
    }
    call_file = write_once(layout.responses_dir(stage), names(".json"), to_json(record))
    return ResultFiles(
        prompt_path=layout.relative(prompt),
        response_path=layout.relative(response),
        call_path=layout.relative(call_file),
        prompt_chars=len(task.prompt),
    )


def write_score_file(layout: Layout, event: EvaluationScored) -> Path:
    task = event.task
    record = event.model_dump(mode="json")
    record["task"] = kept_task_fields(task)
    return write_once(
        layout.responses_dir("evaluation"),
        task_artifact_names(task.task_id, task.experiment_id, ".score.json"),
        to_json(record),
    )


MAX_NAME_BYTES = 255
"""The longest file name ext4, APFS and NTFS all take."""


def fitting_name(stem: str, suffix: str) -> str:
    """`stem + suffix`, or when that is too long for a file system a shortened stem made unique by
    its hash: a failure must be recordable even for the task whose name was the failure."""
    name = stem + suffix
    if len(name.encode("utf-8")) <= MAX_NAME_BYTES:
        return name
    return f"{stem.encode('utf-8')[:200].decode('utf-8', 'ignore')}.{content_digest(stem)}{suffix}"


def write_failure_file(layout: Layout, event: TaskFailed) -> Path:
    """The latest failure of a task is kept (a failure file is state, not a result)."""
    path = layout.failures_dir(event.experiment_id) / fitting_name(event.task_id, ".json")
    kept = _read_or_none(path)
    if kept is None or TaskFailed.model_validate_json(kept).emitted_at < event.emitted_at:
        _write_unsynced(path, to_json(event.model_dump(mode="json")).encode("utf-8"))
    return path


class CsvHeaderMismatch(ValueError):
    """Appending would put values under the wrong columns."""


def append_csv_rows(path: Path, columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> None:
    """Append lines (header first if the file is new) and flush them to disk before returning,
    so the caller may then mark the rows as appended."""
    path.parent.mkdir(parents=True, exist_ok=True)
    is_new = not path.exists() or path.stat().st_size == 0
    if not is_new:
        header = read_csv_header(path)
        if header != list(columns):
            raise CsvHeaderMismatch(
                f"{path}: its header ({', '.join(header)}) is not the expected {', '.join(columns)}; "
                "move the file aside and run `daydream rebuild` to write it afresh"
            )
    with path.open("a", encoding="utf-8", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(columns))
        if is_new:
            writer.writeheader()
        writer.writerows(rows)
        stream.flush()
        os.fsync(stream.fileno())


def read_csv_header(path: Path) -> list[str]:
    with path.open(encoding="utf-8", newline="") as stream:
        return next(csv.reader(stream), [])


def read_csv_rows(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open(encoding="utf-8", newline="") as stream:
        return list(csv.DictReader(stream))


def write_csv(path: Path, columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> None:
    """A whole derived table, replaced atomically."""
    atomic_write_text(path, csv_text(columns, rows))
