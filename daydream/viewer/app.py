"""The viewer's web app: server-rendered HTML, inline SVG, nothing fetched from the internet."""

from __future__ import annotations

from html import escape
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

from daydream.viewer import data
from daydream.viewer.stats import Estimate
from services.tracker.db import engine_for
from services.tracker.views import Views

STYLE = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
         "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}.flag{color:#b00}")


def _page(title: str, body: str) -> HTMLResponse:
    return HTMLResponse(f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(title)}</title>"
                        f"<style>{STYLE}</style></head><body><h1>{escape(title)}</h1>{body}</body></html>")


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def _interval(estimate: Estimate) -> str:
    return "–" if estimate.low is None else f"[{estimate.low:.2f}, {estimate.high:.2f}]"


def _scatter(points: list[tuple[float, float]], size: int = 160) -> str:
    if not points:
        return ""
    top = max(max(p) for p in points) or 1
    dots = "".join(f"<circle cx='{10 + x / top * (size - 20):.1f}' cy='{size - 10 - y / top * (size - 20):.1f}'"
                   f" r='3' fill='#36c' fill-opacity='0.5'/>" for x, y in points)
    return f"<svg width='{size}' height='{size}' style='border:1px solid #ccc'>{dots}</svg>"


def create_app(data_dir: Path) -> Starlette:
    engine = engine_for(data_dir)
    views = Views(data_dir, engine)

    async def index(_request: Request) -> HTMLResponse:
        items = "".join(f"<li><a href='/experiment/{escape(eid)}'>{escape(eid)}</a></li>"
                        for eid in views.experiment_ids())
        return _page("DayDream experiments", f"<ul>{items or '<li>none recorded yet</li>'}</ul>")

    async def experiment(request: Request) -> HTMLResponse:
        experiment_id = request.path_params["experiment_id"]
        if experiment_id not in views.experiment_ids():
            return HTMLResponse(f"unknown experiment {escape(experiment_id)}", status_code=404)
        rows = data.scores(engine, experiment_id)
        body = [f"<p>parse-failure rate: {_fmt(data.parse_failure_rate(rows))} of {len(rows)} answers</p>"]
        for rubric, entries in data.leaderboard(rows).items():
            lines = "".join(
                f"<tr><td>{escape(template)}</td><td>{escape(model)}</td><td class='mean'>{_fmt(e.value)}</td>"
                f"<td>{_interval(e)}</td><td>{e.n}</td></tr>" for template, model, e in entries)
            body.append(f"<h2>{escape(rubric)}</h2><table class='leaderboard'><tr><th>template</th><th>model</th>"
                        f"<th>mean</th><th>95% CI</th><th>n</th></tr>{lines}</table>")
        alpha, pairs = data.agreement(rows)
        body.append(f"<h2>Judge agreement</h2><p>ordinal Krippendorff's alpha: <b id='alpha'>{_fmt(alpha)}</b></p>")
        for pair in pairs:
            body.append(f"<div><h3>{escape(pair.judge_a)} × {escape(pair.judge_b)}</h3>{_scatter(pair.points)}"
                        f"<p>Spearman rho {_fmt(pair.rho.value)} {_interval(pair.rho)}, n={pair.rho.n}</p></div>")
        flagged = data.self_judged(rows)
        if flagged:
            items = "".join(f"<li class='flag'>{escape(model)} judged its own text ({escape(rubric)})</li>"
                            for model, rubric in sorted(flagged))
            body.append(f"<h2>Self-judging</h2><ul>{items}</ul>")
        return _page(f"Experiment {experiment_id}", "".join(body))

    return Starlette(routes=[Route("/", index), Route("/experiment/{experiment_id}", experiment)])
