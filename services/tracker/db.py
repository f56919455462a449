"""Engine and schema: SQLite in the data directory by default, PostgreSQL when configured."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Column, ColumnDefault, Connection, Engine, create_engine, event, insert, inspect, literal, select, text
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.schema import CreateIndex
from sqlmodel import Field, SQLModel, col

from services.tracker import tables
from shared.settings import Settings

SQLITE_BUSY_TIMEOUT_MS = 30_000


def make_engine(url: str) -> Engine:
    """SQLite gets WAL (with synchronous=NORMAL, its recommended pairing: no corruption on a crash,
    at worst the last commits roll back after a power loss, and `check` then finds their artifacts for
    `rebuild`) and a busy timeout so the
    CLI can read while the tracker writes."""
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True)
    database = url.split("///", 1)[-1]
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _configure_sqlite(dbapi_connection, _record) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.close()

    return engine


def engine_for(data_dir: Path) -> Engine:
    """The database of a data directory: DAYDREAM_DATABASE_URL if set, else DIR/daydream.db."""
    return make_engine(Settings(data=data_dir).sqlalchemy_url())


class OutdatedSchema(RuntimeError):
    """Tables made by an earlier DayDream lack columns this one writes, and adding them failed."""


class SchemaMigration(SQLModel, table=True):
    """The numbered data steps already applied to this database (see `MIGRATIONS`)."""

    __tablename__ = "schema_migrations"

    version: int = Field(primary_key=True)
    name: str
    applied_at: datetime


def _backfill_generation_models(connection: Connection) -> None:
    """Evaluations recorded before `generation_model` existed learn it from their generation."""
    connection.execute(
        text(
            "UPDATE evaluation_results SET generation_model = (SELECT g.generation_model FROM generation_results g"
            " WHERE g.experiment_id = evaluation_results.experiment_id"
            " AND g.task_id = evaluation_results.generation_task_id) WHERE generation_model IS NULL"
        )
    )


def _first_revisions(connection: Connection) -> None:
    """Complete rows recorded before revisions existed have had one complete state: revision 1, its
    line not yet known to be in the CSV (`CsvLog.reconcile` finds it there, or appends it)."""
    connection.execute(
        text("UPDATE generation_results SET revision = 1, csv_appended = :no WHERE revision = 0"), {"no": False}
    )
    connection.execute(
        text(
            "UPDATE evaluation_results SET revision = 1, csv_appended = :no WHERE revision = 0"
            " AND has_response = :yes AND has_score = :yes AND generation_model IS NOT NULL"
        ),
        {"no": False, "yes": True},
    )


MIGRATIONS: tuple[tuple[int, str, Callable[[Connection], None]], ...] = (
    (1, "backfill evaluation_results.generation_model", _backfill_generation_models),
    (2, "first revisions of rows recorded before revisions", _first_revisions),
)
"""Data steps, in order, each run once per database and recorded in `schema_migrations`. Steps must
leave a database made by today's code unchanged: a database made before this table existed cannot
be told from one made before the step's columns did. New columns themselves need no step: they are
added from the table classes (`_add_missing_columns`)."""


def init_db(engine: Engine) -> None:
    """Creates what is missing, indexes included: a database made before an index was added
    gets it too (create_all alone only indexes the tables it creates). `IF NOT EXISTS`, because
    the CLI and the tracker may both start on the same database at once. Then migrates: columns
    added since the database was made are added (with their default), and the data steps it has
    not had run, each in its own transaction with its record."""
    SQLModel.metadata.create_all(engine, tables=[tables.sa_table(table) for table in (*tables.ALL_TABLES, SchemaMigration)])
    _add_missing_columns(engine)
    with engine.begin() as connection:
        for table in tables.ALL_TABLES:
            for index in tables.sa_table(table).indexes:
                connection.execute(CreateIndex(index, if_not_exists=True))
    _apply_migrations(engine)


def _add_missing_columns(engine: Engine) -> None:
    missing = _missing_columns(engine)
    for table_name, column in missing:
        default = ""
        if isinstance(column.default, ColumnDefault) and column.default.is_scalar:
            literal_value = literal(column.default.arg).compile(engine, compile_kwargs={"literal_binds": True})
            default = f" DEFAULT {literal_value}"
        column_type = column.type.compile(engine.dialect)
        try:
            with engine.begin() as connection:
                connection.execute(text(f"ALTER TABLE {table_name} ADD COLUMN {column.name} {column_type}{default}"))
        except DBAPIError:
            pass  # another process added it first; `_missing_columns` below tells
    still_missing = _missing_columns(engine)
    if still_missing:
        raise OutdatedSchema(
            f"the database {engine.url.render_as_string(hide_password=True)} was made by an earlier DayDream "
            f"and adding {', '.join(f'{t}.{c.name}' for t, c in still_missing)} failed; "
            "run `daydream rebuild` to recreate its tables from the artifact files"
        )


def _apply_migrations(engine: Engine) -> None:
    for version, name, step in MIGRATIONS:
        try:
            with engine.begin() as connection:
                applied = select(col(SchemaMigration.version)).where(col(SchemaMigration.version) == version)
                if connection.execute(applied).first():
                    continue
                step(connection)
                connection.execute(
                    insert(SchemaMigration).values(version=version, name=name, applied_at=datetime.now(UTC))
                )
        except IntegrityError:
            pass  # applied by another process at the same moment: its transaction won


def _missing_columns(engine: Engine) -> list[tuple[str, Column]]:
    inspector = inspect(engine)
    missing = []
    for table in tables.ALL_TABLES:
        present = {column["name"] for column in inspector.get_columns(table.__tablename__)}
        missing += [(table.__tablename__, column) for column in tables.sa_table(table).columns if column.name not in present]
    return missing


def drop_db(engine: Engine) -> None:
    """Drops the tables and their migration record: `init_db` then makes today's schema afresh."""
    SQLModel.metadata.drop_all(engine, tables=[tables.sa_table(table) for table in (*tables.ALL_TABLES, SchemaMigration)])
