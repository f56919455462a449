"""How many labelled judge answers each parser scores, and how many it scores wrong.

Reads tests/data/judge_answers/ with the current `final_verdict` and with the one of commit
d312e84 (before issue 15), side by side. No broker, no timing: the figure is a count.

    uv run python bench/parser_yield.py [--old-commit SHA] [--show-misses]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import types
from collections import Counter
from pathlib import Path

from common import report
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from services.parser import scoring  # noqa: E402
from tests.judge_corpus import JudgeAnswer, load_corpus  # noqa: E402

OLD_COMMIT = "d312e84"


def old_scoring(commit: str) -> types.ModuleType:
    """The parser module as it was at `commit`, loaded from git. It imported DEFAULT_PARSER from
    shared.inputs, which no longer holds it; the registry in shared.parsers is the same name."""
    source = subprocess.run(
        ["git", "show", f"{commit}:services/parser/scoring.py"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout
    source = source.replace("from shared.inputs import DEFAULT_PARSER", "from shared.parsers import DEFAULT_PARSER")
    module = types.ModuleType(f"scoring_{commit}")
    sys.modules[module.__name__] = module  # dataclasses look their module up while being built
    exec(compile(source, f"{commit}:services/parser/scoring.py", "exec"), module.__dict__)
    return module


def outcome(module: types.ModuleType, answer: JudgeAnswer) -> tuple[str, str]:
    """(`right` | `error` | `wrong`, what the parser said). An error where the label is an error
    counts as right: the answer has no verdict to find."""
    result = module.parse_score(answer.text, parser="final_verdict", **answer.options)
    said = f"{result.score:g}" if result.score is not None else f"ERROR {result.error}"
    if result.score is None:
        return ("right" if answer.error is not None else "error"), said
    return ("right" if result.score == answer.score else "wrong"), said


def main() -> None:
    arguments = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    arguments.add_argument("--old-commit", default=OLD_COMMIT)
    arguments.add_argument("--show-misses", action="store_true", help="list every answer not read right")
    options = arguments.parse_args()
    corpus = load_corpus()
    parsers = {options.old_commit: old_scoring(options.old_commit), "current": scoring}
    outcomes = {name: [outcome(module, answer) for answer in corpus] for name, module in parsers.items()}
    scorable = [answer.score is not None for answer in corpus]
    counts = {}
    for name, results in outcomes.items():
        kinds = Counter(kind for kind, _ in results)
        counts[name] = {
            "scored_right": sum(kind == "right" and s for (kind, _), s in zip(results, scorable, strict=True)),
            "errors_where_a_verdict_exists": kinds["error"],
            "wrong_scores": kinds["wrong"],
            "read_as_labelled": kinds["right"],
        }
    result = {"answers": len(corpus), "with_a_verdict": sum(scorable), "parsers": counts}
    old, new = counts[options.old_commit], counts["current"]
    rows = [
        ("answers (with a verdict)", f"{len(corpus)} ({sum(scorable)})"),
        (f"scored right ({options.old_commit} → current)", f"{old['scored_right']} → {new['scored_right']}"),
        ("errors where a verdict exists", f"{old['errors_where_a_verdict_exists']} → {new['errors_where_a_verdict_exists']}"),
        ("wrong scores", f"{old['wrong_scores']} → {new['wrong_scores']}"),
        ("read as labelled (errors included)", f"{old['read_as_labelled']} → {new['read_as_labelled']}"),
    ]
    report("parser_yield", result, rows)
    console = Console(width=200)
    if options.show_misses:
        misses = Table(title="answers not read as labelled")
        for column in ("answer", "label", *outcomes):
            misses.add_column(column)
        for index, answer in enumerate(corpus):
            said = [outcomes[name][index] for name in outcomes]
            if any(kind != "right" for kind, _ in said):
                label = f"{answer.score:g}" if answer.score is not None else f"ERROR {answer.error}"
                misses.add_row(f"{answer.file}:{answer.id}", label, *(f"{kind}: {text}" for kind, text in said))
        console.print(misses)


if __name__ == "__main__":
    main()
