"""Writing text files that readers and crashes never see half-done, and the CSV text they hold."""

from __future__ import annotations

import csv
import io
import os
import secrets
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

TEMPORARY_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL
"""O_EXCL: a temporary name already taken is never shared, another is drawn."""


def atomic_write_bytes(path: Path, content: bytes, *, fsync: bool = True) -> None:
    """Readers see the old file or the new one, never half of one; fsync so a crash after the
    rename cannot leave an empty file under the new name. `fsync=False` is for a caller that
    makes many files durable at once (the tracker, once per batch). Plain os calls: the tracker
    writes several files per LLM call, and `mkstemp`, a `mkdir` per file and a buffered file
    object cost more than the write."""
    handle, temporary = _open_temporary(path)
    try:
        with memoryview(content) as remaining:
            while remaining:
                remaining = remaining[os.write(handle, remaining):]
        if fsync:
            os.fsync(handle)
        os.close(handle)
        handle = -1
        os.replace(temporary, path)
    except BaseException:
        if handle >= 0:
            os.close(handle)
        temporary.unlink(missing_ok=True)
        raise


def _open_temporary(path: Path) -> tuple[int, Path]:
    """A new file beside `path`, readable by its owner only (as `mkstemp` made it), named
    `.<name>.<8 random hex>.tmp` as `shared.ids.LONGEST_NAME_EXTRA` budgets; the folder is made
    only when the open finds it missing."""
    while True:
        temporary = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            try:
                return os.open(temporary, TEMPORARY_FLAGS, 0o600), temporary
            except FileNotFoundError:
                path.parent.mkdir(parents=True, exist_ok=True)
                return os.open(temporary, TEMPORARY_FLAGS, 0o600), temporary
        except FileExistsError:
            continue


def atomic_write_text(path: Path, content: str, *, fsync: bool = True) -> None:
    atomic_write_bytes(path, content.encode("utf-8"), fsync=fsync)


def csv_text(
    columns: Sequence[str],
    rows: Iterable[Mapping[str, Any]],
    *,
    header: bool = True,
    lineterminator: str = "\r\n",
) -> str:
    """Rows as CSV text. The line ending is the caller's: each table keeps the bytes it has
    always had, so files written before and after compare equal."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator=lineterminator)
    if header:
        writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()
