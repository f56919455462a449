"""Prompt rendering: Jinja2 in a sandbox, strict about undefined names.

Templates are user files, so they render in a `SandboxedEnvironment` (no reaching into Python
internals) with `StrictUndefined` (a misspelt variable is an error, not an empty string).
"""

from __future__ import annotations

from functools import lru_cache
from types import TracebackType

from jinja2 import StrictUndefined, Template, TemplateSyntaxError, UndefinedError
from jinja2.sandbox import SandboxedEnvironment, SecurityError

from shared.events import ConceptSpec, EvaluationTemplateSpec, TemplateSpec

TEMPLATE_FILENAME = "<template>"
"""The file name Jinja2 gives templates made from strings; their traceback frames carry it."""

_ENVIRONMENT = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)


class TemplateProblem(Exception):
    """A template that cannot render; `line` is the template line when Jinja2 knows it."""

    def __init__(self, message: str, fix: str, line: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix
        self.line = line


def compile_template(text: str) -> Template:
    try:
        return _compiled(text)
    except TemplateSyntaxError as error:
        raise TemplateProblem(
            f"Jinja2 syntax error: {error.message}",
            "fix the template syntax at that line",
            line=error.lineno,
        ) from error


@lru_cache(maxsize=256)
def _compiled(text: str) -> Template:
    """Every task of an experiment renders the same few templates; compile each once."""
    return _ENVIRONMENT.from_string(text)


def render(text: str, variables: dict[str, object]) -> str:
    template = compile_template(text)
    try:
        return template.render(**variables)
    except UndefinedError as error:
        raise TemplateProblem(
            f"uses an undefined variable: {error.message}",
            f"use only the variables the template receives: {', '.join(sorted(variables))}",
            line=_template_line(error.__traceback__),
        ) from error
    except SecurityError as error:
        raise TemplateProblem(
            f"refused by the sandbox: {error}",
            "remove the access to Python internals; templates may only use their variables",
            line=_template_line(error.__traceback__),
        ) from error
    except Exception as error:
        raise TemplateProblem(
            f"fails to render: {type(error).__name__}: {error}",
            "fix the expression at that line",
            line=_template_line(error.__traceback__),
        ) from error


def render_generation_prompt(template: TemplateSpec, concepts: list[ConceptSpec]) -> str:
    return render(template.text, {"concepts": generation_variables(concepts)})


def render_evaluation_prompt(template: EvaluationTemplateSpec, response: str) -> str:
    return render(template.text, {"response": response})


def generation_variables(concepts: list[ConceptSpec]) -> list[dict[str, str]]:
    return [{"concept_id": c.concept_id, "name": c.name, "content": c.content} for c in concepts]


def _template_line(traceback: TracebackType | None) -> int | None:
    """Jinja2 rewrites tracebacks so template frames carry the template's own line numbers."""
    line = None
    while traceback is not None:
        if traceback.tb_frame.f_code.co_filename == TEMPLATE_FILENAME:
            line = traceback.tb_lineno
        traceback = traceback.tb_next
    return line
