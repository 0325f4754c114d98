"""`flask --app app users ...`: make users and admins, list them, disable, enable, set a password.

Run it on the server, in the app's directory, with the same WEBBOT_DATA_DIR as the
service. Passwords are asked for twice at the prompt, or read from one line of standard
input with --password-stdin (for scripts).
"""

import sys

import click
from flask import current_app

from webbot.storage.users import UserError


def _users():
    return current_app.extensions["webbot"].users


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
