"""`daydream view`: serve the viewer for one data directory on localhost."""

from __future__ import annotations

from pathlib import Path

import typer
import uvicorn

from daydream import options
from daydream.viewer.app import create_app


def view(
    data: Path = options.RECORDED_DATA,
    port: int = typer.Option(8765, "--port", help="Port on 127.0.0.1."),
) -> None:
    """Open the results in the browser: leaderboards, heatmaps, judge agreement."""
    typer.echo(f"DayDream viewer on http://127.0.0.1:{port}/ (Ctrl-C stops)")
    uvicorn.run(create_app(data), host="127.0.0.1", port=port, log_level="warning")
