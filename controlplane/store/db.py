"""Open the database and bring its schema up to date.

SQLite (the default, `STATE/controlplane.db`) runs in WAL mode, so readers never wait for
the writer; the file is created 0600 (SQLite gives its -wal and -shm files the database
file's mode). `CONTROLPLANE_DATABASE_URL` (e.g. `postgresql+psycopg://user@host/db`)
selects another database. Migrations run at every start; they are no-ops when current.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, Row, Table, create_engine, event, insert, or_, select
from sqlalchemy.exc import IntegrityError

from controlplane.errors import ApiError

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def _private_file(path: Path) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.close(fd)
    os.chmod(path, 0o600)


def open_engine(url: str) -> Engine:
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///"):])
        path.parent.mkdir(parents=True, exist_ok=True)
        _private_file(path)
        # One connection per worker thread; the pool keeps them open.
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30},
                               pool_size=8, max_overflow=8)

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


def migrate(engine: Engine) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        # "heads": resource tables come on a branch of their own (0100), beside the core's revisions.
        command.upgrade(config, "heads")


def find_by_id_or_name(engine: Engine, table: Table, organization_id: str, id_or_name: str) -> Row[Any] | None:
    """An organization's row by id first, then by name, as Daytona's API looks resources up
    (a name may look like another resource's id)."""
    with engine.connect() as conn:
        rows = conn.execute(select(table).where(
            table.c.organization_id == organization_id,
            or_(table.c.id == id_or_name, table.c.name == id_or_name))).all()
    by_id = [r for r in rows if r.id == id_or_name]
    return by_id[0] if by_id else (rows[0] if rows else None)


def insert_named(engine: Engine, table: Table, values: dict[str, Any], taken: ApiError) -> None:
    """Insert a row whose name is unique per organization; `taken` when the name is not free
    (the unique constraint decides, so two creates racing for one name cannot both win)."""
    try:
        with engine.begin() as conn:
            conn.execute(insert(table).values(**values))
    except IntegrityError:
        raise taken from None
