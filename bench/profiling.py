"""Sampling a running service with py-spy and folding its raw stacks into a few readable lists."""

from __future__ import annotations

import re
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

_FRAME = re.compile(r"^(?P<function>.*?) \((?P<file>[^:()]+)(?::\d+)?\)$")
IDLE_LEAVES = {("Condition.wait", "threading"), ("EpollSelector.select", "selectors")}


def start_py_spy(pid: int, out: Path, seconds: int) -> subprocess.Popen:
    """Raw (collapsed) stacks, one line per distinct stack with its sample count."""
    return subprocess.Popen(
        ["py-spy", "record", "--gil", "--format", "raw", "-o", str(out), "-p", str(pid), "-d", str(seconds)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )


def stop_py_spy(process: subprocess.Popen, timeout_s: float = 60.0) -> None:
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.terminate()
        process.wait()


def _frames(stack: str) -> list[tuple[str, str]]:
    frames = []
    for frame in stack.split(";"):
        match = _FRAME.match(frame.strip())
        frames.append((match["function"], match["file"]) if match else (frame.strip(), ""))
    return frames


def _place(file: str) -> str:
    """`services/tracker/recorder.py` for our code, the top package (`sqlalchemy`, `asyncio`) or
    module (`tempfile`) for the rest; py-spy names files relative to their sys.path entry."""
    for ours in ("services/", "shared/", "daydream/"):
        if ours in file:
            return ours + file.split(ours, 1)[1]
    parts = Path(file).parts
    if "site-packages" in parts:
        parts = parts[parts.index("site-packages") + 1:]
    return parts[0].removesuffix(".py") if parts else file


def _idle(frames: list[tuple[str, str]]) -> bool:
    """A worker thread parked on its queue is waiting, not working."""
    function, file = frames[-1]
    return (function, _place(file)) in IDLE_LEAVES


def summarise(raw: Path, top: int = 20) -> dict[str, Any]:
    """Inclusive time of our own functions (where the time goes, by intent), self time of every
    function (what actually burns it), and self time by package; idle samples left out."""
    inclusive: Counter[str] = Counter()
    leaf: Counter[str] = Counter()
    by_library: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        samples = int(count)
        frames = _frames(stack)
        if _idle(frames):
            continue
        total += samples
        ours = {f"{function} ({_place(file)})" for function, file in frames
                if _place(file).startswith(("services/", "shared/"))}
        for name in ours:
            inclusive[name] += samples
        function, file = frames[-1]
        leaf[f"{function} ({_place(file)})"] += samples
        by_library[_place(frames[-1][1])] += samples

    def shares(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(name, round(100 * samples / total, 1)) for name, samples in counter.most_common(top)]

    return {"samples": total, "inclusive_pct_ours": shares(inclusive), "self_pct": shares(leaf),
            "self_pct_by_library": shares(by_library)}
