"""DayDream's Python door: `daydream.load` reads recorded results as tables. It is imported on
first use, so the CLI, which imports this package first, starts without SQLAlchemy."""

from typing import Any

__all__ = ["load"]


def __getattr__(name: str) -> Any:
    if name == "load":
        from daydream.export import load

        return load
    raise AttributeError(f"module 'daydream' has no attribute {name!r}")
