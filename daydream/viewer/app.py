"""The viewer's web app: server-rendered HTML, inline SVG, nothing fetched from the internet."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from html import escape
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

from daydream.viewer import data
from daydream.viewer.stats import Estimate, mean_ci
from services.tracker.db import engine_for
from services.tracker.views import Views

STYLE = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
         "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}.flag{color:#b00}")


def _page(title: str, body: str) -> HTMLResponse:
    head = f"<meta charset='utf-8'><link rel='icon' href='data:,'><title>{escape(title)}</title><style>{STYLE}</style>"
    return HTMLResponse(f"<!doctype html><html><head>{head}</head><body><h1>{escape(title)}</h1>{body}</body></html>")


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


def _heatmap(entries: list[tuple[str, str, Estimate]], top: float) -> str:
    """Template rows × model columns, each cell's colour its mean on the rubric's observed scale."""
    templates = sorted({t for t, _, _ in entries})
    models = sorted({m for _, m, _ in entries})
    means = {(t, m): e.value for t, m, e in entries}
    cell, left = 60, 120
    parts = [f"<text x='{left + i * cell + 4}' y='12' font-size='10'>{escape(m[:10])}</text>"
             for i, m in enumerate(models)]
    for row, template in enumerate(templates):
        y = 18 + row * cell // 2
        parts.append(f"<text x='0' y='{y + 18}' font-size='10'>{escape(template[:18])}</text>")
        for col, model in enumerate(models):
            value = means.get((template, model))
            shade = 255 - int(200 * (value or 0) / (top or 1))
            parts.append(f"<rect x='{left + col * cell}' y='{y}' width='{cell - 2}' height='{cell // 2 - 2}'"
                         f" fill='rgb({shade},{shade},255)'/><text x='{left + col * cell + 8}' y='{y + 18}'"
                         f" font-size='11'>{_fmt(value)[:4]}</text>")
    height = 24 + len(templates) * cell // 2
    return f"<svg class='heatmap' width='{left + len(models) * cell}' height='{height}'>{''.join(parts)}</svg>"


def _histogram(values: list[float], width: int = 240, height: int = 80) -> str:
    counts = Counter(values)
    if not counts:
        return ""
    lo, hi, most = min(counts), max(counts), max(counts.values())
    span = (hi - lo) or 1
    bars = "".join(f"<rect x='{(v - lo) / span * (width - 20):.1f}' y='{height - c / most * (height - 14):.1f}'"
                   f" width='16' height='{c / most * (height - 14):.1f}' fill='#36c'><title>{v:g}: {c}</title></rect>"
                   for v, c in sorted(counts.items()))
    return f"<svg class='histogram' width='{width}' height='{height}'>{bars}</svg>"


def create_app(data_dir: Path) -> Starlette:
    engine = engine_for(data_dir)
    views = Views(data_dir, engine)

    async def index(_request: Request) -> HTMLResponse:
        items = "".join(f"<li><a href='/experiment/{escape(eid)}'>{escape(eid)}</a></li>"
                        for eid in views.experiment_ids())
        listing = items or "<li>none recorded yet</li>"
        return _page("DayDream experiments", f"<p><a href='/compare'>compare two</a></p><ul>{listing}</ul>")

    async def experiment(request: Request) -> HTMLResponse:
        experiment_id = request.path_params["experiment_id"]
        if experiment_id not in views.experiment_ids():
            return HTMLResponse(f"unknown experiment {escape(experiment_id)}", status_code=404)
        rows = data.scores(engine, experiment_id)
        body = [f"<p><a href='/experiment/{escape(experiment_id)}/generations'>generations</a></p>",
                f"<p>parse-failure rate: {_fmt(data.parse_failure_rate(rows))} of {len(rows)} answers</p>"]
        for rubric, entries in data.leaderboard(rows).items():
            lines = "".join(
                f"<tr><td>{escape(template)}</td><td>{escape(model)}</td><td class='mean'>{_fmt(e.value)}</td>"
                f"<td>{_interval(e)}</td><td>{e.n}</td></tr>" for template, model, e in entries)
            top = max((row.score for row in rows if row.rubric == rubric and row.score is not None), default=1)
            body.append(f"<h2>{escape(rubric)}</h2><table class='leaderboard'><tr><th>template</th><th>model</th>"
                        f"<th>mean</th><th>95% CI</th><th>n</th></tr>{lines}</table>{_heatmap(entries, top)}")
        body.append("<h2>Score distribution per judge</h2>")
        for judge in sorted({(row.rubric, row.judge_model) for row in rows}):
            values = [r.score for r in rows if (r.rubric, r.judge_model) == judge and r.score is not None]
            body.append(f"<div><h3>{escape(' / '.join(judge))}</h3>{_histogram(values)}</div>")
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

    def _read(relative: str | None) -> str:
        path = views.layout.absolute(relative) if relative else None
        return path.read_text(encoding="utf-8") if path and path.is_file() else ""

    async def generation_list(request: Request) -> HTMLResponse:
        experiment_id = request.path_params["experiment_id"]
        query = request.query_params
        concepts = data.concepts_by_combo(engine)
        rows = data.scores(engine, experiment_id)
        scores_by_gen: dict[str, list[float]] = defaultdict(list)
        for row in rows:
            if row.score is not None:
                scores_by_gen[row.generation_task_id].append(row.score)
        mean_by_gen = {gen: mean_ci(values) for gen, values in scores_by_gen.items()}
        errors = {r.generation_task_id for r in rows if r.parse_error}
        low, high = float(query.get("min") or "-inf"), float(query.get("max") or "inf")
        shown = []
        for gen in data.generations(engine, experiment_id):
            score = mean_by_gen.get(gen.task_id, mean_ci([])).value
            if ((query.get("template") and gen.template != query["template"])
                    or (query.get("model") and gen.model != query["model"])
                    or (query.get("concept") and query["concept"] not in concepts.get(gen.combo_id, []))
                    or (query.get("errors") and gen.task_id not in errors)
                    or ((query.get("min") or query.get("max")) and (score is None or not low <= score <= high))
                    or (query.get("q") and query["q"].lower() not in _read(gen.response_path).lower())):
                continue
            shown.append(f"<tr class='generation'><td><a href='/experiment/{escape(experiment_id)}/generation/"
                         f"{escape(gen.task_id)}'>{escape(gen.task_id)}</a></td><td>{escape(gen.template)}</td>"
                         f"<td>{escape(gen.model)}</td><td>{escape(', '.join(concepts.get(gen.combo_id, [])))}</td>"
                         f"<td>{_fmt(score)}</td></tr>")
        fields = "".join(f"<label>{name} <input name='{name}' value='{escape(query.get(name, ''))}'></label> "
                         for name in ("template", "model", "concept", "min", "max", "q"))
        form = (f"<form>{fields}<label><input type='checkbox' name='errors' value='1'"
                f"{' checked' if query.get('errors') else ''}> parse errors only</label> <button>filter</button></form>")
        return _page(f"Generations of {experiment_id}",
                     f"{form}<p id='count'>{len(shown)} generations</p><table><tr><th>task</th><th>template</th>"
                     f"<th>model</th><th>concepts</th><th>mean score</th></tr>{''.join(shown)}</table>")

    async def generation(request: Request) -> HTMLResponse:
        experiment_id, task_id = request.path_params["experiment_id"], request.path_params["task_id"]
        found = [g for g in data.generations(engine, experiment_id) if g.task_id == task_id]
        if not found:
            return HTMLResponse(f"unknown generation {escape(task_id)}", status_code=404)
        gen = found[0]
        concepts = ", ".join(data.concepts_by_combo(engine).get(gen.combo_id, []))
        answers = []
        for rubric, judge, score, error, response_path, score_path in data.judge_answers(engine, experiment_id, task_id):
            parsed = _read(score_path)
            lines = json.loads(parsed).get("lines_examined", []) if parsed else []
            answers.append(f"<tr class='answer'><td>{escape(rubric)}<br>{escape(judge)}</td>"
                           f"<td><pre>{escape(_read(response_path))}</pre></td>"
                           f"<td>{_fmt(score) if error is None else 'ERROR ' + escape(error)}"
                           f"<pre>{escape(chr(10).join(lines))}</pre></td></tr>")
        return _page(f"Generation {task_id}",
                     f"<p>template {escape(gen.template)} · model {escape(gen.model)} · concepts {escape(concepts)}</p>"
                     f"<h2>Prompt</h2><pre>{escape(_read(gen.prompt_path))}</pre>"
                     f"<h2>Text</h2><pre>{escape(_read(gen.response_path))}</pre><h2>Judges</h2>"
                     f"<table><tr><th>judge</th><th>answer</th><th>score / lines the parser read</th></tr>"
                     f"{''.join(answers)}</table>")

    async def compare(request: Request) -> HTMLResponse:
        known = views.experiment_ids()
        a, b = request.query_params.get("a", ""), request.query_params.get("b", "")
        options = "".join(f"<option>{escape(eid)}</option>" for eid in known)
        body = [f"<form>before <select name='a'>{options}</select> after <select name='b'>{options}</select>"
                " <button>compare</button></form>"]
        if a in known and b in known:
            lines = []
            for rubric, template, model, diff in data.compare(data.scores(engine, a), data.scores(engine, b)):
                moved = diff.low is not None and diff.high is not None and (diff.low > 0 or diff.high < 0)
                lines.append(f"<tr class='{'moved' if moved else 'same'}'><td>{escape(rubric)}</td>"
                             f"<td>{escape(template)}</td><td>{escape(model)}</td><td>{_fmt(diff.value)}</td>"
                             f"<td>{_interval(diff)}</td><td>{'moved' if moved else ''}</td></tr>")
            body.append(f"<h2>{escape(b)} minus {escape(a)}</h2><table><tr><th>rubric</th><th>template</th>"
                        f"<th>model</th><th>difference</th><th>95% CI</th><th></th></tr>{''.join(lines)}</table>")
        return _page("Compare experiments", "".join(body))

    return Starlette(routes=[
        Route("/compare", compare),
        Route("/", index),
        Route("/experiment/{experiment_id}", experiment),
        Route("/experiment/{experiment_id}/generations", generation_list),
        Route("/experiment/{experiment_id}/generation/{task_id}", generation),
    ])
