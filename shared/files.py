"""Writing text files that readers and crashes never see half-done, and the CSV text they hold."""

from __future__ import annotations

import csv
import io
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: Path, content: bytes, *, fsync: bool = True) -> None:
    """Readers see the old file or the new one, never half of one; fsync so a crash after the
    rename cannot leave an empty file under the new name. `fsync=False` is for a caller that
    makes many files durable at once (the tracker, once per batch)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(content)
            if fsync:
                stream.flush()
                os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


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
