"""Alembic environment for podbay's quota book. Run from Database (upgrade to head at start),
always with the Ledger's own connection, so SQLite's write lock covers the migration."""

from alembic import context

from podbay.hub.quota.database import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata,
                  version_table="podbay_alembic_version", render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
