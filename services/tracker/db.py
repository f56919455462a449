"""Engine and schema: SQLite in the data directory by default, PostgreSQL when configured."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy.schema import CreateIndex
from sqlmodel import SQLModel

from services.tracker import tables  # noqa: F401  (registers the table classes on SQLModel.metadata)
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
    """Tables made by an earlier DayDream lack columns this one writes."""


def init_db(engine: Engine) -> None:
    """Creates what is missing, indexes included: a database made before an index was added
    gets it too (create_all alone only indexes the tables it creates). `IF NOT EXISTS`, because
    the CLI and the tracker may both start on the same database at once. Missing columns are not
    added: the tables are rebuilt from the artifacts instead, which fills them in."""
    SQLModel.metadata.create_all(engine, tables=[table.__table__ for table in tables.ALL_TABLES])
    with engine.begin() as connection:
        for table in tables.ALL_TABLES:
            for index in table.__table__.indexes:
                connection.execute(CreateIndex(index, if_not_exists=True))
    missing = _missing_columns(engine)
    if missing:
        raise OutdatedSchema(
            f"the database {engine.url.render_as_string(hide_password=True)} was made by an earlier DayDream "
            f"(missing {', '.join(missing)}); run `daydream rebuild` to recreate its tables from the artifact files"
        )


def _missing_columns(engine: Engine) -> list[str]:
    inspector = inspect(engine)
    missing = []
    for table in tables.ALL_TABLES:
        present = {column["name"] for column in inspector.get_columns(table.__tablename__)}
        missing += [
            f"{table.__tablename__}.{column.name}" for column in table.__table__.columns if column.name not in present
        ]
    return missing


def drop_db(engine: Engine) -> None:
    SQLModel.metadata.drop_all(engine, tables=[table.__table__ for table in tables.ALL_TABLES])
