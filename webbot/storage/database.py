"""The SQL database behind the store and the accounts: connecting, migrating with Alembic, copying between URLs.

WEBBOT_DATABASE_URL is any SQLAlchemy URL: a SQLite file under the data dir by default,
PostgreSQL (`postgresql://user:pass@host/db`, through psycopg) for several replicas.
The schema lives in `migrations/` and the app upgrades it at start, under a PostgreSQL
advisory lock so replicas starting together migrate once. A database made before
migrations existed (by `create_all`) is recognised and stamped, not re-created.

`copy_database` moves a deployment from one URL to another (SQLite to PostgreSQL):
`flask --app app db copy-from sqlite:///instance/webbot.db` with WEBBOT_DATABASE_URL
naming the new database.
"""

import logging
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import create_engine, event, func, inspect, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, OperationalError

from webbot.storage.errors import StorageUnavailable

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"  # at the project root, beside alembic.ini
MIGRATION_LOCK = 7_361_004  # any fixed number: the advisory lock replicas take while migrating
PG_CONNECT_TIMEOUT_S = 5  # a database that is down fails a request in seconds, not minutes
COPY_BATCH = 1000
NUL_STAND_IN = "\ufffd"  # PostgreSQL cannot keep NUL in text; rows stored before NUL was refused get this instead


def schema_tables() -> list:
    """Every table of the schema (from the models' metadata, not a hand list), parents before children."""
    from sqlalchemy import MetaData

    from webbot.storage import conversations, users

    merged = MetaData()
    for metadata in (users.metadata, conversations.metadata):
        for table in metadata.tables.values():
            table.to_metadata(merged)
    return merged.sorted_tables


def normalise_url(url: str) -> str:
    """PostgreSQL URLs use the psycopg (3) driver, whichever spelling the user gave."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def connect(url: str) -> Engine:
    """An engine for `url`: SQLite with WAL and foreign keys; PostgreSQL with a short connect timeout. Both check
    a pooled connection before use, so the app recovers by itself when the database comes back. A database out
    of reach raises StorageUnavailable (see `_outage`)."""
    url = normalise_url(url)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, pool_pre_ping=True)
        event.listen(engine, "connect", _sqlite_pragmas)
    else:
        args = {"connect_timeout": PG_CONNECT_TIMEOUT_S} if url.startswith("postgresql") else {}
        engine = create_engine(url, connect_args=args, pool_pre_ping=True, pool_size=10, max_overflow=20)
    event.listen(engine, "handle_error", _outage)
    return engine


def _outage(context) -> None:
    """SQLAlchemy's error hook: a lost connection or a database that cannot be reached becomes StorageUnavailable;
    any other error (a constraint, a bad query) is a bug and stays as it is."""
    error = context.sqlalchemy_exception
    if context.is_disconnect or isinstance(error, OperationalError) or (
            isinstance(error, DBAPIError) and error.connection_invalidated):
        raise StorageUnavailable(f"the database cannot be reached ({type(context.original_exception).__name__})"
                                 ) from context.original_exception


def check(engine: Engine) -> dict:
    """The database's state for /healthz: whether it answers a trivial query."""
    try:
        with engine.connect() as db:
            db.execute(text("SELECT 1"))
        return {"status": "ok", "kind": engine.dialect.name}
    except (StorageUnavailable, DBAPIError) as exc:
        return {"status": "error", "kind": engine.dialect.name,
                "error": f"The database cannot be reached ({type(exc.__cause__ or exc).__name__}); check that it is "
                         "running."}


def _sqlite_pragmas(connection, _record) -> None:
    """WAL lets readers and the writer work at once; foreign keys make deletes cascade."""
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _alembic_config(connection):
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest migration's id."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_alembic_config(None)).get_current_head()


def current_revision(engine: Engine) -> str | None:
    """The migration a database is at (None when it has none)."""
    from alembic.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def upgrade(engine: Engine) -> None:
    """Bring the schema to the newest migration; safe to call from every replica at once."""
    from alembic import command

    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        config = _alembic_config(connection)
        tables = set(inspect(connection).get_table_names())
        if "alembic_version" not in tables and "conversations" in tables:
            # Made by create_all before migrations existed: say which migrations it already has.
            baseline = "0002" if "users" in tables else "0001"
            log.info("database predates migrations; marking it as at revision %s", baseline)
            command.stamp(config, baseline)
        command.upgrade(config, "head")


def copy_database(source_url: str, target: Engine, report: Callable[[str], None] = print) -> dict[str, int]:
    """Copy every row of every table from the database at `source_url` into `target` (which must hold no data yet).

    Both are upgraded to the newest schema first; ids are kept, and PostgreSQL's id
    sequences are moved past the copied ids. Text with NUL characters (which SQLite kept
    before they were refused) is copied with NUL_STAND_IN in their place, since PostgreSQL
    cannot store them; each such row is reported. Returns rows copied per table, after
    checking that the target holds exactly as many.
    """
    source = connect(source_url)
    upgrade(source)
    upgrade(target)
    tables = schema_tables()
    with target.connect() as db:
        filled = [t.name for t in tables if db.execute(select(func.count()).select_from(t)).scalar_one()]
    if filled:
        raise ValueError(f"the target database already holds {', '.join(filled)}; copy into an empty database")
    copied, replaced = {}, 0
    with source.connect() as src, target.begin() as dst:
        for table in tables:
            total = src.execute(select(func.count()).select_from(table)).scalar_one()
            done = 0
            rows = src.execute(select(table).order_by(*table.primary_key.columns)).mappings()
            while batch := rows.fetchmany(COPY_BATCH):
                values = [dict(r) for r in batch]
                if dst.dialect.name == "postgresql":
                    replaced += _replace_nul(table.name, values, report)
                dst.execute(table.insert(), values)
                done += len(batch)
                report(f"{table.name}: {done}/{total}")
            if total == 0:
                report(f"{table.name}: 0/0")
            copied[table.name] = done
            serial = [c for c in table.primary_key.columns if c.autoincrement is True]
            if dst.dialect.name == "postgresql" and serial:
                name, column = table.name, serial[0].name
                dst.execute(text(f"SELECT setval(pg_get_serial_sequence('{name}', '{column}'), "
                                 f"COALESCE((SELECT MAX({column}) FROM {name}), 0) + 1, false)"))
    with target.connect() as db:
        for table in tables:
            landed = db.execute(select(func.count()).select_from(table)).scalar_one()
            if landed != copied[table.name]:
                raise RuntimeError(f"{table.name}: copied {copied[table.name]} rows but the target holds {landed}")
    if replaced:
        report(f"{replaced} rows held NUL characters, which PostgreSQL cannot store; each is now {NUL_STAND_IN!r}")
    source.dispose()
    return copied


def _replace_nul(table: str, rows: list[dict], report: Callable[[str], None]) -> int:
    """Put NUL_STAND_IN for every NUL in the rows' text, in place; returns how many rows changed."""
    changed = 0
    for row in rows:
        found = [key for key, value in row.items() if isinstance(value, str) and "\x00" in value]
        for key in found:
            row[key] = row[key].replace("\x00", NUL_STAND_IN)
        if found:
            changed += 1
            report(f"  {table} {row.get('id', '')}: NUL in {', '.join(found)} replaced")
    return changed
