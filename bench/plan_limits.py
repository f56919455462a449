"""How long `daydream plan` takes, and how much memory it holds, to refuse an experiment too big to run.

Each case is the small bad-input base (tests/data/bad_inputs/_base) with one thing made huge: 40
concepts at k_max = 20, or replicates = 1000000000 (the cases of tests/unit/test_plan_limits.py);
and, for comparison, a plan just under the default limit that `plan` accepts and writes. `plan`
runs as a child process under an address-space cap (so a plan that enumerates cannot take the
machine with it) and a wall-clock timeout; the figures are its wall time, its peak RSS, its exit
code and the last line it printed.

    uv run python bench/plan_limits.py [--cap-gb 3] [--timeout-s 120]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

from tests.unit.test_plan_limits import (
    BASE_RAW,
    REPO,
    a_billion_replicates,
    concepts_at_k_max,
    forty_concepts_at_k_max_20,
    plan_in_a_capped_process,
)

CASES = {
    "40 concepts, k_max 20": forty_concepts_at_k_max_20,
    "replicates 1000000000": a_billion_replicates,
    "18 concepts, k_max 7 (63,648 calls: accepted, planned and written)": partial(
        concepts_at_k_max, concepts=18, k_max=7
    ),
}


def measure(name: str, make, cap_bytes: int, timeout_s: float) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="dd-plan-limits-") as root:
        data = Path(root) / "data"
        shutil.copytree(BASE_RAW, data / "1_raw")
        make(data / "1_raw")
        script = plan_in_a_capped_process(cap_bytes)
        log = Path(root) / "plan.log"
        with log.open("w", encoding="utf-8") as output_file:
            child = subprocess.Popen([sys.executable, "-c", script, str(data)], stdout=output_file,
                                     stderr=subprocess.STDOUT, cwd=REPO)
            exit_code, usage, seconds = wait_measured(child, timeout_s)
        output = log.read_text(encoding="utf-8", errors="replace").strip()
        if exit_code is None:
            output += f"\nstill running after {timeout_s:g} s (killed)"
    lines = [line for line in output.splitlines() if line.strip()]
    return {"case": name, "exit_code": exit_code, "seconds": round(seconds, 2),
            "peak_rss_mib": round(usage.ru_maxrss / 1024, 1), "last_line": lines[-1] if lines else ""}


def wait_measured(child: subprocess.Popen, timeout_s: float) -> tuple[int | None, resource.struct_rusage, float]:
    """Exit code (None when killed at the timeout), the child's own resource usage, wall seconds."""
    started = time.monotonic()
    while True:
        pid, status, usage = os.wait4(child.pid, os.WNOHANG)
        seconds = time.monotonic() - started
        if pid:
            return os.waitstatus_to_exitcode(status), usage, seconds
        if seconds > timeout_s:
            child.kill()
            _, _, usage = os.wait4(child.pid, 0)
            return None, usage, seconds
        time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cap-gb", type=float, default=3.0, help="address-space cap of the plan process")
    parser.add_argument("--timeout-s", type=float, default=120.0)
    arguments = parser.parse_args()
    cap = int(arguments.cap_gb * 1024**3)
    results = [measure(name, make, cap, arguments.timeout_s) for name, make in CASES.items()]
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
