"""Engine and schema: SQLite in the data directory by default, PostgreSQL when configured."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine, create_engine, event
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


def init_db(engine: Engine) -> None:
    """Creates what is missing, indexes included: a database made before an index was added
    gets it too (create_all alone only indexes the tables it creates). `IF NOT EXISTS`, because
    the CLI and the tracker may both start on the same database at once."""
    SQLModel.metadata.create_all(engine, tables=[table.__table__ for table in tables.ALL_TABLES])
    with engine.begin() as connection:
        for table in tables.ALL_TABLES:
            for index in table.__table__.indexes:
                connection.execute(CreateIndex(index, if_not_exists=True))


def drop_db(engine: Engine) -> None:
    SQLModel.metadata.drop_all(engine, tables=[table.__table__ for table in tables.ALL_TABLES])
