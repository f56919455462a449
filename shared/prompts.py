"""Prompt rendering: Jinja2 in a sandbox, strict about undefined names, bounded in time and size.

Templates are user files, so they render in a `SandboxedEnvironment` (no reaching into Python
internals) with `StrictUndefined` (a misspelt variable is an error, not an empty string), and a
template cannot hang a process or fill its memory:

- each render has a time budget (`RENDER_TIME_BUDGET_S`): a watchdog thread raises `RenderTimeout`
  in the rendering thread (Jinja2 has no timeout of its own);
- the output, and every value an operator, filter or call builds on the way, is at most
  `MAX_RENDERED_CHARS` characters (sequences at most `MAX_ITEMS` items); operations that multiply
  sizes (`*`, `**`, `~`, `%`, `replace`, `center`, `indent`, `join`, widths in format strings, …)
  are checked *before* they run, since one C call cannot be interrupted;
- `range` and `lipsum` take bounded arguments;
- nothing is evaluated at compile time (the constant-folding optimizer is off), so those limits
  hold for constant expressions too.
"""

from __future__ import annotations

import ctypes
import re
import threading
import time
from collections.abc import Callable, Iterable
from functools import lru_cache, wraps
from types import TracebackType
from typing import Any

from jinja2 import StrictUndefined, Template, TemplateSyntaxError, UndefinedError
from jinja2.compiler import CodeGenerator
from jinja2.sandbox import SandboxedEnvironment, SecurityError
from jinja2.utils import _PassArg, generate_lorem_ipsum

from shared.events import ConceptSpec, EvaluationTemplateSpec, TemplateSpec

TEMPLATE_FILENAME = "<template>"
"""The file name Jinja2 gives templates made from strings; their traceback frames carry it."""

RENDER_TIME_BUDGET_S = 2.0
MAX_RENDERED_CHARS = 1_000_000
"""About 250,000 tokens: more than any prompt a template should make, far less than a process's memory."""
MAX_ITEMS = 10_000
"""The longest `range` and the longest list or tuple an operator may build."""
MAX_INT_BITS = 4096
MAX_LIPSUM_PARAGRAPHS = 100
MAX_LIPSUM_WORDS = 1000
LIMITS_FIX = (
    f"keep each prompt under {MAX_RENDERED_CHARS:,} characters, ranges and lists under {MAX_ITEMS:,} items "
    f"and each render under {RENDER_TIME_BUDGET_S:g} s"
)


