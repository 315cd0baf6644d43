"""Alembic's environment: Switchboard runs the migrations itself at startup, on a connection it
hands over in ``config.attributes["connection"]``."""

from __future__ import annotations

from alembic import context

from router.store.tables import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
