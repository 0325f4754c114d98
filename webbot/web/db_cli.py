"""`flask --app app db ...`: the database's migration state, upgrading it, and copying a deployment into it.

Moving from SQLite to PostgreSQL is one command, run with the new WEBBOT_DATABASE_URL
set (the app stopped, so nothing is written meanwhile):

    WEBBOT_DATABASE_URL=postgresql://webbot:PASS@db/webbot flask --app app db copy-from sqlite:///instance/webbot.db
"""

import click
from flask import current_app

from webbot.storage import database


def _engine():
    return current_app.extensions["webbot"].store.engine


@click.group("db")
def db_command():
    """The database named by WEBBOT_DATABASE_URL."""


@db_command.command("status")
def status():
    """Print which migration the database is at, and the newest one."""
    engine = _engine()
    click.echo(f"database: {engine.url.render_as_string(hide_password=True)}")
    click.echo(f"revision: {database.current_revision(engine)} (newest: {database.head_revision()})")


@db_command.command("upgrade")
def upgrade():
    """Apply any migrations not yet applied (the app also does this when it starts)."""
    database.upgrade(_engine())
    click.echo(f"database at revision {database.current_revision(_engine())}")


@db_command.command("copy-from")
@click.argument("source_url")
def copy_from(source_url: str):
    """Copy every user, key, conversation and message from SOURCE_URL into this (empty) database."""
    target = _engine()
    click.echo(f"copying {source_url} -> {target.url.render_as_string(hide_password=True)}")
    try:
        copied = database.copy_database(source_url, target, report=lambda line: click.echo(f"  {line}"))
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo("done: " + ", ".join(f"{count} {name}" for name, count in copied.items()) + "; counts verified")
