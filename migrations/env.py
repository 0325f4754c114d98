"""Alembic's entry point: runs the migrations on the connection `database.upgrade` hands over, or, from the
`alembic` command line (alembic.ini), on WEBBOT_DATABASE_URL."""

from alembic import context

from webbot.storage import conversations, users


def run(connection) -> None:
    context.configure(connection=connection, target_metadata=[conversations.metadata, users.metadata],
                      render_as_batch=True)  # batch mode: SQLite can only alter tables by copying them
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is not None:
    run(connection)
else:
    from webbot import config
    from webbot.storage import database

    with database.connect(config.from_env()["WEBBOT_DATABASE_URL"]).begin() as connection:
        run(connection)
