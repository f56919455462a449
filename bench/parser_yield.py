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
    parsers = {f"old ({options.old_commit})": old_scoring(options.old_commit), "current": scoring}
    outcomes = {name: [outcome(module, answer) for answer in corpus] for name, module in parsers.items()}
    scorable = sum(answer.score is not None for answer in corpus)

    table = Table(title=f"final_verdict on {len(corpus)} labelled judge answers ({scorable} with a verdict)")
    for column in ("parser", "scored right", "errors where a verdict exists", "wrong scores", "right overall"):
        table.add_column(column, justify="right" if column != "parser" else "left")
    for name, results in outcomes.items():
        counts = Counter(kind for kind, _ in results)
        scored_right = sum(kind == "right" and a.score is not None for (kind, _), a in zip(results, corpus, strict=True))
        table.add_row(
            name, f"{scored_right}/{scorable}", str(counts["error"]), str(counts["wrong"]),
            f"{counts['right']}/{len(corpus)}",
        )
    console = Console()
    console.print(table)
    if options.show_misses:
        misses = Table(title="answers not read right")
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
