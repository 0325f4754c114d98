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

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
MIGRATION_LOCK = 7_361_004  # any fixed number: the advisory lock replicas take while migrating
PG_CONNECT_TIMEOUT_S = 5  # a database that is down fails a request in seconds, not minutes
COPY_BATCH = 1000
# Tables in an order that respects their foreign keys; integer ids are kept as they are.
TABLES = ("users", "api_keys", "conversations", "messages")
SERIAL_TABLES = ("users", "api_keys", "messages")  # whose integer ids PostgreSQL hands out from a sequence


def normalise_url(url: str) -> str:
    """PostgreSQL URLs use the psycopg (3) driver, whichever spelling the user gave."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def connect(url: str) -> Engine:
    """An engine for `url`: SQLite with WAL and foreign keys; PostgreSQL with a short connect timeout. Both check
    a pooled connection before use, so the app recovers by itself when the database comes back."""
    url = normalise_url(url)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, pool_pre_ping=True)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    args = {"connect_timeout": PG_CONNECT_TIMEOUT_S} if url.startswith("postgresql") else {}
    return create_engine(url, connect_args=args, pool_pre_ping=True, pool_size=10, max_overflow=20)


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
    """Copy every row from the database at `source_url` into `target` (which must hold no data yet).

    Both are upgraded to the newest schema first; ids are kept, and PostgreSQL's id
    sequences are moved past the copied ids. Returns rows copied per table, after
    checking that the target holds exactly as many.
    """
    from sqlalchemy import MetaData

    source = connect(source_url)
    upgrade(source)
    upgrade(target)
    meta = MetaData()
    meta.reflect(source, only=TABLES)
    with target.connect() as db:
        filled = [name for name in TABLES if db.execute(select(func.count()).select_from(meta.tables[name]))
                  .scalar_one()]
    if filled:
        raise ValueError(f"the target database already holds {', '.join(filled)}; copy into an empty database")
    copied = {}
    with source.connect() as src, target.begin() as dst:
        for name in TABLES:
            table = meta.tables[name]
            total = src.execute(select(func.count()).select_from(table)).scalar_one()
            done = 0
            rows = src.execute(select(table).order_by(*table.primary_key.columns)).mappings()
            while batch := rows.fetchmany(COPY_BATCH):
                dst.execute(table.insert(), [dict(r) for r in batch])
                done += len(batch)
                report(f"{name}: {done}/{total}")
            if total == 0:
                report(f"{name}: 0/0")
            copied[name] = done
            if dst.dialect.name == "postgresql" and name in SERIAL_TABLES:
                dst.execute(text(f"SELECT setval(pg_get_serial_sequence('{name}', 'id'), "
                                 f"COALESCE((SELECT MAX(id) FROM {name}), 0) + 1, false)"))
    with target.connect() as db:
        for name, count in copied.items():
            landed = db.execute(select(func.count()).select_from(meta.tables[name])).scalar_one()
            if landed != count:
                raise RuntimeError(f"{name}: copied {count} rows but the target holds {landed}")
    source.dispose()
    return copied
