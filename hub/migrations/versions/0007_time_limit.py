"""A job's time limit, where the engine enforces one (Slurm).

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("podbay_jobs") as batch:
        batch.add_column(sa.Column("time_limit", sa.String(32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("podbay_jobs") as batch:
        batch.drop_column("time_limit")
