"""The import layers hold: shared/ <- services/<name>/ <- daydream/. Nothing imports upward, and
no service imports another (services/llm_worker is the library the two LLM services share)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHARED_LIBRARY_SERVICES = {"llm_worker"}


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def violations() -> list[str]:
    found = []
    for path in sorted((ROOT / "shared").rglob("*.py")):
        found += [f"{path.relative_to(ROOT)} imports {name}" for name in imports_of(path)
                  if name.split(".")[0] in {"services", "daydream"}]
    for path in sorted((ROOT / "services").rglob("*.py")):
        own = path.relative_to(ROOT / "services").parts[0]
        for name in imports_of(path):
            parts = name.split(".")
            if parts[0] == "daydream":
                found.append(f"{path.relative_to(ROOT)} imports {name}")
            elif parts[0] == "services" and len(parts) > 1 and parts[1] not in {own, *SHARED_LIBRARY_SERVICES}:
                found.append(f"{path.relative_to(ROOT)} imports another service: {name}")
    return found


def test_nothing_imports_upward_and_no_service_imports_another() -> None:
    assert violations() == []


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    upward = tmp_path / "bad.py"
    upward.write_text("from daydream.cli import app\nimport services.tracker.db\n", encoding="utf-8")
    assert imports_of(upward) == {"daydream.cli", "services.tracker.db"}
