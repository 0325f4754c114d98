"""The app's commands on the server, `flask --app app ...`, run in the app's directory with the service's
WEBBOT_DATA_DIR (and WEBBOT_DATABASE_URL):

- `users ...`: make users and admins, list them, disable, enable, set a password.
  Passwords are asked for twice at the prompt, or read from one line of standard input
  with --password-stdin (for scripts).
- `db ...`: the database's migration state, upgrading it, and copying a deployment into
  it. Moving from SQLite to PostgreSQL is one command, run with the new
  WEBBOT_DATABASE_URL set (the app stopped, so nothing is written meanwhile):

      WEBBOT_DATABASE_URL=postgresql://webbot:PASS@db/webbot flask --app app db copy-from sqlite:///instance/webbot.db
"""

import sys

import click
from flask import current_app

from webbot.storage import database
from webbot.storage.users import UserError
from webbot.web.services import services


def _users():
    return services().users


def _password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    return click.prompt("Password", hide_input=True, confirmation_prompt=True)


def _find(name: str) -> dict:
    user = _users().by_name(name)
    if user is None:
        raise click.ClickException(f"There is no user named {name!r}; `flask --app app users list` shows them.")
    return user


@click.group("users")
def users_command():
    """Manage the people who can sign in (WEBBOT_AUTH=accounts)."""


@users_command.command("create")
@click.argument("name")
@click.option("--admin", is_flag=True, help="Make an admin (can see the admin page and disable users).")
@click.option("--password-stdin", is_flag=True, help="Read the password from one line of standard input.")
def create(name: str, admin: bool, password_stdin: bool):
    """Make a user NAME."""
    try:
        user = _users().create(name, _password(password_stdin), admin=admin)
    except UserError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"Made {'admin' if admin else 'user'} {user['name']}.")
    if current_app.config["WEBBOT_AUTH"] != "accounts":
        click.echo("Note: sign-in by account needs WEBBOT_AUTH=accounts in the service's environment.")


@users_command.command("list")
def list_users():
    """List users with their role and state."""
    people = _users().all()
    if not people:
        click.echo("No users yet; make one with `flask --app app users create NAME --admin`.")
    for user in people:
        role = "admin" if user["is_admin"] else "user"
        click.echo(f"{user['name']}\t{role}\t{'disabled' if user['disabled'] else 'active'}")


@users_command.command("disable")
@click.argument("name")
def disable(name: str):
    """Sign NAME out everywhere and refuse their sign-ins and API keys."""
    _users().set_disabled(_find(name)["id"], True)
    click.echo(f"Disabled {name}.")


@users_command.command("enable")
@click.argument("name")
def enable(name: str):
    """Let a disabled user sign in again."""
    _users().set_disabled(_find(name)["id"], False)
    click.echo(f"Enabled {name}.")


@users_command.command("set-password")
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="Read the password from one line of standard input.")
def set_password(name: str, password_stdin: bool):
    """Give NAME a new password (signs out their sessions)."""
    try:
        _users().set_password(_find(name)["id"], _password(password_stdin))
    except UserError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"Changed the password of {name}; their sessions are signed out.")


def _engine():
    return services().store.engine


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
    """Copy every table (users, keys, conversations, messages, settings) from SOURCE_URL into this (empty)
    database."""
    target = _engine()
    click.echo(f"copying {source_url} -> {target.url.render_as_string(hide_password=True)}")
    try:
        copied = database.copy_database(source_url, target, report=lambda line: click.echo(f"  {line}"))
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo("done: " + ", ".join(f"{count} {name}" for name, count in copied.items()) + "; counts verified")