class TemplateProblem(Exception):
    """A template that cannot render; `line` is the template line when Jinja2 knows it."""

    def __init__(self, message: str, fix: str, line: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix
        self.line = line


class TemplateLimitExceeded(Exception):
    """A template asked for more time, text or items than a prompt may take."""


class RenderTimeout(TemplateLimitExceeded):
    """Raised inside the rendering thread by the watchdog when the time budget is spent."""


def _refuse(what: str, size: int, limit: int) -> None:
    if size > limit:
        raise TemplateLimitExceeded(f"{what} would be {size:,} long, more than the {limit:,} allowed")


def _text_size(value: Any, budget: int = MAX_RENDERED_CHARS) -> int:
    """An upper-bound estimate of len(str(value)), walked in Python so it stops early once over
    `budget`: `str()` of a big container is one C call that cannot be interrupted."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value.bit_length() // 3 + 2
    if isinstance(value, dict):
        value = [item for pair in value.items() for item in pair]
    if isinstance(value, (list, tuple, set, frozenset)):
        total = 2
        for item in value:
            total += _text_size(item, budget - total) + 4
            if total > budget:
                break
        return total
    return len(str(value))


_FORMAT_NUMBER = re.compile(r"\d+")


def _check_format(text: str, arguments: Iterable[Any]) -> None:
    """A width or precision in a format string ('%9999999d', '{:>9999999}') is a big allocation."""
    for number in _FORMAT_NUMBER.findall(text):
        _refuse("a width or precision in a format string", int(number), MAX_RENDERED_CHARS)
    for argument in arguments:
        _check_value(argument)


def _check_value(value: Any) -> Any:
    """Every value a template builds is bounded: text by characters, sequences by items, ints by bits."""
    if isinstance(value, str):
        _refuse("a text", len(value), MAX_RENDERED_CHARS)
    elif isinstance(value, (list, tuple, dict, set)):
        _refuse("a sequence", len(value), MAX_ITEMS)
    elif isinstance(value, int) and not isinstance(value, bool):
        _refuse("a number (in bits)", value.bit_length(), MAX_INT_BITS)
    return value


def _bits(value: Any) -> int:
    return abs(int(value)).bit_length() if isinstance(value, int) else 0


def _repeat_size(left: Any, right: Any) -> None:
    """`seq * n` or `n * seq`, or an int product."""
    for sequence, times in ((left, right), (right, left)):
        if isinstance(sequence, (str, list, tuple)) and isinstance(times, int):
            limit = MAX_RENDERED_CHARS if isinstance(sequence, str) else MAX_ITEMS
            _refuse("a repeated sequence", len(sequence) * max(times, 0), limit)
    if isinstance(left, int) and isinstance(right, int):
        _refuse("a product (in bits)", _bits(left) + _bits(right), MAX_INT_BITS)


def _power_size(base: Any, exponent: Any) -> None:
    if isinstance(base, int) and isinstance(exponent, int) and exponent > 0 and abs(base) > 1:
        _refuse("a power (in bits)", _bits(base) * exponent, MAX_INT_BITS)


def _sum_size(left: Any, right: Any) -> None:
    if isinstance(left, (str, list, tuple)) and isinstance(right, type(left)):
        limit = MAX_RENDERED_CHARS if isinstance(left, str) else MAX_ITEMS
        _refuse("a concatenation", len(left) + len(right), limit)


def _modulo_size(left: Any, right: Any) -> None:
    if isinstance(left, str):
        _check_format(left, right if isinstance(right, tuple) else (right,))
        _refuse("a formatted text", len(left) + _text_size(right), MAX_RENDERED_CHARS)


_BINOP_CHECKS: dict[str, Callable[[Any, Any], None]] = {
    "*": _repeat_size,
    "**": _power_size,
    "+": _sum_size,
    "%": _modulo_size,
}


def _replace_size(text: Any, old: Any, new: Any, count: Any = -1) -> None:
    if isinstance(text, str) and isinstance(old, str) and isinstance(new, str):
        occurrences = text.count(old) if old else len(text) + 1
        if isinstance(count, int) and count >= 0:
            occurrences = min(occurrences, count)
        _refuse("a replaced text", len(text) + occurrences * len(new), MAX_RENDERED_CHARS)


def _width_size(text: Any, width: Any = 80, *_: Any) -> None:
    if isinstance(width, int):
        _refuse("a padded text", width, MAX_RENDERED_CHARS)


def _indent_size(text: Any, width: Any = 4, *_: Any, **__: Any) -> None:
    prefix = len(width) if isinstance(width, str) else width if isinstance(width, int) else 0
    lines = str(text).count("\n") + 1
    _refuse("an indented text", len(str(text)) + lines * prefix, MAX_RENDERED_CHARS)


def _join_size(separator: Any, items: Any, *_: Any) -> None:
    if isinstance(items, (list, tuple, dict, set)):
        _refuse("a joined text", _text_size(items) + len(items) * _text_size(separator), MAX_RENDERED_CHARS)


def _joined_by_filter(items: Any, separator: Any = "", *_: Any, **__: Any) -> None:
    _join_size(separator, items)


def _batch_size(items: Any, count: Any, *_: Any, **__: Any) -> None:
    if isinstance(count, int):
        _refuse("a batch", count, MAX_ITEMS)


def _format_filter_size(text: Any, *arguments: Any, **keywords: Any) -> None:
    if isinstance(text, str):
        _check_format(text, [*arguments, *keywords.values()])


def _expandtabs_size(text: Any, tabsize: Any = 8) -> None:
    if isinstance(text, str) and isinstance(tabsize, int):
        _refuse("a text with tabs expanded", len(text) + text.count("\t") * tabsize, MAX_RENDERED_CHARS)


_FILTER_CHECKS: dict[str, Callable[..., None]] = {
    "replace": _replace_size,
    "center": _width_size,
    "indent": _indent_size,
    "join": _joined_by_filter,
    "batch": _batch_size,
    "format": _format_filter_size,
}
_STR_METHOD_CHECKS: dict[str, Callable[..., None]] = {
    "replace": _replace_size,
    "center": _width_size,
    "ljust": _width_size,
    "rjust": _width_size,
    "zfill": _width_size,
    "join": _join_size,
    "expandtabs": _expandtabs_size,
    "format": lambda text, *arguments, **keywords: _check_format(text, [*arguments, *keywords.values()]),
    "format_map": lambda text, mapping: _check_format(text, [mapping]),
}


def _bounded_filter(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    check = _FILTER_CHECKS.get(name)
    passed = 1 if _PassArg.from_obj(function) is not None else 0
    """A filter that takes the context or environment first gets it before the value."""

    @wraps(function)
    def bounded(*arguments: Any, **keywords: Any) -> Any:
        if check is not None:
            check(*arguments[passed:], **keywords)
        return _check_value(function(*arguments, **keywords))

    return bounded


def _bounded_range(*arguments: int) -> range:
    numbers = range(*arguments)
    _refuse("range()", len(numbers), MAX_ITEMS)
    return numbers


def _bounded_lipsum(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:
    _refuse("lipsum() paragraphs", n, MAX_LIPSUM_PARAGRAPHS)
    _refuse("lipsum() words per paragraph", max, MAX_LIPSUM_WORDS)
    return generate_lorem_ipsum(n=n, html=html, min=min, max=max)


class _BoundedCodeGenerator(CodeGenerator):
    """`~` goes through the environment, as the sandbox's intercepted operators do."""

    def visit_Concat(self, node, frame) -> None:
        self.write("environment.bounded_concat((")
        for argument in node.nodes:
            self.visit(argument, frame)
            self.write(", ")
        self.write("))")


class BoundedSandbox(SandboxedEnvironment):
    code_generator_class = _BoundedCodeGenerator
    intercepted_binops = frozenset(_BINOP_CHECKS)

    def __init__(self, **options: Any) -> None:
        super().__init__(optimized=False, finalize=self.bounded_output, **options)
        self.globals["range"] = _bounded_range
        self.globals["lipsum"] = _bounded_lipsum
        self.filters = {name: _bounded_filter(name, function) for name, function in self.filters.items()}

    def call_binop(self, context, operator: str, left: Any, right: Any) -> Any:
        _BINOP_CHECKS[operator](left, right)
        return _check_value(super().call_binop(context, operator, left, right))

    def call(__self, __context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        method = getattr(__obj, "__wrapped__", __obj)
        owner = getattr(method, "__self__", None)
        check = _STR_METHOD_CHECKS.get(getattr(method, "__name__", "")) if isinstance(owner, str) else None
        if check is not None:
            check(owner, *args, **kwargs)
        return _check_value(super().call(__context, __obj, *args, **kwargs))

    @staticmethod
    def bounded_concat(parts: tuple[Any, ...]) -> str:
        _refuse("a concatenation with ~", sum(_text_size(part) for part in parts), MAX_RENDERED_CHARS)
        return "".join(str(part) for part in parts)

    @staticmethod
    def bounded_output(value: Any) -> Any:
        _refuse("an output value", _text_size(value), MAX_RENDERED_CHARS)
        return value


_ENVIRONMENT = BoundedSandbox(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)


class _Watchdog:
    """One thread for every render in the process: it raises `RenderTimeout` in a rendering thread
    whose deadline passed (`PyThreadState_SetAsyncExc`, delivered at the next bytecode)."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._deadlines: dict[object, tuple[int, float]] = {}
        self._fired: set[object] = set()
        self._thread: threading.Thread | None = None

    def arm(self, seconds: float) -> object:
        token = object()
        with self._condition:
            self._deadlines[token] = (threading.get_ident(), time.monotonic() + seconds)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._watch, name="template-watchdog", daemon=True)
                self._thread.start()
            self._condition.notify()
        return token

    def disarm(self, token: object) -> None:
        """After this no `RenderTimeout` of this render can arrive: one set but not yet delivered is cleared."""
        with self._condition:
            self._deadlines.pop(token, None)
            if token in self._fired:
                self._fired.discard(token)
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(threading.get_ident()), None)

    def _watch(self) -> None:
        with self._condition:
            while True:
                now = time.monotonic()
                for token, (thread_id, deadline) in list(self._deadlines.items()):
                    if deadline <= now:
                        del self._deadlines[token]
                        self._fired.add(token)
                        ctypes.pythonapi.PyThreadState_SetAsyncExc(
                            ctypes.c_ulong(thread_id), ctypes.py_object(RenderTimeout)
                        )
                waits = [deadline - now for _, deadline in self._deadlines.values()]
                self._condition.wait(timeout=max(min(waits), 0.001) if waits else None)


_WATCHDOG = _Watchdog()


def _render_bounded(template: Template, variables: dict[str, object]) -> str:
    """The template's output, collected piece by piece so the cap holds before the text is joined."""
    token = _WATCHDOG.arm(RENDER_TIME_BUDGET_S)
    try:
        try:
            pieces, size = [], 0
            for piece in template.generate(**variables):
                size += len(piece)
                _refuse("the rendered prompt", size, MAX_RENDERED_CHARS)
                pieces.append(piece)
        finally:
            _WATCHDOG.disarm(token)
    except RenderTimeout as timeout:
        message = f"rendering took more than {RENDER_TIME_BUDGET_S:g} s"
        raise RenderTimeout(message).with_traceback(timeout.__traceback__) from None
    return "".join(pieces)


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
        return _render_bounded(template, variables)
    except TemplateLimitExceeded as error:
        raise TemplateProblem(
            f"exceeds a limit: {error}", LIMITS_FIX, line=_template_line(error.__traceback__)
        ) from error
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
