"""Experiment inputs: read `1_raw/`, validate everything, resolve the selection into an `ExperimentSpec`.

Validation collects every problem before raising, so a user fixes a broken input set in one pass
instead of one error per run. Nothing is published or written until the inputs load cleanly.

Conventions the user sees:
- `row` in a problem is the 1-based line in the file (a CSV header is line 1).
- Format checks (ids, booleans, numbers, duplicates) apply to every CSV row, active or not, because
  the ids must stay unique and readable for later experiments; file and tier references are only
  checked for active rows, because only they are used.
- Descriptions: the requested level falls back to paragraph, then sentence, then the concept's name,
  and every fallback is reported. An active concept with no description file at any level is an
  error (its name alone makes a useless prompt), so the name is only used when the concept's only
  description is at a level the chain does not reach (e.g. only an article when a sentence is asked).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import json
import math
import os
import re
import shutil
import tempfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from shared.events import (
    DEFAULT_TIERS,
    QUANTIZATIONS,
    ConceptSpec,
    EvaluationTemplateSpec,
    ExperimentSpec,
    ModelSpec,
    ProviderRouting,
    TemplateSpec,
    TierSpec,
)
from shared.files import csv_text
from shared.ids import (
    MAX_ID_LENGTH,
    MAX_NAME_BYTES,
    SAFE_ID_RULE,
    combo_id,
    evaluation_task_id,
    generation_task_id,
    is_safe_id,
    longest_file_name_bytes,
)
from shared.parsers import DEFAULT_PARSER, KNOWN_PARSERS
from shared.prompts import (
    TemplateProblem,
    compile_template,
    render_evaluation_prompt,
    render_generation_prompt,
)
from shared.settings import Settings
from shared.tasks import PlanSize

DESCRIPTION_LEVELS = ("sentence", "paragraph", "article")
FALLBACK_LEVELS = ("paragraph", "sentence")
NAME_LEVEL = "name"
SAMPLE_RESPONSE = "A sample response, standing in for a generation while the templates are checked."

CONCEPTS_CSV = "concepts_metadata.csv"
GENERATION_TEMPLATES_CSV = "generation_templates.csv"
EVALUATION_TEMPLATES_CSV = "evaluation_templates.csv"
MODELS_CSV = "llm_models.csv"
TIERS_CSV = "tiers.csv"
EXPERIMENT_TOML = "experiment.toml"
EXPERIMENT_KEYS = ("name", "k_max", "description_level", "replicates", "seed", "max_cost")

MAX_INPUT_FILE_BYTES = 10 * 1024**2
"""Read whole: a file larger than this is refused before it is read."""
TEMPERATURE_RANGE = (0.0, 2.0)
"""What the providers take (OpenAI, OpenRouter, Anthropic's 0-1 falls inside)."""

TRUE_WORDS = ("true", "1", "yes")
ROUTING_COLUMNS = ("provider_order", "allow_fallbacks", "require_parameters", "quantizations")
"""Optional llm_models.csv columns: OpenRouter's provider routing for that model."""
PRICE_COLUMNS = ("prompt_price", "completion_price")
"""Optional llm_models.csv columns: USD per million prompt / completion tokens. They change the
estimate, not the results, so a snapshot compares equal without them."""
PROVIDER_SLUG = re.compile(r"^[a-z0-9][a-z0-9._/-]*$")
FALSE_WORDS = ("false", "0", "no")


@dataclass(frozen=True)
class CsvSchema:
    name: str
    required: tuple[str, ...]
    optional: tuple[str, ...] = ()


SCHEMAS = {
    CONCEPTS_CSV: CsvSchema(CONCEPTS_CSV, ("concept_id", "name", "active")),
    GENERATION_TEMPLATES_CSV: CsvSchema(
        GENERATION_TEMPLATES_CSV, ("template_id", "template_name", "description", "active")
    ),
    EVALUATION_TEMPLATES_CSV: CsvSchema(
        EVALUATION_TEMPLATES_CSV,
        ("template_id", "template_name", "description", "active", "parser", "max_score"),
        ("allow_decimals",),
    ),
    MODELS_CSV: CsvSchema(
        MODELS_CSV,
        ("id", "model", "provider", "tier", "for_generation", "for_evaluation", "active"),
        ("temperature", "max_tokens", *ROUTING_COLUMNS, *PRICE_COLUMNS),
    ),
    TIERS_CSV: CsvSchema(TIERS_CSV, ("tier", "max_concurrent", "requests_per_minute")),
}


@dataclass(frozen=True)
class InputProblem:
    file: str
    row: int | None
    message: str
    fix: str

    @property
    def location(self) -> str:
        return f"{self.file} line {self.row}" if self.row is not None else self.file

    def __str__(self) -> str:
        return f"{self.location}: {self.message}. Fix: {self.fix}."


class InputErrors(Exception):
    """Every problem found in one input set, so the user can fix them all at once."""

    def __init__(self, problems: list[InputProblem], raw_dir: Path | None = None) -> None:
        self.problems = problems
        self.raw_dir = raw_dir
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f" in {self.raw_dir}" if self.raw_dir else ""
        lines = [f"{len(self.problems)} problem(s) with the experiment inputs{where}:"]
        lines += [f"  - {problem}" for problem in self.problems]
        return "\n".join(lines)


class SnapshotConflict(Exception):
    """An experiment id was reused for a different selection; its results would mix."""


@dataclass(frozen=True)
class DescriptionFallback:
    concept_id: str
    requested: str
    used: str


@dataclass(frozen=True)
class LoadedExperiment:
    spec: ExperimentSpec
    fallbacks: list[DescriptionFallback]
    active_rows: dict[str, list[dict[str, str]]]
    """CSV file name -> its active rows (for tiers.csv: the tiers the active models use)."""
    warnings: list[InputProblem] = field(default_factory=list)
    """What is accepted but is probably not what the user meant (e.g. an active model that does nothing)."""


def load_experiment(
    raw_dir: Path,
    *,
    experiment_id: str,
    k_max: int | None = None,
    level: str | None = None,
    replicates: int | None = None,
    fresh: bool = False,
    evaluate_truncated: bool = True,
    max_calls: int | None = None,
) -> LoadedExperiment:
    """Read and validate `raw_dir`; arguments given here override `experiment.toml`. An experiment
    of more than `max_calls` LLM calls (default: `DAYDREAM_MAX_PLANNED_CALLS`) is refused."""
    loader = _Loader(Path(raw_dir), max_calls=max_calls or Settings().max_planned_calls)
    loaded = loader.load(
        experiment_id=experiment_id,
        k_max=k_max,
        level=level,
        replicates=replicates,
        fresh=fresh,
        evaluate_truncated=evaluate_truncated,
    )
    if loader.problems or loaded is None:
        raise InputErrors(loader.problems, Path(raw_dir))
    return loaded


SPEC_FILE = "spec.json"
"""The resolved selection in the snapshot: what `rerun` rebuilds tasks from."""


def snapshot_experiment(loaded: LoadedExperiment, experiment_dir: Path) -> None:
    """Write the selection into `experiment_dir` (i.e. DIR/experiments/<experiment_id>) atomically.

    A second snapshot with the same content is a no-op, so a retried publish is harmless; one with
    different content is refused, so one experiment id never mixes two selections."""
    files = _snapshot_files(loaded)
    experiment_dir = Path(experiment_dir)
    if not experiment_dir.exists():
        experiment_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{experiment_dir.name}.", dir=experiment_dir.parent))
        for name, content in files.items():
            (staging / name).write_text(content, encoding="utf-8")
        try:
            os.rename(staging, experiment_dir)
            return
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
            if not experiment_dir.is_dir():
                raise
    differing = [
        name
        for name, content in files.items()
        if not (experiment_dir / name).is_file()
        or not _same_snapshot_content(name, (experiment_dir / name).read_text(encoding="utf-8"), content)
    ]
    if differing:
        raise SnapshotConflict(
            f"{experiment_dir} already holds a different selection (differs in {', '.join(differing)}); "
            "choose a new experiment id, or restore the inputs that experiment ran on"
        )


def _same_snapshot_content(name: str, recorded: str, current: str) -> bool:
    """Compared as what they mean, not as text: a snapshot written before a field or a column was
    added (and so without it) is the same selection when everything it did record agrees and the
    additions hold their defaults."""
    if name == SPEC_FILE:
        return _selection(ExperimentSpec.model_validate_json(recorded)) == _selection(
            ExperimentSpec.model_validate_json(current))
    if name.endswith(".json"):
        return bool(json.loads(recorded) == json.loads(current))
    if name.endswith(".csv"):
        old_rows, new_rows = _csv_rows(recorded), _csv_rows(current)
        return len(old_rows) == len(new_rows) and all(
            all(new.get(column, "") == value for column, value in old.items() if column not in PRICE_COLUMNS)
            and all(old.get(column, "") == value for column, value in new.items()
                    if column not in old and value and column not in PRICE_COLUMNS)
            for old, new in zip(old_rows, new_rows, strict=True)
        )
    return recorded == current


def _selection(spec: ExperimentSpec) -> dict:
    """What decides an experiment's results: the spec without how one publish steers it (`fresh`,
    the budget) and without the prices, which only change the estimate."""
    prices = {"__all__": set(PRICE_COLUMNS)}
    return spec.model_dump(exclude={"fresh": True, "max_cost": True,
                                    "generation_models": prices, "evaluation_models": prices})


def _csv_rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def _snapshot_files(loaded: LoadedExperiment) -> dict[str, str]:
    spec = loaded.spec
    settings = {
        "experiment_id": spec.experiment_id,
        "name": spec.name,
        "k_max": spec.k_max,
        "description_level": spec.description_level,
        "replicates": spec.replicates,
        "seed": spec.seed,
    }
    files = {
        name: csv_text(list(rows[0]) if rows else SCHEMAS[name].required, rows, lineterminator="\n")
        for name, rows in loaded.active_rows.items()
    }
    files["settings.json"] = json.dumps(settings, indent=2) + "\n"
    # The resolved texts too (descriptions, templates): an edited template is another selection.
    # `fresh` and the budget are how one publish steers the run, not part of the selection.
    files[SPEC_FILE] = spec.model_dump_json(indent=2, exclude={"fresh", "max_cost"}) + "\n"
    return files


@dataclass
class _Row:
    file: str
    line: int
    values: dict[str, str]

    def __getitem__(self, column: str) -> str:
        return self.values.get(column, "")


@dataclass
class _Settings:
    """experiment.toml after overrides; None marks a value that is missing or invalid."""

    name: str | None = None
    k_max: int | None = None
    k_max_source: str = EXPERIMENT_TOML
    description_level: str | None = None
    replicates: int | None = 1
    replicates_source: str = EXPERIMENT_TOML
    seed: int | None = None
    max_cost: float | None = None


@dataclass
class _Loader:
    raw_dir: Path
    max_calls: int
    problems: list[InputProblem] = field(default_factory=list)
    warnings: list[InputProblem] = field(default_factory=list)
    toml_lines: dict[str, int] = field(default_factory=dict)
    """experiment.toml key -> the line it is set on, so its problems can name the line."""
    id_rows: dict[tuple[str, str], int] = field(default_factory=dict)
    """(file, id) -> its line, so a problem found later (a derived file name) can name the row."""

    def problem(self, file: str, row: int | None, message: str, fix: str) -> None:
        self.problems.append(InputProblem(file, row, message, fix))

    # ---- the whole input set ------------------------------------------------------------

    def load(
        self,
        *,
        experiment_id: str,
        k_max: int | None,
        level: str | None,
        replicates: int | None,
        fresh: bool,
        evaluate_truncated: bool,
    ) -> LoadedExperiment | None:
        if not self.raw_dir.is_dir():
            self.problem(
                str(self.raw_dir),
                None,
                "the input directory does not exist",
                "pass --data DIR where DIR/1_raw holds the inputs",
            )
            return None
        if not is_safe_id(experiment_id):
            self.problem("experiment id", None, f"'{experiment_id}' is not a safe id", SAFE_ID_RULE)
        elif len(experiment_id) > MAX_ID_LENGTH:
            self.problem("experiment id", None, f"'{experiment_id}' is {len(experiment_id)} characters long",
                         f"use at most {MAX_ID_LENGTH} characters")
        settings = self.experiment_settings(k_max=k_max, level=level, replicates=replicates)
        requested_level = settings.description_level or DESCRIPTION_LEVELS[1]

        concept_rows = self.read_csv(CONCEPTS_CSV)
        concepts, fallbacks, active_concepts = self.concepts(concept_rows, requested_level)
        generation_rows = self.read_csv(GENERATION_TEMPLATES_CSV)
        generation_templates, active_generation = self.generation_templates(generation_rows)
        evaluation_rows = self.read_csv(EVALUATION_TEMPLATES_CSV)
        evaluation_templates, active_evaluation = self.evaluation_templates(evaluation_rows)
        tiers, tier_rows = self.tiers()
        generation_models, evaluation_models, active_models, used_tiers = self.models(tiers)

        self.check_k_max(settings, len(active_concepts) if concept_rows is not None else None)
        size = PlanSize(len(concepts), settings.k_max or 0, len(generation_templates), len(generation_models),
                        settings.replicates or 1, len(evaluation_templates), len(evaluation_models))
        if self.check_size(size, settings):
            self.check_file_names(generation_templates, generation_models, evaluation_templates,
                                  evaluation_models, settings.replicates or 1)
            self.probe_templates(generation_templates, evaluation_templates, concepts, settings.k_max)
        if self.problems:
            return None
        spec = ExperimentSpec(
            experiment_id=experiment_id,
            name=settings.name,
            k_max=settings.k_max,
            description_level=requested_level,
            replicates=settings.replicates,
            fresh=fresh,
            evaluate_truncated=evaluate_truncated,
            seed=settings.seed,
            max_cost=settings.max_cost,
            concepts=concepts,
            generation_templates=generation_templates,
            evaluation_templates=evaluation_templates,
            generation_models=generation_models,
            evaluation_models=evaluation_models,
            tiers=[tiers[name] for name in tiers if name in used_tiers],
        )
        active_rows = {
            CONCEPTS_CSV: active_concepts,
            GENERATION_TEMPLATES_CSV: active_generation,
            EVALUATION_TEMPLATES_CSV: active_evaluation,
            MODELS_CSV: active_models,
            TIERS_CSV: [row for name, row in tier_rows.items() if name in used_tiers],
        }
        return LoadedExperiment(spec=spec, fallbacks=fallbacks, active_rows=active_rows, warnings=self.warnings)

    # ---- experiment.toml ----------------------------------------------------------------

    def experiment_settings(self, *, k_max: int | None, level: str | None, replicates: int | None) -> _Settings:
        """Values from experiment.toml with the caller's overrides; an invalid value ends up None."""
        settings = _Settings()
        table = self.read_toml()
        if table is not None:
            for key in table:
                if key not in EXPERIMENT_KEYS:
                    self.toml_problem(key, f"unknown setting '{key}'", f"use only: {', '.join(EXPERIMENT_KEYS)}")
            settings.name = self.toml_value(table, "name", str, 'a quoted text, e.g. name = "daydreaming-loop"')
            settings.k_max = self.toml_value(table, "k_max", int, "a whole number, e.g. k_max = 3")
            settings.description_level = self.level(table.get("description_level"), EXPERIMENT_TOML)
            settings.replicates = self.toml_value(table, "replicates", int, "a whole number of 1 or more", minimum=1)
            settings.seed = self.toml_value(table, "seed", int, "a whole number, e.g. seed = 7")
            settings.max_cost = self.toml_value(table, "max_cost", (int, float),
                                                "a number of dollars above 0, e.g. max_cost = 2.5", minimum=0,
                                                above=True)
            levels = ", ".join(DESCRIPTION_LEVELS)
            required = {
                "name": ('add a line: name = "my-experiment"', None),
                "k_max": ("add k_max = 3 (how many concepts each combination holds), or pass --k-max", k_max),
                "description_level": (f'add description_level = "paragraph" (one of {levels}), or pass --level', level),
            }
            for key, (fix, given) in required.items():
                if key not in table and given is None:
                    self.problem(EXPERIMENT_TOML, None, f"{key} is not set", fix)
        if k_max is not None:
            settings.k_max, settings.k_max_source = k_max, "--k-max option"
        if level is not None:
            settings.description_level = self.level(level, "--level option")
        if replicates is not None:
            settings.replicates, settings.replicates_source = replicates, "--replicates option"
            if replicates < 1:
                fix = "pass --replicates 1 or more"
                self.problem("--replicates option", None, f"replicates {replicates} is below 1", fix)
        return settings

    def read_toml(self) -> dict | None:
        example = 'name = "x", k_max = 3, description_level = "paragraph"'
        text = self.read_text(
            EXPERIMENT_TOML, missing_fix=f"create it with name, k_max and description_level: {example}"
        )
        if text is None:
            return None
        for number, line in enumerate(text.splitlines(), start=1):
            key = re.match(r"\s*([A-Za-z0-9_-]+)\s*=", line)
            if key:
                self.toml_lines.setdefault(key.group(1), number)
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            position = re.search(r"line (\d+)", str(error))
            self.problem(
                EXPERIMENT_TOML,
                int(position.group(1)) if position else None,
                f"is not valid TOML: {error}",
                "fix the TOML syntax",
            )
            return None

    def toml_problem(self, key: str, message: str, fix: str) -> None:
        self.problem(EXPERIMENT_TOML, self.toml_lines.get(key), message, fix)

    def toml_value(self, table: dict, key: str, kind: type | tuple[type, ...], expected: str, *,
                   minimum: float | None = None, above: bool = False):
        """`above`: the value must be greater than `minimum`, not merely equal to it."""
        if key not in table:
            return getattr(_Settings(), key)
        value = table[key]
        valid = isinstance(value, kind) and not isinstance(value, bool)
        if valid and kind is str:
            valid = bool(value.strip())
        if valid and minimum is not None:
            valid = value > minimum if above else value >= minimum
        if valid and isinstance(value, float):
            valid = math.isfinite(value)
        if valid:
            return value
        self.toml_problem(key, f"{key} = {value!r} is not {expected}", f"write {key} as {expected}")
        return None

    def level(self, value: object, source: str) -> str | None:
        if value is None:
            return None
        if value not in DESCRIPTION_LEVELS:
            row = self.toml_lines.get("description_level") if source == EXPERIMENT_TOML else None
            self.problem(
                source, row, f"description level {value!r} is unknown", f"use one of: {', '.join(DESCRIPTION_LEVELS)}"
            )
            return None
        return value

    def check_k_max(self, settings: _Settings, active_concepts: int | None) -> None:
        k_max = settings.k_max
        if k_max is None:
            return
        row = self.toml_lines.get("k_max") if settings.k_max_source == EXPERIMENT_TOML else None
        if k_max < 1:
            self.problem(settings.k_max_source, row, f"k_max {k_max} is below 1", "set k_max to at least 1")
            settings.k_max = None
        elif active_concepts is not None and k_max > active_concepts:
            self.problem(
                settings.k_max_source,
                row,
                f"k_max {k_max} is larger than the number of active concepts ({active_concepts})",
                f"lower k_max to {active_concepts} or less, or set active = true on more rows of {CONCEPTS_CSV}",
            )
            settings.k_max = None

    def check_size(self, size: PlanSize, settings: _Settings) -> bool:
        """Whether the experiment is small enough to enumerate; counted, never enumerated. The
        problem names replicates when one replicate would fit, else k_max."""
        if size.calls <= self.max_calls:
            return True
        one_replicate = dataclasses.replace(size, replicates=1)
        if size.replicates > 1 and one_replicate.calls <= self.max_calls:
            source, row = settings.replicates_source, self.toml_lines.get("replicates")
            lower = "lower replicates"
        else:
            source, row = settings.k_max_source, self.toml_lines.get("k_max")
            lower = "lower k_max, or make fewer concepts, templates or models active"
        self.problem(
            source,
            row if source == EXPERIMENT_TOML else None,
            f"the experiment would make {size.calls:,} LLM calls ({size.combos:,} combos of {size.k_max} from "
            f"{size.concepts} concepts x {size.generation_templates} template(s) x {size.generation_models} "
            f"model(s) x {size.replicates:,} replicate(s) = {size.generation_tasks:,} generations, and "
            f"{size.evaluation_tasks:,} evaluations), more than the limit of {self.max_calls:,}",
            f"{lower}; or raise the limit with DAYDREAM_MAX_PLANNED_CALLS if you mean it",
        )
        return False

    def check_file_names(
        self,
        generation_templates: list[TemplateSpec],
        generation_models: list[ModelSpec],
        evaluation_templates: list[EvaluationTemplateSpec],
        evaluation_models: list[ModelSpec],
        replicates: int,
    ) -> None:
        """The longest task id, with an experiment id of the longest allowed length, must make file
        names that fit every file system; else the longest id involved is named."""
        parts = [
            (GENERATION_TEMPLATES_CSV, [t.template_id for t in generation_templates]),
            (MODELS_CSV, [m.id for m in generation_models]),
            (EVALUATION_TEMPLATES_CSV, [t.template_id for t in evaluation_templates]),
            (MODELS_CSV, [m.id for m in evaluation_models]),
        ]
        if not all(ids for _, ids in parts):
            return
        longest = [(file, max(ids, key=len)) for file, ids in parts]
        template, model, judge_template, judge = (value for _, value in longest)
        combo = combo_id([], "paragraph", 1)
        task_id = evaluation_task_id(
            generation_task_id(combo, template, model, replicates, replicates), judge_template, judge
        )
        name_bytes = longest_file_name_bytes(task_id)
        if name_bytes <= MAX_NAME_BYTES:
            return
        file, value = max(longest, key=lambda part: len(part[1]))
        self.problem(
            file,
            self.id_rows.get((file, value)),
            f"task ids built from template '{template}', model '{model}', evaluation template "
            f"'{judge_template}' and judge '{judge}' make file names of {name_bytes} bytes "
            f"(with an experiment id of {MAX_ID_LENGTH} characters), more than the {MAX_NAME_BYTES} "
            "a file system takes",
            f"shorten these ids by {name_bytes - MAX_NAME_BYTES} characters in total (e.g. '{value}')",
        )

    # ---- files and CSV ------------------------------------------------------------------

    def read_text(self, relative: str, *, missing_fix: str | None) -> str | None:
        """The file's text, or None after recording why not (missing counts only with a fix)."""
        path = self.raw_dir / relative
        if not path.is_file():
            if missing_fix:
                self.problem(relative, None, "the file is missing", missing_fix)
            return None
        target = path.resolve()
        if not target.is_relative_to(self.raw_dir.resolve()):
            self.problem(
                relative,
                None,
                f"leads outside the input directory, to {target}",
                f"copy the file into {self.raw_dir} instead of linking to it (inputs are read only from there)",
            )
            return None
        try:
            size = target.stat().st_size
            if size > MAX_INPUT_FILE_BYTES:
                self.problem(relative, None, f"is {size:,} bytes, more than the {MAX_INPUT_FILE_BYTES:,} an input "
                             "file may hold", "shorten it (a prompt holds at most 1,000,000 characters anyway)")
                return None
            data = path.read_bytes()
        except OSError as error:
            self.problem(
                relative,
                None,
                f"cannot be read: {error.strerror}",
                "make the file readable by the user running daydream",
            )
            return None
        fix = "save the file with UTF-8 encoding (in a spreadsheet: Save As, CSV UTF-8)"
        nul_problem = _nul_problem(data)
        if nul_problem:
            self.problem(relative, nul_problem[1], nul_problem[0], fix)
            return None
        try:
            return data.decode("utf-8-sig")
        except UnicodeDecodeError as error:
            line = data[: error.start].count(b"\n") + 1
            self.problem(
                relative,
                line,
                f"is not valid UTF-8 (byte 0x{data[error.start]:02x}; it looks like Latin-1 or Windows-1252)",
                fix,
            )
            return None

    def read_csv(self, name: str, *, required: bool = True) -> list[_Row] | None:
        schema = SCHEMAS[name]
        columns = ", ".join(schema.required + schema.optional)
        text = self.read_text(name, missing_fix=f"create it with the header: {columns}" if required else None)
        if text is None:
            return None
        reader = csv.reader(io.StringIO(text))
        header = [column.strip() for column in next(reader, [])]
        if not header:
            self.problem(name, 1, "the file is empty", f"add the header line: {columns}")
            return None
        missing = [column for column in schema.required if column not in header]
        unknown = [column for column in header if column not in schema.required + schema.optional]
        duplicated = sorted({column for column in header if header.count(column) > 1})
        if missing:
            self.problem(name, 1, f"missing column(s): {', '.join(missing)}", f"the header must hold: {columns}")
        if unknown:
            self.problem(
                name,
                1,
                f"unknown column(s): {', '.join(unknown)}",
                f"remove or rename them; allowed columns: {columns}",
            )
        if duplicated:
            self.problem(name, 1, f"repeated column(s): {', '.join(duplicated)}", "keep each column once")
        if missing or duplicated:
            return None
        rows: list[_Row] = []
        while True:
            line = reader.line_num + 1  # where the record starts: a quoted value may span lines
            try:
                cells = next(reader)
            except StopIteration:
                return rows
            except csv.Error as error:
                self.problem(name, line, f"is not valid CSV: {error}",
                             "check the quotes on this row (a value with a quote inside doubles it: \"\")")
                return None
            if not any(cell.strip() for cell in cells):
                continue
            if len(cells) != len(header):
                self.problem(
                    name,
                    line,
                    f"the row has {len(cells)} fields but the header has {len(header)}",
                    "give every row one value per column (quote values that hold commas)",
                )
                continue
            rows.append(_Row(name, line, {c: v.strip() for c, v in zip(header, cells, strict=True)}))

    def unique_ids(self, rows: list[_Row], column: str) -> list[_Row]:
        """The rows whose id is safe and not seen before; the others are reported."""
        seen: dict[str, _Row] = {}
        kept = []
        for row in rows:
            value = row[column]
            first = seen.get(value.casefold())
            if not value:
                self.problem(row.file, row.line, f"{column} is empty", f"give every row a {column}")
            elif not is_safe_id(value):
                self.problem(row.file, row.line, f"{column} '{value}' has unsafe characters", SAFE_ID_RULE)
            elif len(value) > MAX_ID_LENGTH:
                self.problem(row.file, row.line, f"{column} '{value[:20]}…' is {len(value)} characters long",
                             f"use at most {MAX_ID_LENGTH} characters (ids become parts of file names)")
            elif first is not None:
                same = "" if first[column] == value else (
                    f", '{first[column]}' differs only in case and names the same file on a case-insensitive "
                    "file system"
                )
                self.problem(
                    row.file,
                    row.line,
                    f"duplicate {column} '{value}' (first on line {first.line}{same})",
                    f"give each row its own {column}",
                )
            else:
                seen[value.casefold()] = row
                self.id_rows[(row.file, value)] = row.line
                kept.append(row)
        return kept

    def routing(self, row: _Row) -> ProviderRouting | None:
        """The model's OpenRouter routing columns; lists are separated by ';' (the CSV's commas are taken)."""
        order = [slug.strip() for slug in row["provider_order"].split(";") if slug.strip()]
        quantizations = [level.strip().lower() for level in row["quantizations"].split(";") if level.strip()]
        for slug in order:
            if not PROVIDER_SLUG.match(slug):
                self.problem(row.file, row.line, f"provider_order entry '{slug}' is not a provider slug",
                             "list OpenRouter provider slugs separated by ';', e.g. anthropic;openai")
        for level in quantizations:
            if level not in QUANTIZATIONS:
                self.problem(row.file, row.line, f"quantizations entry '{level}' is not a quantization level",
                             f"use levels separated by ';' from: {', '.join(QUANTIZATIONS)}")
        flags = {column: self.flag(row, column) if row[column] else None
                 for column in ("allow_fallbacks", "require_parameters")}
        routing = ProviderRouting(order=order, quantizations=quantizations, **flags)
        return routing if routing.request_field() else None

    def prices(self, row: _Row) -> tuple[float | None, float | None]:
        """Both prices or neither: a model priced on one side only would be estimated as half free."""
        prompt, completion = (self.number(row, column, minimum=0) for column in PRICE_COLUMNS)
        if bool(row["prompt_price"]) != bool(row["completion_price"]):
            empty = "completion_price" if row["prompt_price"] else "prompt_price"
            self.problem(row.file, row.line, f"{empty} is empty while the other price is set",
                         "give both prices in USD per million tokens (0 for free), or leave both empty")
        return prompt, completion

    def flag(self, row: _Row, column: str) -> bool | None:
        word = row[column].lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
        self.problem(
            row.file, row.line, f"{column} '{row[column]}' is not a boolean", "write true/false (or yes/no, 1/0)"
        )
        return None

    def whole_number(self, row: _Row, column: str, *, optional: bool = False) -> int | None:
        text = row[column]
        if optional and not text:
            return None
        if re.fullmatch(r"\+?\d+", text) and int(text) > 0:
            return int(text)
        self.problem(
            row.file, row.line, f"{column} '{text}' is not a positive whole number", f"write {column} as 1, 2, 3, …"
        )
        return None

    def number(self, row: _Row, column: str, *, minimum: float, maximum: float | None = None) -> float | None:
        """An optional number within [minimum, maximum]; empty means none."""
        text = row[column]
        if not text:
            return None
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if math.isfinite(value) and value >= minimum and (maximum is None or value <= maximum):
            return value
        kind = f"a number of {minimum:g} or more" if maximum is None else f"a number from {minimum:g} to {maximum:g}"
        self.problem(
            row.file, row.line, f"{column} '{text}' is not {kind}", f"write {column} as {kind}, or leave it empty"
        )
        return None

    def template_text(self, row: _Row, folder: str) -> str | None:
        relative = f"{folder}/{row['template_id']}.txt"
        text = self.read_text(
            relative, missing_fix=f"create it, or set active to false on line {row.line} of {row.file}"
        )
        if text is not None and not text.strip():
            self.problem(relative, None, "the template is empty", "write the prompt template")
            return None
        return text

    # ---- one input kind each ------------------------------------------------------------

    def concepts(
        self, rows: list[_Row] | None, level: str
    ) -> tuple[list[ConceptSpec], list[DescriptionFallback], list[dict[str, str]]]:
        """Also returns every active row, even one with a problem, so k_max is checked against them."""
        concepts, fallbacks, active_rows = [], [], []
        for row in self.unique_ids(rows or [], "concept_id"):
            active = self.flag(row, "active")
            if not row["name"]:
                self.problem(row.file, row.line, "name is empty", "give every concept a readable name")
            if active:
                active_rows.append(row.values)
            if not active or not row["name"]:
                continue
            resolved = self.description(row, level)
            if resolved is None:
                continue
            content, used = resolved
            concepts.append(
                ConceptSpec(concept_id=row["concept_id"], name=row["name"], content=content, description_level=used)
            )
            if used != level:
                fallbacks.append(DescriptionFallback(row["concept_id"], level, used))
        return concepts, fallbacks, active_rows

    def description(self, row: _Row, level: str) -> tuple[str, str] | None:
        """(content, level used) following the fallback chain, or None after a recorded problem."""
        concept_id = row["concept_id"]
        available = [
            lvl for lvl in DESCRIPTION_LEVELS if (self.raw_dir / f"descriptions-{lvl}" / f"{concept_id}.txt").is_file()
        ]
        if not available:
            self.problem(
                row.file,
                row.line,
                f"active concept '{concept_id}' has no description file",
                f"write descriptions-{level}/{concept_id}.txt, or set active to false",
            )
            return None
        chain = [level] + [lvl for lvl in FALLBACK_LEVELS if lvl != level]
        for candidate in chain:
            if candidate not in available:
                continue
            relative = f"descriptions-{candidate}/{concept_id}.txt"
            text = self.read_text(relative, missing_fix=None)
            if text is None:
                return None
            if not text.strip():
                self.problem(
                    relative,
                    None,
                    "the description is empty",
                    "write the description, or delete the file so the fallback applies",
                )
                return None
            return text.strip(), candidate
        return row["name"], NAME_LEVEL

    def generation_templates(self, rows: list[_Row] | None) -> tuple[list[TemplateSpec], list[dict[str, str]]]:
        templates, active_rows, any_active = [], [], False
        for row in self.unique_ids(rows or [], "template_id"):
            if not self.flag(row, "active"):
                continue
            any_active = True
            text = self.template_text(row, "generation_templates")
            if text is not None:
                templates.append(
                    TemplateSpec(template_id=row["template_id"], template_name=row["template_name"], text=text)
                )
                active_rows.append(row.values)
        if rows is not None and not any_active and not self.problems_in(GENERATION_TEMPLATES_CSV):
            self.problem(
                GENERATION_TEMPLATES_CSV,
                None,
                "no active generation template",
                "set active to true on at least one row",
            )
        return templates, active_rows

    def evaluation_templates(
        self, rows: list[_Row] | None
    ) -> tuple[list[EvaluationTemplateSpec], list[dict[str, str]]]:
        templates, active_rows, any_active = [], [], False
        for row in self.unique_ids(rows or [], "template_id"):
            active = self.flag(row, "active")
            any_active = any_active or bool(active)
            max_score = self.whole_number(row, "max_score")
            allow_decimals = self.flag(row, "allow_decimals") if row["allow_decimals"] else False
            parser = row["parser"] or DEFAULT_PARSER
            if parser not in KNOWN_PARSERS:
                self.problem(
                    row.file,
                    row.line,
                    f"unknown parser '{parser}'",
                    f"use one of: {', '.join(KNOWN_PARSERS)} (empty means {DEFAULT_PARSER})",
                )
                continue
            if not active or max_score is None or allow_decimals is None:
                continue
            text = self.template_text(row, "evaluation_templates")
            if text is not None:
                templates.append(
                    EvaluationTemplateSpec(
                        template_id=row["template_id"],
                        template_name=row["template_name"],
                        text=text,
                        parser=parser,
                        max_score=max_score,
                        allow_decimals=allow_decimals,
                    )
                )
                active_rows.append(row.values)
        if rows is not None and not any_active and not self.problems_in(EVALUATION_TEMPLATES_CSV):
            self.problem(
                EVALUATION_TEMPLATES_CSV,
                None,
                "no active evaluation template",
                "set active to true on at least one row",
            )
        return templates, active_rows

    def tiers(self) -> tuple[dict[str, TierSpec], dict[str, dict[str, str]]]:
        rows = self.read_csv(TIERS_CSV, required=False)
        if rows is None and not (self.raw_dir / TIERS_CSV).exists():
            defaults = {tier.tier: tier for tier in DEFAULT_TIERS}
            return defaults, {name: _tier_row(tier) for name, tier in defaults.items()}
        tiers, tier_rows = {}, {}
        for row in self.unique_ids(rows or [], "tier"):
            max_concurrent = self.whole_number(row, "max_concurrent")
            rpm = self.number(row, "requests_per_minute", minimum=1)
            if max_concurrent is not None and (rpm is not None or not row["requests_per_minute"]):
                tiers[row["tier"]] = TierSpec(tier=row["tier"], max_concurrent=max_concurrent, requests_per_minute=rpm)
                tier_rows[row["tier"]] = row.values
        return tiers, tier_rows

    def models(
        self, tiers: dict[str, TierSpec]
    ) -> tuple[list[ModelSpec], list[ModelSpec], list[dict[str, str]], set[str]]:
        rows = self.read_csv(MODELS_CSV)
        generation, evaluation, active_rows, used_tiers = [], [], [], set()
        for row in self.unique_ids(rows or [], "id"):
            before = len(self.problems)
            active = self.flag(row, "active")
            for_generation = self.flag(row, "for_generation")
            for_evaluation = self.flag(row, "for_evaluation")
            temperature = self.number(row, "temperature", minimum=TEMPERATURE_RANGE[0], maximum=TEMPERATURE_RANGE[1])
            max_tokens = self.whole_number(row, "max_tokens", optional=True)
            routing = self.routing(row)
            prompt_price, completion_price = self.prices(row)
            for column in ("model", "provider", "tier"):
                if not row[column]:
                    self.problem(row.file, row.line, f"{column} is empty", f"give every model a {column}")
            if row["tier"] and not is_safe_id(row["tier"]):
                self.problem(row.file, row.line, f"tier '{row['tier']}' of model '{row['id']}' has unsafe characters",
                             SAFE_ID_RULE)
            if (active and is_safe_id(row["tier"]) and row["tier"] not in tiers
                    and not self.problems_in(TIERS_CSV)):
                known = ", ".join(tiers) or "none"
                self.problem(
                    row.file,
                    row.line,
                    f"tier '{row['tier']}' of model '{row['id']}' is not in {TIERS_CSV}",
                    f"add a '{row['tier']}' row to {TIERS_CSV} or use a known tier ({known})",
                )
            if not active or len(self.problems) > before:
                continue
            model = ModelSpec(
                id=row["id"],
                model=row["model"],
                provider=row["provider"],
                tier=row["tier"],
                temperature=temperature,
                max_tokens=max_tokens,
                routing=routing,
                prompt_price=prompt_price,
                completion_price=completion_price,
            )
            if for_generation:
                generation.append(model)
            if for_evaluation:
                evaluation.append(model)
            if for_generation or for_evaluation:
                active_rows.append(row.values)
                used_tiers.add(row["tier"])
            else:
                self.warnings.append(InputProblem(
                    row.file, row.line, f"model '{row['id']}' is active but neither for_generation nor for_evaluation, "
                    "so it is not used", "set for_generation or for_evaluation to true, or active to false"))
        if rows is not None and not self.problems_in(MODELS_CSV):
            if not generation:
                self.problem(
                    MODELS_CSV,
                    None,
                    "no active generation model",
                    "set active and for_generation to true on at least one row",
                )
            if not evaluation:
                self.problem(
                    MODELS_CSV,
                    None,
                    "no active evaluation model",
                    "set active and for_evaluation to true on at least one row",
                )
        return generation, evaluation, active_rows, used_tiers

    def problems_in(self, file: str) -> bool:
        """Whether `file` already has a problem, so a follow-on "nothing active" is not piled on."""
        return any(problem.file == file for problem in self.problems)

    def probe_templates(
        self,
        generation: list[TemplateSpec],
        evaluation: list[EvaluationTemplateSpec],
        concepts: list[ConceptSpec],
        k_max: int | None,
    ) -> None:
        """Render every active generation template with every combination the experiment will
        make, and every evaluation template with a stand-in response: a template that fails on
        some combination fails here, not mid-run, naming that combination (a syntax error is the
        template's own)."""
        for template in generation:
            relative = f"generation_templates/{template.template_id}.txt"
            if not self.probe(relative, lambda t=template: compile_template(t.text)):
                continue
            combos = itertools.combinations(concepts, k_max) if k_max else [tuple(concepts)]
            for members in combos:
                context = f"with the combination {', '.join(c.concept_id for c in members)}: " if k_max else ""
                if not self.probe(relative, lambda t=template, m=members: render_generation_prompt(t, list(m)), context):
                    break
        for template in evaluation:
            self.probe(
                f"evaluation_templates/{template.template_id}.txt",
                lambda t=template: render_evaluation_prompt(t, SAMPLE_RESPONSE),
            )

    def probe(self, relative: str, render, context: str = "") -> bool:
        """Whether the template rendered; if not, its problem is recorded."""
        try:
            render()
        except TemplateProblem as problem:
            self.problem(relative, problem.line, context + problem.message, problem.fix)
            return False
        return True


def _tier_row(tier: TierSpec) -> dict[str, str]:
    rpm = tier.requests_per_minute
    return {
        "tier": tier.tier,
        "max_concurrent": str(tier.max_concurrent),
        "requests_per_minute": "" if rpm is None else f"{rpm:g}",
    }


def _nul_problem(data: bytes) -> tuple[str, int | None] | None:
    """UTF-16 decodes as UTF-8 whenever the text is ASCII, with a NUL between every two letters:
    recognised by its byte-order mark or by its NULs, before decoding. A few NULs in UTF-8 text
    are named as such."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "is not UTF-8: it is UTF-16 (it starts with a UTF-16 byte-order mark)", None
    nuls = data.count(0)
    if not nuls:
        return None
    if nuls * 4 < len(data):
        return f"holds {nuls} NUL byte(s), the first on this line", data[: data.index(0)].count(b"\n") + 1
    order = "little-endian " if data[1::2].count(0) > data[0::2].count(0) else ""
    return f"is not UTF-8: it is {order}UTF-16 or another encoding with NUL bytes (found {nuls} NUL bytes)", None
